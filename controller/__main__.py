import sys

from netcheck.controller.cli import main

sys.exit(main())
