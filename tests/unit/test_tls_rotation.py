"""Rotation of the cluster's CA in phases (pgop.specs.ca_rotation) and its effects in the cluster
plan: no leaf is ever signed by a CA some instance does not trust yet."""
from __future__ import annotations

import base64
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pgop.kernel import pgconfig
from pgop.specs import ca_rotation, tls
from tests.unit.world import NOW, plan, running_cluster


def _text(world, secret, key):
    value = (world.get("Secret", secret)["data"] or {}).get(key)
    return base64.b64decode(value).decode() if value is not None else None


def _fps(pem):
    return pgconfig.certificate_fingerprints(pem or "")


def _agents_load(world, *names):
    """What each agent reports once the kubelet refreshed its files and it reloaded Postgres
    (the layout without spec.tls: ca.crt of <cluster>-server is the trust bundle)."""
    for name in names or world.instance_names():
        world.report(name, certificates={
            "trusted": _fps(_text(world, "orders-server", "ca.crt")),
            "server": _fps(_text(world, "orders-server", "tls.crt"))[0],
            "replication": _fps(_text(world, "orders-replication-tls", "tls.crt"))[0]})


def _issuer_fp(world, secret, cas_pem):
    leaf = x509.load_pem_x509_certificate(_text(world, secret, "tls.crt").encode())
    for ca in x509.load_pem_x509_certificates(cas_pem.encode()):
        try:
            leaf.verify_directly_issued_by(ca)
            return pgconfig.certificate_fingerprints(ca.public_bytes(serialization.Encoding.PEM).decode())[0]
        except Exception:
            continue
    return None


def _secret_actions(actions):
    return sorted(a.name for a in actions if a.kind == "Secret")


def test_a_forced_rotation_goes_through_three_phases_without_a_leaf_nobody_trusts():
    world, cluster = running_cluster(2)
    _agents_load(world)
    old_ca = _text(world, "orders-ca", "ca.crt")
    world.cluster_annotations[ca_rotation.ANNOTATION_ROTATE_CA] = "now"

    # Phase 1: a new CA, trusted next to the old one everywhere; the annotation is answered.
    start = plan(world, cluster)
    assert _secret_actions(start) == ["orders-app", "orders-ca", "orders-replication", "orders-replication-tls",
                                      "orders-server", "orders-superuser"]
    assert any(a.kind == "PgCluster" for a in start)
    world.apply(start)
    assert ca_rotation.ANNOTATION_ROTATE_CA not in world.cluster_annotations
    new_ca = _text(world, "orders-ca", "next.crt")
    bundle = _text(world, "orders-server", "ca.crt")
    assert _fps(bundle) == _fps(old_ca) + _fps(new_ca)
    for secret in ("orders-app", "orders-superuser", "orders-replication", "orders-replication-tls"):
        assert _text(world, secret, "ca.crt") == bundle
    assert _issuer_fp(world, "orders-server", bundle) == _fps(old_ca)[0]  # leaves not touched yet
    assert [e.reason for e in start.events if e.reason == "CARotation"]

    # It waits the overlap, then for every instance to trust the new CA.
    early = plan(world, cluster, now=NOW + timedelta(minutes=1))
    assert not _secret_actions(early) and any("at the earliest" in w for w in early.waiting)
    later = NOW + ca_rotation.TRUST_OVERLAP + timedelta(seconds=1)
    _agents_load(world, "orders-0")
    waiting = plan(world, cluster, now=later)
    assert not _secret_actions(waiting)
    assert any("orders-1" in w and "trust the new CA" in w and "orders-0" not in w for w in waiting.waiting)

    # Phase 2: every instance trusts both; the leaves come from the new CA, the bundle keeps both.
    _agents_load(world)
    promote = plan(world, cluster, now=later)
    assert _secret_actions(promote) == ["orders-ca", "orders-replication-tls", "orders-server"]
    world.apply(promote)
    assert _text(world, "orders-ca", "ca.crt") == new_ca and _text(world, "orders-ca", "old.crt") == old_ca
    assert _text(world, "orders-ca", "next.crt") is None
    assert _text(world, "orders-server", "ca.crt") == bundle
    assert _issuer_fp(world, "orders-server", bundle) == _fps(new_ca)[0]
    assert _issuer_fp(world, "orders-replication-tls", bundle) == _fps(new_ca)[0]

    # The old CA stays until every instance presents the new leaves.
    waiting = plan(world, cluster, now=later)
    assert not _secret_actions(waiting) and any("present the certificates" in w for w in waiting.waiting)

    # Phase 3: the old CA leaves every bundle.
    _agents_load(world)
    finish = plan(world, cluster, now=later)
    world.apply(finish)
    assert _text(world, "orders-ca", "old.crt") is None
    assert ca_rotation.ANNOTATION_ROTATION_STARTED not in (world.get("Secret", "orders-ca")["metadata"]
                                                           .get("annotations") or {})
    for secret in ("orders-app", "orders-server", "orders-replication-tls"):
        assert _fps(_text(world, secret, "ca.crt")) == _fps(new_ca)
    _agents_load(world)
    assert not _secret_actions(plan(world, cluster, now=later))


