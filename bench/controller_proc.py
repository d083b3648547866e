"""The real controller app (controller/app.py) in its own process, for the ingest benchmark.

``python -m bench.controller_proc TOPOLOGY INVENTORY DB TOKEN_FILE PORT [HOST]``: serves on
HOST:PORT (default 127.0.0.1) until SIGTERM: the app factory with nothing in front, so the
benchmark does not depend on the CLI's options.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from aiohttp import web

from netcheck.controller.app import make_app
from netcheck.controller.inventory import load_inventory
from netcheck.controller.spec import load_spec


def main(argv: list[str]) -> int:
    topology, inventory, db, token_file, port = argv[:5]
    host = argv[5] if len(argv) > 5 else "127.0.0.1"
    logging.basicConfig(level=logging.WARNING)
    spec = load_spec(topology)
    inv = load_inventory(inventory, spec)
    app = make_app(spec, inv, db, Path(token_file).read_text().strip())
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
