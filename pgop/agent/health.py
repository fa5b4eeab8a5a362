"""/healthz (the agent's loop turns) and /readyz (postgres accepts connections in the wanted role)
for the kubelet's probes, on PGOP_AGENT_PORT."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Health:
    def __init__(self, stale_after: float):
        self.stale_after = stale_after
        self.last_turn: float | None = None
        self.ready = False
        self.detail: dict = {}
        self.started = time.monotonic()
        self.busy_until = 0.0

    def working(self, allowance: float) -> None:
        """The loop starts an action that may take a while (a shutdown, a promotion)."""
        self.busy_until = time.monotonic() + allowance

    def turned(self, ready: bool, detail: dict | None = None) -> None:
        self.last_turn = time.monotonic()
        self.busy_until = 0.0
        self.ready = ready
        self.detail = detail or {}

    def alive(self) -> bool:
        # Before the first turn, give the start of postgres its time (the probe has its own).
        reference = self.last_turn if self.last_turn is not None else self.started
        now = time.monotonic()
        return now - reference <= self.stale_after or now <= self.busy_until


def _handler(health: Health):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
            path = self.path.split("?")[0]
            if path == "/healthz":
                ok = health.alive()
            elif path == "/readyz":
                ok = health.alive() and health.ready
            else:
                self.send_error(404)
                return
            body = json.dumps({"ok": ok, **health.detail}).encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # probes every 2 s would drown the log
            pass

    return Handler


def serve(health: Health, address: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((address, port), _handler(health))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
