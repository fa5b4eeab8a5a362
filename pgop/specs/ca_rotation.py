"""Rotation of a cluster's own CA without a failed connection, in three phases.

The CA (Secret `<cluster>-ca`) is valid 10 years (pgop.specs.tls.CA_VALIDITY); a rotation starts
when less than CA_RENEW_BEFORE is left, or at once when the PgCluster carries the annotation
`pgop.io/rotate-ca` (the operator removes it when the rotation starts). What the Secret holds says
the phase; the CA bundle (every CA a client or an instance must trust) is written as `ca.crt` into
the leaf Secrets and the credentials Secrets:

1. trust   (`next.crt`, `next.key` beside `ca.crt`, `ca.key`): a new CA is made; the bundle holds
   both, the leaves are still signed by the old one. It lasts at least TRUST_OVERLAP (applications
   that read the app Secret's `ca.crt` pick up the bundle) and until every instance reports
   (PgInstance status.certificates.trusted) that it trusts the new CA.
2. reissue (`old.crt` beside `ca.crt`, `ca.key`, which are now the new CA): the leaves are issued
   again from the new CA (pgop.specs.tls.renewal_reason: "signed by another CA"); the bundle
   still holds both. It lasts until every leaf Secret is signed by the new CA and every instance
   presents those leaves (status.certificates.server, .replication).
3. steady again: `old.crt` goes; the bundle is the new CA alone.

`rotation_step` decides (pure, from the Secret, the reports and the time); the cluster planner
applies its answer.
"""
from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pgop.kernel.conditions import parse_time, rfc3339
from pgop.kernel.pgconfig import certificate_fingerprints
from pgop.specs.tls import CA_CERT, CA_KEY, KeyPair, not_after, secret_text

ANNOTATION_ROTATE_CA = "pgop.io/rotate-ca"  # on the PgCluster: rotate the CA now
ANNOTATION_ROTATION_STARTED = "pgop.io/ca-rotation-started"  # on <cluster>-ca: when phase 1 began
NEXT_CERT, NEXT_KEY, OLD_CERT = "next.crt", "next.key", "old.crt"

CA_RENEW_BEFORE = timedelta(days=365)
TRUST_OVERLAP = timedelta(minutes=2)

STEADY, TRUST, REISSUE = "steady", "trust", "reissue"
START, PROMOTE, FINISH = "start", "promote", "finish"


@dataclass(frozen=True)
class CaState:
    """The CA Secret: the CA that signs (`current`), and the one coming or going."""

    current: KeyPair
    next: KeyPair | None = None
    old_cert: str | None = None
    started: datetime | None = None

    @property
    def phase(self) -> str:
        if self.next is not None:
            return TRUST
        if self.old_cert:
            return REISSUE
        return STEADY

    @property
    def bundle(self) -> str:
        """Every CA to trust now, the oldest first."""
        certs = [self.old_cert, self.current.cert, self.next.cert if self.next is not None else None]
        return "".join(c if c.endswith("\n") else c + "\n" for c in certs if c)


def ca_state(secret: Mapping[str, Any] | None) -> CaState | None:
    """The state of an observed `<cluster>-ca` Secret; None when it lacks the current CA."""
    cert, key = secret_text(secret, CA_CERT), secret_text(secret, CA_KEY)
    if not cert or not key:
        return None
    next_cert, next_key = secret_text(secret, NEXT_CERT), secret_text(secret, NEXT_KEY)
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    try:
        started = parse_time(annotations.get(ANNOTATION_ROTATION_STARTED))
    except ValueError:
        started = None
    return CaState(KeyPair(cert, key), KeyPair(next_cert, next_key) if next_cert and next_key else None,
                   secret_text(secret, OLD_CERT) or None, started)


@dataclass(frozen=True)
class InstanceCertificates:
    """What an instance loaded (PgInstance status.certificates, written by its agent)."""

    name: str
    trusted: frozenset[str]  # fingerprints of the CAs in its trust files
    server: str  # fingerprint of the certificate it presents
    replication: str  # fingerprint of its replication client certificate

    @classmethod
    def from_instance(cls, instance: Mapping[str, Any]) -> InstanceCertificates | None:
        report = (instance.get("status") or {}).get("certificates")
        name = str((instance.get("metadata") or {}).get("name", ""))
        if not isinstance(report, Mapping):
            return None
        return cls(name, frozenset(str(f) for f in report.get("trusted") or ()),
                   str(report.get("server") or ""), str(report.get("replication") or ""))


