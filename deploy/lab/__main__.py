import sys

from deploy.lab.cli import main

sys.exit(main())