def test_an_instance_that_never_reports_holds_the_rotation_and_says_so():
    world, cluster = running_cluster(2)
    world.cluster_annotations[ca_rotation.ANNOTATION_ROTATE_CA] = "now"
    world.apply(plan(world, cluster))
    _agents_load(world, "orders-0")
    held = plan(world, cluster, now=NOW + timedelta(hours=1))
    assert not _secret_actions(held)
    assert any("orders-1 (no report yet)" in w for w in held.waiting)


def _state(days_left: int):
    ca = tls.issue_ca("orders", NOW - tls.CA_VALIDITY + timedelta(days=days_left))
    return ca_rotation.CaState(ca)


def test_the_ca_rotates_when_less_than_a_year_is_left():
    kwargs = {"forced": False, "instances": {}, "leaves": {}, "leaves_signed_by_current": True}
    assert ca_rotation.rotation_step(_state(400), NOW, **kwargs).action == ""
    step = ca_rotation.rotation_step(_state(300), NOW, **kwargs)
    assert step.action == ca_rotation.START and "less than 365 days left" in step.reason
    assert ca_rotation.rotation_step(_state(4000), NOW, **{**kwargs, "forced": True}).action == ca_rotation.START


def test_the_phases_follow_the_reports():
    old, new = tls.issue_ca("old", NOW), tls.issue_ca("new", NOW)
    trust = ca_rotation.CaState(old, new, None, NOW)
    assert trust.phase == ca_rotation.TRUST and _fps(trust.bundle) == _fps(old.cert) + _fps(new.cert)
    new_fp = _fps(new.cert)[0]
    report = ca_rotation.InstanceCertificates("orders-0", frozenset({new_fp}), "s", "r")
    after = NOW + ca_rotation.TRUST_OVERLAP
    step = ca_rotation.rotation_step(trust, after, forced=False, instances={"orders-0": report},
                                     leaves={}, leaves_signed_by_current=True)
    assert step.action == ca_rotation.PROMOTE
    reissue = ca_rotation.after(trust, step.action)
    assert reissue.phase == ca_rotation.REISSUE and reissue.current == new and reissue.bundle == trust.bundle
    not_yet = ca_rotation.rotation_step(reissue, after, forced=False, instances={"orders-0": report},
                                        leaves={"server": "s2", "replication": "r"}, leaves_signed_by_current=True)
    assert not_yet.action == "" and "orders-0" in not_yet.reason
    done = ca_rotation.rotation_step(reissue, after, forced=True, instances={"orders-0": report},
                                     leaves={"server": "s", "replication": "r"}, leaves_signed_by_current=True)
    assert done.action == ca_rotation.FINISH
    assert ca_rotation.after(reissue, done.action).bundle == new.cert


def test_a_ca_secret_read_back_gives_the_phase():
    old, new = tls.issue_ca("old", NOW), tls.issue_ca("new", NOW)

    def secret(**data):
        return {"metadata": {"annotations": {ca_rotation.ANNOTATION_ROTATION_STARTED: "2026-11-22T12:00:00Z"}},
                "data": {k.replace("_", "."): base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    state = ca_rotation.ca_state(secret(ca_crt=old.cert, ca_key=old.key, next_crt=new.cert, next_key=new.key))
    assert state is not None and state.phase == ca_rotation.TRUST and state.started == NOW
    state = ca_rotation.ca_state(secret(ca_crt=new.cert, ca_key=new.key, old_crt=old.cert))
    assert state is not None and state.phase == ca_rotation.REISSUE
    assert ca_rotation.ca_state(secret(ca_crt=old.cert)) is None
