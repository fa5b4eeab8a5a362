"""`pgop report`: the bundle shows no secret value. Objects as the API server returns them."""
from __future__ import annotations

import base64
import io
import json
import tarfile
from datetime import UTC, datetime

import yaml

from pgop.cli_report import REDACTED, bundle_files, redact_object, redact_text, related_events, write_tar

PASSWORD = "Zq8-s3cr3t-Pw"


def b64(text):
    return base64.b64encode(text.encode()).decode()


SECRET = {
    "apiVersion": "v1", "kind": "Secret",
    "metadata": {"name": "orders-app", "namespace": "shop", "labels": {"pgop.io/cluster": "orders"},
                 "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                 json.dumps({"stringData": {"password": PASSWORD}})},
                 "managedFields": [{"manager": "pgop"}]},
    "type": "kubernetes.io/basic-auth",
    "data": {"username": b64("app"), "password": b64(PASSWORD),
             "uri": b64(f"postgresql://app:{PASSWORD}@orders-rw:5432/app")},
}
POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "orders-0", "labels": {"pgop.io/cluster": "orders"}},
    "spec": {"containers": [{"name": "postgres", "image": "pgop/postgres:15", "env": [
        {"name": "PGOP_CLUSTER", "value": "orders"},
        {"name": "PGPASSWORD", "value": PASSWORD},
        {"name": "DATABASE_URI", "value": f"postgresql://app:{PASSWORD}@orders-rw/app"},
        {"name": "PGOP_S3_CREDENTIALS_SECRET", "value": "s3-creds"},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}},
    ]}]},
}
CLUSTER = {
    "apiVersion": "pgop.io/v1", "kind": "PgCluster",
    "metadata": {"name": "orders", "namespace": "shop"},
    "spec": {"instances": 2, "backup": {"s3": {"bucket": "pg", "credentialsSecret": "s3-creds",
                                               "endpoint": "http://10.0.0.1:7070"}},
             "parameters": {"primary_conninfo": f"host=x user=rep password={PASSWORD}"}},
    "status": {"conditions": [{"type": "Ready", "message": f"cannot connect: password={PASSWORD} refused"}]},
}


def test_a_secret_keeps_its_keys_and_loses_every_value():
    redacted = redact_object(SECRET)
    assert redacted["data"] == {"username": REDACTED, "password": REDACTED, "uri": REDACTED}
    assert redacted["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] == REDACTED
    assert "managedFields" not in redacted["metadata"]
    assert redacted["metadata"]["name"] == "orders-app" and redacted["type"] == "kubernetes.io/basic-auth"
    assert SECRET["data"]["username"] == b64("app")  # the original is left alone


def test_env_values_named_like_secrets_are_redacted_references_are_kept():
    env = redact_object(POD)["spec"]["containers"][0]["env"]
    values = {e["name"]: e.get("value") for e in env}
    assert values["PGPASSWORD"] == REDACTED and values["DATABASE_URI"] == REDACTED
    assert values["PGOP_CLUSTER"] == "orders" and values["PGOP_S3_CREDENTIALS_SECRET"] == "s3-creds"
    assert env[4]["valueFrom"] == {"secretKeyRef": {"name": "s3-creds", "key": "secret"}}


def test_passwords_inside_other_fields_are_redacted():
    redacted = redact_object(CLUSTER)
    assert redacted["spec"]["parameters"]["primary_conninfo"] == REDACTED  # named like a secret: all of it
    assert redacted["status"]["conditions"][0]["message"] == f"cannot connect: password={REDACTED} refused"
    assert redacted["spec"]["backup"]["s3"] == CLUSTER["spec"]["backup"]["s3"]


def test_log_lines_lose_their_passwords():
    lines = {
        f"connecting to postgresql://app:{PASSWORD}@orders-rw:5432/app?sslmode=require":
            f"connecting to postgresql://app:{REDACTED}@orders-rw:5432/app?sslmode=require",
        f"host=orders-0 user=replication password={PASSWORD} application_name=orders-1":
            f"host=orders-0 user=replication password={REDACTED} application_name=orders-1",
        f"STATEMENT:  ALTER ROLE app PASSWORD '{PASSWORD}''x'": f"STATEMENT:  ALTER ROLE app PASSWORD '{REDACTED}'",
        f'{{"username": "app", "password": "{PASSWORD}"}}': f'{{"username": "app", "password": "{REDACTED}"}}',
        f"password='{PASSWORD} with space' host=x": f"password='{REDACTED}' host=x",
        "GET https://s3.local:9000/bucket/key 200": "GET https://s3.local:9000/bucket/key 200",
    }
    for line, expected in lines.items():
        assert redact_text(line) == expected


def test_only_events_about_the_bundle_s_objects():
    events = [{"involvedObject": {"name": "orders-0"}, "message": "b", "lastTimestamp": "2026-11-22T12:00:02Z"},
              {"involvedObject": {"name": "other-0"}, "message": "x", "lastTimestamp": "2026-11-22T12:00:00Z"},
              {"involvedObject": {"name": "orders"}, "message": "a", "lastTimestamp": "2026-11-22T12:00:01Z"}]
    assert [e["message"] for e in related_events(events, {"orders", "orders-0"})] == ["a", "b"]


def test_the_bundle_holds_no_password_anywhere():
    objects = {"pgcluster": [CLUSTER], "pods": [POD], "secrets": [SECRET],
               "events": [{"kind": "Event", "involvedObject": {"name": "orders-0"},
                           "message": f"bootstrap failed: password={PASSWORD}"}]}
    logs = {"orders-0/postgres": f"2026-11-22T12:00:00Z LOG: conninfo postgresql://rep:{PASSWORD}@orders-1/x\n",
            "orders-0/postgres.previous": "nothing\n"}
    files = bundle_files("orders", objects, logs, "summary", ["logs of orders-1/postgres: Forbidden"])
    assert set(files) == {"summary.txt", "pgcluster.yaml", "pods.yaml", "secrets.yaml", "events.yaml",
                          "logs/orders-0/postgres.log", "logs/orders-0/postgres.previous.log", "problems.txt"}
    out = io.BytesIO()
    write_tar(files, "orders-report-20261122T120000Z", out, datetime(2026, 11, 22, 12, tzinfo=UTC))
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:gz") as tar:
        contents = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}
    assert "orders-report-20261122T120000Z/secrets.yaml" in contents
    for name, text in contents.items():
        assert PASSWORD not in text, name
        assert b64(PASSWORD) not in text, name
    [secret] = yaml.safe_load_all(contents["orders-report-20261122T120000Z/secrets.yaml"])
    assert set(secret["data"]) == {"username", "password", "uri"}
