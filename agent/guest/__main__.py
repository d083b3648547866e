"""``python3 -m netcheck.agent.guest``: the guest agent's command line."""

from netcheck.agent.guest.cli import main

raise SystemExit(main())
