"""The certificates of a cluster: its own CA, the server certificate every instance presents, and
the client certificate the replicas log in with.

- `<cluster>-ca` (Opaque: `ca.crt`, `ca.key`): the cluster's CA, valid 10 years, rotated in phases
  (pgop.specs.ca_rotation). Its key stays in this Secret, which only the operator reads (the
  agents' Role does not name it). The leaf Secrets' `ca.crt` is the CA bundle (both CAs while a
  rotation runs).
- `<cluster>-server` (kubernetes.io/tls: `tls.crt`, `tls.key`, `ca.crt`): presented by every
  instance; its names are the cluster's Services (`-rw`, `-ro`, `-r`, short and qualified), so a
  client can check it with `sslmode=verify-full`.
- `<cluster>-replication-tls` (kubernetes.io/tls): CN = the replication role. Replicas, clones,
  rewinds and backups log in with it (`cert` authentication in pg_hba.conf, over TLS only).

Leaf certificates are valid LEAF_VALIDITY and re-issued when less than RENEW_BEFORE is left, when
their names no longer match, or when another CA signed them; the kubelet refreshes the mounted
files and the agent reloads Postgres, which reads new certificate files on SIGHUP: no restart.

`issue_*` make keys (not pure: fresh randomness); `renewal_reason` decides (pure, from the PEM
text and the time).
"""
from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pgop.kernel import names, pgconfig
from pgop.kernel.meta import cluster_labels, object_meta, owner_reference
from pgop.kernel.model import Cluster

CA_VALIDITY = timedelta(days=3650)
LEAF_VALIDITY = timedelta(days=90)
RENEW_BEFORE = timedelta(days=30)
BACKDATE = timedelta(minutes=5)  # clocks of the nodes differ a little

CA_CERT, CA_KEY = "ca.crt", "ca.key"
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"


@dataclass(frozen=True)
class KeyPair:
    cert: str  # PEM
    key: str  # PEM (PKCS#8, unencrypted)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# X.509 allows a common name of at most 64 characters; a cluster's and its namespace's names may
# be 63 each. The name is for people: certificates are matched by their DNS names and keys.
COMMON_NAME_MAX = 64


def issue_ca(common_name: str, now: datetime) -> KeyPair:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:COMMON_NAME_MAX]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgop")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return KeyPair(_pem_cert(cert), _pem_key(key))


def issue_leaf(ca: KeyPair, common_name: str, dns_names: Sequence[str], now: datetime,
               server: bool) -> KeyPair:
    ca_cert = x509.load_pem_x509_certificate(ca.cert.encode())
    ca_key = serialization.load_pem_private_key(ca.key.encode(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:COMMON_NAME_MAX])]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(now + LEAF_VALIDITY)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=True,
                                            content_commitment=False, data_encipherment=False,
                                            key_cert_sign=False, crl_sign=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                                        critical=False)
    return KeyPair(_pem_cert(builder.sign(ca_key, hashes.SHA256())), _pem_key(key))


# ------------------------------------------------------------------------------ decisions

def server_names(cluster: Cluster) -> list[str]:
    """Every name a client may use for an instance of the cluster: its Services, short and
    qualified."""
    out = []
    for service in (names.rw_service(cluster.name), names.ro_service(cluster.name), names.r_service(cluster.name)):
        out += [service, f"{service}.{cluster.namespace}", f"{service}.{cluster.namespace}.svc",
                f"{service}.{cluster.namespace}.svc.cluster.local"]
    return out


def renewal_reason(cert_pem: str | None, ca_pem: str, now: datetime, dns_names: Sequence[str] = (),
                   common_name: str | None = None) -> str:
    """Why the leaf certificate must be issued again, or "" when it is good."""
    if not cert_pem:
        return "no certificate yet"
    problem, expires, cn, have = _leaf(cert_pem, ca_pem)
    if problem:
        return problem
    assert expires is not None
    if expires - now < RENEW_BEFORE:
        return f"expires {expires:%Y-%m-%d} (less than {RENEW_BEFORE.days} days left)"
    if common_name is not None and cn != common_name[:COMMON_NAME_MAX]:
        return f"common name is not {common_name}"
    if dns_names and have != frozenset(dns_names):
        return "its names differ from the cluster's Services"
    return ""


@functools.lru_cache(maxsize=8192)
def _leaf(cert_pem: str, ca_pem: str) -> tuple[str, datetime | None, str | None, frozenset[str]]:
    """What does not change with time about a leaf and its CA: a problem ("" for none), when it
    expires, its common name and DNS names. Cached: every reconcile pass checks every leaf, and
    verifying a signature is most of a quiet pass's CPU."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
    except ValueError as e:
        return f"unreadable certificate ({e})", None, None, frozenset()
    if cert.issuer != ca.subject:
        return "signed by another CA", None, None, frozenset()
    try:
        cert.verify_directly_issued_by(ca)
    except Exception as e:  # InvalidSignature, ValueError, TypeError: no common base
        return f"not signed by the cluster's CA ({type(e).__name__})", None, None, frozenset()
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        have = frozenset(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                         .get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        have = frozenset()
    return "", cert.not_valid_after_utc, str(cn[0].value) if cn else None, have


def not_after(cert_pem: str) -> datetime:
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


# ------------------------------------------------------------------------------ Secrets

def secret_text(secret: Mapping[str, Any] | None, key: str) -> str | None:
    """A value of an observed Secret (its data is base64)."""
    if not secret:
        return None
    value = (secret.get("data") or {}).get(key)
    if value is None:
        return (secret.get("stringData") or {}).get(key)
    return base64.b64decode(value).decode()


def _secret(cluster: Cluster, name: str, type_: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(name, cluster.namespace, cluster_labels(cluster.name),
                                owner=owner_reference("PgCluster", cluster.name, cluster.uid)),
        "type": type_,
        "stringData": data,
    }


def build_ca_secret(cluster: Cluster, ca: KeyPair) -> dict[str, Any]:
    return _secret(cluster, names.ca_secret(cluster.name), "Opaque", {CA_CERT: ca.cert, CA_KEY: ca.key})


def build_leaf_secret(cluster: Cluster, name: str, ca: KeyPair, leaf: KeyPair,
                      bundle: str | None = None) -> dict[str, Any]:
    """`bundle`: the CAs to trust beside the leaf, as ca.crt (default: the CA that signed it)."""
    return _secret(cluster, name, "kubernetes.io/tls",
                   {TLS_CERT: leaf.cert, TLS_KEY: leaf.key, CA_CERT: bundle or ca.cert})


def leaf_secrets(cluster: Cluster) -> list[tuple[str, str, list[str], bool]]:
    """(Secret name, common name, DNS names, server?) of each leaf certificate of the cluster."""
    return [
        (names.server_tls_secret(cluster.name), names.rw_service(cluster.name), server_names(cluster), True),
        (names.replication_tls_secret(cluster.name), pgconfig.REPLICATION_USER, [], False),
    ]
