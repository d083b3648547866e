"""Stand-in listeners on the guest's inbound ports: accept, note the peer, close.

One thread serves every port with :mod:`selectors`. A port another process holds is
``occupied`` (that process answers for it), one the guest may not bind (below 1024 without
root) is ``denied``. Peers are kept one per (port, address), the latest time, at most
:data:`MAX_PEERS` between two reports.
"""

import errno
import os
import selectors
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from netcheck.agent.guest import payloads

MAX_PEERS = 10000
ACCEPTS_PER_WAKE = 64


class StandIns:
    def __init__(self, bind: str) -> None:
        self.bind = bind
        self._socks: Dict[int, socket.socket] = {}
        self._status: Dict[int, Dict[str, Any]] = {}
        self._peers: Dict[Tuple[int, str], float] = {}
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def hold(self, ports: List[int]) -> None:
        """Listen on exactly `ports` (opening new ones, closing the others)."""
        now = time.time()
        with self._lock:
            for port in sorted(set(self._socks) - set(ports)):
                sock = self._socks.pop(port)
                self._sel.unregister(sock)
                sock.close()
                self._status[port] = payloads.listener_status(port, "closed", now)
            for port in sorted(set(ports) - set(self._socks)):
                self._status[port] = self._open(port, now)
            for port in list(self._status):
                if port not in ports and self._status[port]["state"] != "closed":
                    self._status[port] = payloads.listener_status(port, "closed", now)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="standins", daemon=True)
            self._thread.start()

    def _open(self, port: int, now: float) -> Dict[str, Any]:
        family = socket.AF_INET6 if ":" in self.bind else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        if os.name != "nt":  # on Windows SO_REUSEADDR would let it take a port in use
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                return payloads.listener_status(port, "occupied", now, "another process holds it")
            if exc.errno in (errno.EACCES, errno.EPERM):
                return payloads.listener_status(port, "denied", now, str(exc))
            return payloads.listener_status(port, "error", now, str(exc))
        sock.setblocking(False)
        self._socks[port] = sock
        self._sel.register(sock, selectors.EVENT_READ, port)
        return payloads.listener_status(port, "listening", now)

    def _serve(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                registered = bool(self._socks)
            if not registered:
                self._stop.wait(0.2)
                continue
            for key, _ in self._sel.select(timeout=0.2):
                port = key.data
                for _ in range(ACCEPTS_PER_WAKE):
                    try:
                        conn, addr = key.fileobj.accept()  # type: ignore[union-attr]
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    conn.close()
                    with self._lock:
                        k = (port, str(addr[0]))
                        if k in self._peers or len(self._peers) < MAX_PEERS:
                            self._peers[k] = time.time()

    def statuses(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [dict(self._status[p]) for p in sorted(self._status)]

    def take_peers(self) -> List[Dict[str, Any]]:
        """The peers seen since the last call (and forget them)."""
        with self._lock:
            peers, self._peers = self._peers, {}
        return [payloads.peer_seen(p, a, at) for (p, a), at in sorted(peers.items())]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for sock in self._socks.values():
                sock.close()
            self._socks.clear()
        self._sel.close()
