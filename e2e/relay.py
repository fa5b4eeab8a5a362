"""A switchable TCP relay for fault tests (a service that goes away and comes back)."""
from __future__ import annotations

import socket
import threading


class Relay:
    """A TCP relay <bind>:<port> -> target, so a test can take a service away and bring it back.
    `down()` refuses new connections and cuts live ones, `up()` relays again."""

    def __init__(self, target: tuple[str, int], bind: str = "127.0.0.1"):
        self.target = target
        self.bind = bind
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((bind, 0))
        self.port = self.server.getsockname()[1]
        self.server.listen(64)
        self.open = True
        self.closed = False
        self.live: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            self.live += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def down(self):
        """The service is gone: new connections are refused and kept-alive ones are cut."""
        self.open = False
        for s in self.live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.live.clear()

    def up(self):
        self.open = True

    def close(self):
        self.closed = True
        self.server.close()
