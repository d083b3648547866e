"""``python -m agent`` is the same as ``netcheck-agent``."""

from agent.cli import main

raise SystemExit(main())
