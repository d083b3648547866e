"""``python -m netcheck.agent`` is the same as ``netcheck-agent``."""

from netcheck.agent.cli import main

raise SystemExit(main())
