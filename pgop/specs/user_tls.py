"""Certificates the user brings (spec.tls), checked before they are trusted to serve.

`spec.tls.serverSecret` names a `kubernetes.io/tls` Secret as cert-manager writes it: `tls.crt`
(the server certificate, maybe followed by intermediates), `tls.key`, `ca.crt` (its issuer: what
replicas, and the app Secret's `ca.crt`, check the server with). `spec.tls.clientCASecret` names a
Secret whose `ca.crt` is trusted for client certificates besides the cluster's own CA.

`check_server_secret` and `check_client_ca_secret` say what is wrong, as (reason, message): the
message names the field and the Secret, never key material. Pure: from the Secret and the time.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pgop.kernel import names
from pgop.kernel.model import Cluster
from pgop.specs.tls import CA_CERT, TLS_CERT, TLS_KEY, secret_text

Problem = tuple[str, str]  # (condition reason, message)

SERVER_FIELD = "spec.tls.serverSecret"
CLIENT_CA_FIELD = "spec.tls.clientCASecret"


def service_names(cluster: Cluster) -> dict[str, list[str]]:
    """Each Service of the cluster and the DNS names a client may reach it by."""
    ns = cluster.namespace
    return {service: [service, f"{service}.{ns}", f"{service}.{ns}.svc", f"{service}.{ns}.svc.cluster.local"]
            for service in (names.rw_service(cluster.name), names.ro_service(cluster.name),
                            names.r_service(cluster.name))}


def _covers(pattern: str, host: str) -> bool:
    """A DNS name of a certificate matches `host`: exactly, or as a wildcard of one left-most label."""
    pattern, host = pattern.lower().rstrip("."), host.lower()
    if pattern.startswith("*."):
        return "." in host and fnmatch.fnmatchcase(host.split(".", 1)[1], pattern[2:]) \
            and "*" not in pattern[2:]
    return pattern == host


def _load_certificates(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def _prefix(field: str, secret: str) -> str:
    return f"{field}: Secret {secret}"


def check_server_secret(cluster: Cluster, name: str, secret: Mapping[str, Any] | None,
                        now: datetime) -> list[Problem]:
    where = _prefix(SERVER_FIELD, name)
    if secret is None:
        return [("SecretNotFound", f"{where} not found in namespace {cluster.namespace}")]
    missing = [key for key in (TLS_CERT, TLS_KEY, CA_CERT) if not secret_text(secret, key)]
    if missing:
        return [("SecretKeyMissing", f"{where} has no {', '.join(missing)} (a kubernetes.io/tls Secret with "
                                     "tls.crt, tls.key and ca.crt, as cert-manager writes it)")]
    try:
        chain = _load_certificates(secret_text(secret, TLS_CERT) or "")
    except ValueError:
        return [("CertificateUnreadable", f"{where}: {TLS_CERT} is not a PEM certificate")]
    try:
        cas = _load_certificates(secret_text(secret, CA_CERT) or "")
    except ValueError:
        return [("CertificateUnreadable", f"{where}: {CA_CERT} is not a PEM certificate")]
    try:
        key = serialization.load_pem_private_key((secret_text(secret, TLS_KEY) or "").encode(), password=None)
    except (ValueError, TypeError):
        # never the text of the error: it could quote the key
        return [("CertificateUnreadable", f"{where}: {TLS_KEY} is not an unencrypted PEM private key")]
    cert = chain[0]
    problems: list[Problem] = []
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo):
        problems.append(("KeyMismatch", f"{where}: {TLS_KEY} is not the key of the certificate in {TLS_CERT}"))
    if cert.not_valid_after_utc <= now:
        problems.append(("CertificateExpired", f"{where}: the certificate in {TLS_CERT} expired "
                                               f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"))
    elif cert.not_valid_before_utc > now:
        problems.append(("CertificateNotYetValid", f"{where}: the certificate in {TLS_CERT} is valid only "
                                                   f"from {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"))
    if not _issued_by_any(chain, cas):
        problems.append(("NotSignedByCA", f"{where}: the certificate in {TLS_CERT} is not signed by a CA in "
                                          f"{CA_CERT} (replicas and clients check the server with {CA_CERT})"))
    try:
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    unnamed = [service for service, hosts in service_names(cluster).items()
               if not any(_covers(pattern, host) for pattern in dns for host in hosts)]
    if unnamed:
        problems.append(("NamesMissing", f"{where}: the certificate in {TLS_CERT} does not name the Service(s) "
                                         f"{', '.join(unnamed)} (as e.g. {unnamed[0]}.{cluster.namespace}.svc); "
                                         f"its DNS names: {', '.join(dns) or 'none'}"))
    return problems


def _issued_by_any(chain: list[x509.Certificate], cas: list[x509.Certificate]) -> bool:
    """The leaf chains up to a CA of `cas` through the intermediates that follow it in tls.crt."""
    pool = cas + chain[1:]
    cert = chain[0]
    for _ in range(len(pool) + 1):
        if any(cert == ca for ca in cas):
            return True
        issuer = next((c for c in pool if c.subject == cert.issuer and _signed(cert, c)), None)
        if issuer is None:
            return False
        if any(issuer == ca for ca in cas):
            return True
        cert = issuer
    return False


def _signed(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError, TypeError: no common base
        return False
    return True


def check_client_ca_secret(cluster: Cluster, name: str, secret: Mapping[str, Any] | None,
                           now: datetime) -> list[Problem]:
    where = _prefix(CLIENT_CA_FIELD, name)
    if secret is None:
        return [("SecretNotFound", f"{where} not found in namespace {cluster.namespace}")]
    text = secret_text(secret, CA_CERT)
    if not text:
        return [("SecretKeyMissing", f"{where} has no {CA_CERT} (the CA that signs the client certificates)")]
    try:
        cas = _load_certificates(text)
    except ValueError:
        return [("CertificateUnreadable", f"{where}: {CA_CERT} is not a PEM certificate")]
    expired = [ca for ca in cas if ca.not_valid_after_utc <= now]
    if expired:
        return [("CertificateExpired", f"{where}: the CA in {CA_CERT} expired "
                                       f"{expired[0].not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")]
    return []
