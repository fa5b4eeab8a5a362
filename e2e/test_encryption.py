"""Encryption at rest end to end (docs/encryption.md): a cluster with spec.backup.s3.encryption
archives and backs up only ciphertext, `pgop restore` brings it back into a new cluster with the
source's key, a restore given the wrong key is refused with EncryptionKeyMismatch, and the key is in
no environment, log, event or status."""
from __future__ import annotations

import base64
import os
import uuid

from e2e.test_backup import BUCKET, condition, keys, pgop, rows, s3, s3_secret, switch_and_wait_archived  # noqa: F401
from e2e.test_pgcluster import connect, eventually, manifest, wait_ready
from pgop.backup import encryption

MARKER = "tell-nobody-4711"


def _key_secret(kubectl, ns, name):
    value = base64.b64encode(os.urandom(32)).decode()
    kubectl("-n", ns, "create", "secret", "generic", name, f"--from-literal=key={value}")
    return value


def test_an_encrypted_cluster_backs_up_and_restores_into_a_new_cluster(kubectl, namespace, operator, s3,  # noqa: F811
                                                                        local_env):
    ns, name, prefix = namespace, "vault", f"e2e-{uuid.uuid4().hex[:8]}"
    s3_secret(kubectl, ns, local_env)
    key = _key_secret(kubectl, ns, "vault-key")
    wrong = _key_secret(kubectl, ns, "wrong-key")
    key_id = encryption.Key.from_bytes(key.encode()).key_id
    endpoint = local_env["PGOP_S3_ENDPOINT_IN_CLUSTER"]
    kubectl("apply", "-f", "-", input=manifest(name, ns, instances=1, sync=0, extra=f"""  backup:
    s3: {{bucket: {BUCKET}, path: {prefix}, endpoint: "{endpoint}", credentialsSecret: s3-creds,
          encryption: {{keySecret: {{name: vault-key}}}}}}
"""))
    wait_ready(kubectl, ns, name, 1)
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute("create table orders (id int primary key, note text)")
        conn.execute(f"insert into orders select g, '{MARKER}' from generate_series(1, 100) g")
    pgop(local_env, "backup", name, "-n", ns, "--name", "vault-first", "--wait")
    with connect(kubectl, ns, f"{name}-rw", name) as conn:
        conn.execute(f"insert into orders select g, '{MARKER}' from generate_series(101, 250) g")
    switch_and_wait_archived(kubectl, ns, f"{name}-0")

    # S3 holds ciphertext only; the catalog names the key by its id
    root = f"{prefix}/{ns}/{name}"
    tar = s3.get_object(Bucket=BUCKET, Key=f"{root}/base/vault-first/base.tar.zst")["Body"].read()
    assert tar[:8] == encryption.MAGIC and MARKER.encode() not in tar
    segments = [k for k in keys(s3, f"{root}/wal/") if not k.endswith(".history.zst")]
    assert segments
    for segment in segments:
        head = s3.get_object(Bucket=BUCKET, Key=segment, Range="bytes=0-15")["Body"].read()
        assert head[:8] == encryption.MAGIC and head[8:16].hex() == key_id, segment
    catalog = s3.get_object(Bucket=BUCKET, Key=f"{root}/base/vault-first/backup.json")["Body"].read().decode()
    assert f'"keyId": "{key_id}"' in catalog and key not in catalog

    # restored into a new cluster with the source's key (pgop restore copies spec.backup)
    pgop(local_env, "restore", name, "--to", "vault-copy", "-n", ns, "--timeout", "300")
    wait_ready(kubectl, ns, "vault-copy", 1)
    assert rows(kubectl, ns, "vault-copy") == (250, 250)

    # the wrong key: refused, saying which key the backup needs
    kubectl("apply", "-f", "-", input=manifest("vault-wrong", ns, instances=1, sync=0, extra=f"""  bootstrap:
    recovery:
      source: {name}
      s3: {{bucket: {BUCKET}, path: {prefix}, endpoint: "{endpoint}", credentialsSecret: s3-creds,
            encryption: {{keySecret: {{name: wrong-key}}}}}}
"""))
    degraded = eventually(lambda: (lambda c: c.get("reason") == "EncryptionKeyMismatch" and c)(
        condition(kubectl, ns, "vault-wrong", "Degraded")), "EncryptionKeyMismatch", timeout=300)
    assert key_id in degraded["message"], degraded

    # the key went nowhere it should not: pods get a file path, never the value
    for secret in (key, wrong):
        assert secret not in operator.log_text()
        for pod in (f"{name}-0", "vault-first-backup", "vault-copy-0"):
            assert secret not in kubectl("-n", ns, "logs", pod, "--all-containers").stdout
        assert secret not in kubectl("-n", ns, "get", "pods,events,pgbackups,pgclusters,pginstances",
                                     "-o", "yaml").stdout
    pod = kubectl.json("-n", ns, "get", "pod", f"{name}-0")
    env = {e["name"]: e.get("value") for c in pod["spec"]["containers"] for e in c.get("env") or []}
    assert env["PGOP_S3_ENCRYPTION_KEY_FILE"] == "/etc/pgop/s3-encryption/key"
    environ = kubectl("-n", ns, "exec", f"{name}-0", "-c", "postgres", "--", "cat", "/proc/1/environ").stdout
    assert key not in environ
