"""A TCP relay on 127.0.0.1 that holds every chunk for a fixed delay in each direction: a slow link where the
kernel has no netem. Order is kept; bandwidth is not limited. Threads, one pair per connection."""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Deque, List, Tuple


class DelayRelay:
    """Accepts on ``address`` and relays each connection to ``target``, ``delay`` seconds late each way."""

    def __init__(self, target: Tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: Tuple[str, int] = self._listener.getsockname()[:2]
        self._sockets: List[socket.socket] = [self._listener]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            for sock in (near, far):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [near, far]
            self._pump(near, far)
            self._pump(far, near)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Two threads: one receives and stamps each chunk, the other sends it when its time has come."""
        chunks: Deque[Tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()

        def receive() -> None:
            while True:
                try:
                    data = source.recv(1 << 16)
                except OSError:
                    data = b""
                with ready:
                    chunks.append((time.monotonic() + self.delay, data))
                    ready.notify()
                if not data:
                    return

        def send() -> None:
            while True:
                with ready:
                    while not chunks:
                        ready.wait()
                    due, data = chunks.popleft()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    try:
                        sink.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    return

        threading.Thread(target=receive, daemon=True).start()
        threading.Thread(target=send, daemon=True).start()

    def close(self) -> None:
        self._stopped.set()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
