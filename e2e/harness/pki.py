"""A private CA and the certificates and kubeconfigs of the local cluster (openssl CLI).

Certificates are made once and kept in STATE/pki; a second `up` reuses them.
"""
from __future__ import annotations

import base64
from pathlib import Path

from . import paths
from .proc import run

DAYS = "3650"


def _openssl(*args: str) -> None:
    run(["openssl", *args])


def ca() -> tuple[Path, Path]:
    crt, key = paths.PKI / "ca.crt", paths.PKI / "ca.key"
    if not crt.exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                 "-out", str(crt), "-days", DAYS, "-subj", "/CN=pgop-local-ca",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    return crt, key


def cert(name: str, cn: str, org: str | None = None, sans: list[str] | None = None,
         server: bool = False) -> tuple[Path, Path]:
    crt, key = paths.PKI / f"{name}.crt", paths.PKI / f"{name}.key"
    if crt.exists() and key.exists():
        return crt, key
    ca_crt, ca_key = ca()
    csr = paths.PKI / f"{name}.csr"
    subj = f"/CN={cn}" + (f"/O={org}" if org else "")
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", subj)
    ext = paths.PKI / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             "extendedKeyUsage=" + ("serverAuth,clientAuth" if server else "clientAuth")]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(crt), "-days", DAYS, "-extfile", str(ext))
    csr.unlink(missing_ok=True)
    key.chmod(0o600)
    return crt, key


def service_account_keys() -> tuple[Path, Path]:
    key, pub = paths.PKI / "sa.key", paths.PKI / "sa.pub"
    if not key.exists():
        _openssl("genrsa", "-out", str(key), "2048")
        _openssl("rsa", "-in", str(key), "-pubout", "-out", str(pub))
    return key, pub


def _b64(p: Path) -> str:
    return base64.b64encode(p.read_bytes()).decode()


def kubeconfig(name: str, cn: str, org: str | None = None,
               server: str = f"https://127.0.0.1:{paths.APISERVER_PORT}") -> Path:
    """A kubeconfig with an embedded client certificate for user `cn` in group `org`."""
    out = paths.PKI / f"{name}.kubeconfig"
    crt, key = cert(name, cn, org)
    ca_crt, _ = ca()
    out.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: pgop-local
  cluster:
    server: {server}
    certificate-authority-data: {_b64(ca_crt)}
users:
- name: {name}
  user:
    client-certificate-data: {_b64(crt)}
    client-key-data: {_b64(key)}
contexts:
- name: pgop-local
  context: {{cluster: pgop-local, user: {name}}}
current-context: pgop-local
""")
    out.chmod(0o600)
    return out


def apiserver_sans() -> list[str]:
    d = paths.CLUSTER_DOMAIN
    return ["DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
            f"DNS:kubernetes.default.svc.{d}", "DNS:localhost", "IP:127.0.0.1",
            f"IP:{paths.NODE_IP}", f"IP:{paths.KUBERNETES_SERVICE_IP}"]
