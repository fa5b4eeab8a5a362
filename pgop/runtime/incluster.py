"""One Kubernetes API call with the standard library alone, for a short-lived pod command whose
memory counts: the backup pod's progress (status.uploadedBytes). Importing the kubernetes client
costs such a process about 46 MB, twice what the backup itself needs; this costs nothing.

In-cluster only: the pod's service account token and CA, KUBERNETES_SERVICE_HOST/PORT. Outside a
pod (None from `from_env`) the caller uses pgop.runtime.kube. The token is sent in a header and
never appears in an error.
"""
from __future__ import annotations

import http.client
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = 10.0


class ApiError(RuntimeError):
    pass


@dataclass(frozen=True)
class InCluster:
    host: str
    port: int
    token_file: Path
    ca_file: Path
    timeout: float = field(default=TIMEOUT)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, directory: Path = SERVICE_ACCOUNT) -> InCluster | None:
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        token, ca = directory / "token", directory / "ca.crt"
        if not (host and port and port.isdigit() and token.is_file() and ca.is_file()):
            return None
        return cls(host, int(port), token, ca)

    def merge_patch_status(self, group: str, version: str, plural: str, namespace: str, name: str,
                           status: Mapping[str, Any]) -> None:
        path = f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}/status"
        body = json.dumps({"status": dict(status)}).encode()
        # The token is read at each call: the kubelet rotates it.
        headers = {"Authorization": f"Bearer {self.token_file.read_text().strip()}",
                   "Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                 context=ssl.create_default_context(cafile=str(self.ca_file)))
        try:
            connection.request("PATCH", path, body=body, headers=headers)
            answer = connection.getresponse()
            text = answer.read(2000).decode(errors="replace")
        finally:
            connection.close()
        if answer.status >= 300:
            try:
                message = json.loads(text).get("message", text)
            except ValueError:
                message = text
            raise ApiError(f"PATCH {path}: {answer.status} {message}"[:500])