@dataclass(frozen=True)
class Step:
    action: str  # "" (nothing to do now), START, PROMOTE or FINISH
    reason: str  # why the action, or what the rotation waits for


def fingerprint(pem: str) -> str:
    found = certificate_fingerprints(pem)
    return found[0] if found else ""


def rotation_step(state: CaState, now: datetime, *, forced: bool,
                  instances: Mapping[str, InstanceCertificates | None],
                  leaves: Mapping[str, str], leaves_signed_by_current: bool) -> Step:
    """The next phase of the CA rotation, if its time has come.

    `instances`: each live PgInstance's report (None: it has reported nothing yet). `leaves`: the
    fingerprint each instance must present once re-issued, by report field ("server",
    "replication"; the server's is absent when the user brings it). `leaves_signed_by_current`:
    every leaf Secret the operator makes is signed by `state.current`."""
    if state.phase == STEADY:
        if forced:
            return Step(START, f"requested by the annotation {ANNOTATION_ROTATE_CA}")
        expires = not_after(state.current.cert)
        if expires - now < CA_RENEW_BEFORE:
            return Step(START, f"the CA expires {expires:%Y-%m-%d} (less than {CA_RENEW_BEFORE.days} days left)")
        return Step("", "")
    if state.phase == TRUST:
        assert state.next is not None
        new_ca = fingerprint(state.next.cert)
        if state.started is not None and now - state.started < TRUST_OVERLAP:
            left = int((state.started + TRUST_OVERLAP - now).total_seconds())
            return Step("", f"CA rotation: the new CA is trusted next to the old one; leaves are issued "
                            f"from it in {left}s at the earliest (clients re-read ca.crt meanwhile)")
        behind = _not_yet(instances, lambda r: new_ca in r.trusted)
        if behind:
            return Step("", "CA rotation: waiting for " + ", ".join(behind) + " to trust the new CA "
                            "(the kubelet refreshes the mounted bundle, then the agent reloads Postgres)")
        return Step(PROMOTE, "every instance trusts the new CA: the leaves are issued from it")
    if not leaves_signed_by_current:
        return Step("", "CA rotation: the certificates are being issued from the new CA")
    behind = _not_yet(instances, lambda r: all(getattr(r, field) == fp for field, fp in leaves.items()))
    if behind:
        return Step("", "CA rotation: waiting for " + ", ".join(behind) + " to present the certificates "
                        "of the new CA")
    return Step(FINISH, "every instance presents certificates of the new CA: the old CA leaves the bundle")


def _not_yet(instances: Mapping[str, InstanceCertificates | None], done: Any) -> list[str]:
    return [f"{name} (no report yet)" if report is None else name
            for name, report in sorted(instances.items()) if report is None or not done(report)]


# ------------------------------------------------------------------------------ Secret patches

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def start_patch(new_ca: KeyPair, now: datetime) -> dict[str, Any]:
    return {"metadata": {"annotations": {ANNOTATION_ROTATION_STARTED: rfc3339(now)}},
            "data": {NEXT_CERT: _b64(new_ca.cert), NEXT_KEY: _b64(new_ca.key)}}


def promote_patch(state: CaState) -> dict[str, Any]:
    assert state.next is not None
    return {"data": {CA_CERT: _b64(state.next.cert), CA_KEY: _b64(state.next.key),
                     OLD_CERT: _b64(state.current.cert), NEXT_CERT: None, NEXT_KEY: None}}


def finish_patch() -> dict[str, Any]:
    return {"metadata": {"annotations": {ANNOTATION_ROTATION_STARTED: None}}, "data": {OLD_CERT: None}}


def after(state: CaState, action: str, new_ca: KeyPair | None = None, now: datetime | None = None) -> CaState:
    """The state once `action` is applied."""
    if action == START:
        assert new_ca is not None
        return CaState(state.current, new_ca, None, now)
    if action == PROMOTE:
        assert state.next is not None
        return CaState(state.next, None, state.current.cert, state.started)
    if action == FINISH:
        return CaState(state.current)
    return state


def leaves_of(secrets: Sequence[tuple[str, str]]) -> dict[str, str]:
    """{report field: fingerprint} of (field, PEM) pairs."""
    return {field: fingerprint(pem) for field, pem in secrets}
