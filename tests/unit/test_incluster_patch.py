"""The backup pod's progress call without the kubernetes client: a merge patch of a status with the
pod's service account, against a local HTTPS server standing in for the API server."""
from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading

import pytest

from pgop.agent.backups import ProgressReporter
from pgop.runtime.incluster import ApiError, InCluster

TOKEN = "sa-token-not-for-logs"


@pytest.fixture
def api(tmp_path):
    """An HTTPS server on loopback with a self-signed certificate; what it received, and the answer
    it gives (status, body) settable."""
    cert, key = tmp_path / "ca.crt", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    (tmp_path / "token").write_text(TOKEN + "\n")
    seen: list[dict] = []
    answer = {"status": 200, "body": b"{}"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PATCH(self):  # noqa: N802 (the stdlib's name)
            length = int(self.headers["Content-Length"])
            seen.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length))})
            self.send_response(answer["status"])
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(server.server_address[1])}
    yield InCluster.from_env(env, tmp_path), seen, answer
    server.shutdown()


def test_outside_a_pod_there_is_no_in_cluster_client(tmp_path):
    assert InCluster.from_env({}, tmp_path) is None
    assert InCluster.from_env({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
                              tmp_path) is None  # no token mounted


def test_the_progress_reaches_the_pgbackup_status(api):
    client, seen, _ = api
    assert client is not None
    ProgressReporter("shop", "nightly", kube=client)(123 << 20)
    assert seen == [{"path": "/apis/pgop.io/v1/namespaces/shop/pgbackups/nightly/status",
                     "headers": seen[0]["headers"], "body": {"status": {"uploadedBytes": 123 << 20}}}]
    assert seen[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert seen[0]["headers"]["Content-Type"] == "application/merge-patch+json"


def test_a_refusal_says_why_without_the_token(api, caplog):
    client, seen, answer = api
    answer.update(status=403, body=json.dumps({"message": "pgbackups.pgop.io is forbidden"}).encode())
    with pytest.raises(ApiError, match="403 pgbackups.pgop.io is forbidden") as error:
        client.merge_patch_status("pgop.io", "v1", "pgbackups", "shop", "nightly", {"uploadedBytes": 1})
    assert TOKEN not in str(error.value)
    ProgressReporter("shop", "nightly", kube=client)(1)  # a courtesy: a warning, never an exception
    assert "forbidden" in caplog.text and TOKEN not in caplog.text
