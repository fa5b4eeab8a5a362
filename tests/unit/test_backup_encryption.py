"""Encryption at rest (pgop.backup.encryption): the format, its failures, and how the key reaches
the pods (a file of its own volume, never an environment variable)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from pgop.backup import encryption as enc
from pgop.backup import wal
from pgop.backup.catalog import Backup, CatalogError
from pgop.backup.pod import build_backup_pod
from pgop.backup.s3 import S3Settings
from pgop.cluster.plan import resolve_recovery
from pgop.kernel.model import Cluster, Instance, S3Spec
from pgop.kernel.podenv import ArchiveEnv
from pgop.specs.instance import build_instance
from pgop.specs.pods import build_bootstrap_pod, build_postgres_pod, pod_inputs_hash
from tests.unit.world import cluster_body, make_cluster

REPO = Path(__file__).resolve().parents[2]
MATERIAL = b"3q2+7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
KEY = enc.Key.from_bytes(MATERIAL)
OTHER = enc.Key.from_bytes(b"another key of at least thirty-two bytes, honestly")
RING = enc.Keyring((KEY,))


def seal(data: bytes, key: enc.Key = KEY) -> bytes:
    out = io.BytesIO()
    writer = enc.EncryptingWriter(out, key)
    for start in range(0, len(data), 10_000):  # writes of any size
        writer.write(data[start:start + 10_000])
    writer.finish()
    return out.getvalue()


def unseal(sealed: bytes, keyring: enc.Keyring | None = RING, **kwargs) -> bytes:
    return enc.open_reader(io.BytesIO(sealed), keyring, "obj", **kwargs).read()


@pytest.mark.parametrize("size", [0, 1, enc.CHUNK - 1, enc.CHUNK, enc.CHUNK + 1, 3 * enc.CHUNK + 5])
def test_round_trip_of_every_size_and_the_size_it_takes(size):
    data = os.urandom(size)
    sealed = seal(data)
    assert len(sealed) == enc.encrypted_size(size)
    assert unseal(sealed) == data
    reader = enc.open_reader(io.BytesIO(sealed), RING)
    assert b"".join(iter(lambda: reader.read(777), b"")) == data  # small reads too


def test_the_ciphertext_hides_the_plaintext_and_differs_every_time():
    data = b"INSERT INTO secrets VALUES ('hunter2');" * 2000
    one, two = seal(data), seal(data)
    assert b"hunter2" not in one and one != two  # a fresh salt, so a fresh key per object
    assert one[:8] == enc.MAGIC and one[8:16].hex() == KEY.key_id


def test_a_wrong_key_fails_naming_both_key_ids_and_no_key():
    sealed = seal(b"data" * 1000)
    with pytest.raises(enc.EncryptionError) as error:
        unseal(sealed, enc.Keyring((OTHER,)))
    text = str(error.value)
    assert KEY.key_id in text and OTHER.key_id in text
    assert MATERIAL.strip().decode() not in text and "another key" not in text
    with pytest.raises(enc.EncryptionError, match="no encryption key is configured"):
        unseal(sealed, None)


def test_a_key_id_that_matches_with_different_material_still_fails_authentication():
    forged = enc.Key(b"x" * 40, KEY.key_id)  # claims the id, has not the key
    with pytest.raises(enc.EncryptionError, match="does not authenticate at chunk 0"):
        unseal(seal(b"data" * 1000), enc.Keyring((forged,)))


def test_every_truncation_fails_and_nothing_unauthenticated_comes_out():
    data = os.urandom(2 * enc.CHUNK + 100)
    sealed = seal(data)
    chunk = enc.CHUNK + enc.TAG
    cuts = {3, enc.HEADER_SIZE - 1, enc.HEADER_SIZE, enc.HEADER_SIZE + 10, enc.HEADER_SIZE + chunk,
            enc.HEADER_SIZE + 2 * chunk, len(sealed) - 1}
    for cut in sorted(cuts):
        if cut < len(enc.MAGIC):  # a few bytes: not recognisable as encrypted, refused where it must be
            with pytest.raises(enc.EncryptionError):
                unseal(sealed[:cut], require=True)
            continue
        got = bytearray()
        with pytest.raises(enc.EncryptionError, match="truncated|changed or cut short"):
            reader = enc.open_reader(io.BytesIO(sealed[:cut]), RING)
            while part := reader.read(1000):
                got += part
        assert data.startswith(bytes(got)) and len(got) <= cut  # only whole, authenticated chunks


def test_a_changed_byte_anywhere_fails():
    sealed = seal(os.urandom(2 * enc.CHUNK + 100))
    for position in (9, 20, enc.HEADER_SIZE, enc.HEADER_SIZE + enc.CHUNK + 3, len(sealed) - 1):
        broken = bytearray(sealed)
        broken[position] ^= 0x01
        with pytest.raises(enc.EncryptionError):
            unseal(bytes(broken))


def test_chunks_swapped_or_dropped_fail():
    sealed = seal(os.urandom(3 * enc.CHUNK))
    h, c = enc.HEADER_SIZE, enc.CHUNK + enc.TAG
    chunks = [sealed[h + i * c:h + (i + 1) * c] for i in range(3)]  # the third full one is the last
    assert h + 3 * c == len(sealed)
    with pytest.raises(enc.EncryptionError, match="chunk 0"):
        unseal(sealed[:h] + chunks[1] + chunks[0] + chunks[2])
    with pytest.raises(enc.EncryptionError, match="chunk 1"):
        unseal(sealed[:h] + chunks[0] + chunks[2])
    with pytest.raises(enc.EncryptionError, match="chunk 1.*cut short"):
        unseal(sealed[:h] + chunks[0] + chunks[1])  # the last chunk dropped at a chunk boundary


def test_a_header_of_another_object_does_not_open_this_one():
    one, two = seal(b"a" * 5000), seal(b"b" * 5000)
    with pytest.raises(enc.EncryptionError):
        unseal(two[:enc.HEADER_SIZE] + one[enc.HEADER_SIZE:])


def test_an_unencrypted_object_passes_through_unless_the_catalog_says_it_is_encrypted():
    plain = zstandard.ZstdCompressor().compress(b"old wal" * 1000)
    assert unseal(plain, None) == plain and unseal(plain, RING) == plain
    assert unseal(b"", RING) == b""
    with pytest.raises(enc.EncryptionError, match="should be encrypted"):
        unseal(plain, RING, require=True)


def test_keys_shorter_than_32_bytes_are_refused_and_whitespace_does_not_change_the_id(tmp_path):
    with pytest.raises(enc.EncryptionError, match="too short"):
        enc.Key.from_bytes(b"short\n")
    assert enc.Key.from_bytes(MATERIAL.strip()).key_id == KEY.key_id
    assert "3q2" not in repr(KEY) and KEY.key_id in repr(KEY)
    with pytest.raises(enc.EncryptionError, match="does not exist"):
        enc.Key.from_file(tmp_path / "nothing")


def test_the_wal_compressor_writes_through_the_encryption_and_the_checksum_stays_the_plain_ones():
    data = os.urandom(100_000) + b"\0" * 1_000_000
    spool = io.BytesIO()
    sealer = enc.EncryptingWriter(spool, KEY)
    done = wal.compress(io.BytesIO(data), sealer)  # type: ignore[arg-type]
    sealer.finish()
    out = io.BytesIO()
    back = wal.decompress(enc.open_reader(io.BytesIO(spool.getvalue()), RING), out)
    assert out.getvalue() == data and back.sha256 == done.sha256


def test_key_mismatch_is_decided_from_the_catalog_before_anything_is_downloaded():
    assert enc.key_mismatch("backup b", None, None) is None  # not encrypted
    assert enc.key_mismatch("backup b", KEY.key_id, RING) is None
    assert KEY.key_id in enc.key_mismatch("backup b", KEY.key_id, enc.Keyring((OTHER,)))
    assert "keySecret" in enc.key_mismatch("backup b", KEY.key_id, None)


def test_the_catalog_records_the_key_id_and_reads_documents_without_it():
    backup = Backup(cluster="orders", backup_name="b1", encryption={"algorithm": enc.ALGORITHM, "keyId": KEY.key_id})
    document = json.loads(backup.to_json())
    assert document["encryption"] == {"algorithm": enc.ALGORITHM, "keyId": KEY.key_id}
    assert Backup.from_json(backup.to_json()).key_id == KEY.key_id
    plain = Backup(cluster="orders", backup_name="b0")
    assert "encryption" not in json.loads(plain.to_json()) and Backup.from_json(plain.to_json()).key_id is None
    document["encryption"] = {"algorithm": enc.ALGORITHM}
    with pytest.raises(CatalogError, match="keyId"):
        Backup.from_dict(document)


def test_the_pods_environment_names_the_key_file_and_the_settings_read_it(tmp_path):
    (tmp_path / "key").write_bytes(MATERIAL)
    env = {e["name"]: e["value"] for e in ArchiveEnv(bucket="b", encryption_key_file=str(tmp_path / "key"),
                                                     credentials_dir=None).to_env()}
    assert env["PGOP_S3_ENCRYPTION_KEY_FILE"] == str(tmp_path / "key")
    assert MATERIAL.strip().decode() not in json.dumps(env)
    settings = S3Settings.from_env(env)
    assert settings.keyring is not None and settings.keyring.ids() == [KEY.key_id]
    assert "3q2" not in repr(settings)
    assert S3Settings.from_env({"PGOP_S3_BUCKET": "b"}).keyring is None  # off by default
    (tmp_path / "key").unlink()
    with pytest.raises(enc.EncryptionError, match="does not exist"):
        S3Settings.from_env(env)


S3 = {"bucket": "b", "credentialsSecret": "creds", "encryption": {"keySecret": {"name": "backup-key", "key": "k1"}}}


def _instance(cluster, ordinal=0, role="primary", mode="initdb", recovery=None):
    body = build_instance(cluster, ordinal, role, mode, recovery) if recovery else build_instance(cluster, ordinal,
                                                                                                role, mode)
    return Instance.from_object(body | {"metadata": {**body["metadata"], "uid": "u"}, "status": {}})


def _key_mount(pod, secret="backup-key", key="k1"):
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "s3-encryption")
    assert volume["secret"]["secretName"] == secret and volume["secret"]["items"] == [{"key": key, "path": "key"}]
    container = pod["spec"]["containers"][0]
    assert {"name": "s3-encryption", "mountPath": "/etc/pgop/s3-encryption", "readOnly": True} \
        in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["PGOP_S3_ENCRYPTION_KEY_FILE"]["value"] == "/etc/pgop/s3-encryption/key"
    assert secret not in json.dumps(container["env"])  # never a secretKeyRef


def test_the_spec_round_trips_and_every_pod_of_the_archive_mounts_only_the_key_as_a_file():
    s3 = S3Spec.from_dict(S3)
    assert s3 is not None and S3Spec.from_dict(s3.to_dict()) == s3 and s3.for_pods() == s3
    assert S3Spec.from_dict({**S3, "encryption": {"keySecret": {"name": "x"}}}).encryption_key == "key"
    cluster = make_cluster(backup={"s3": S3})
    for instance in (_instance(cluster), _instance(cluster, 1, "replica", "basebackup")):
        for pod in (build_postgres_pod(instance), build_bootstrap_pod(instance),
                    build_backup_pod("b1", "u2", instance, "10.0.0.1")):
            _key_mount(pod)
    plain = make_cluster(backup={"s3": {"bucket": "b", "credentialsSecret": "creds"}})
    text = json.dumps([build_postgres_pod(_instance(plain)), build_backup_pod("b1", "u2", _instance(plain), "x")])
    assert "s3-encryption" not in text and "PGOP_S3_ENCRYPTION" not in text  # off by default
    # turning it on replaces the pods (one at a time, by the rollout), like any change of spec.backup.s3
    assert pod_inputs_hash(_instance(cluster)) != pod_inputs_hash(_instance(plain))


def test_a_restore_reads_with_the_sources_key_and_then_writes_with_its_own():
    source = cluster_body(name="orders", backup={"s3": S3})
    own = {**S3, "path": "copy", "encryption": {"keySecret": {"name": "copy-key"}}}
    copy = make_cluster(backup={"s3": own}, bootstrap={"recovery": {"source": "orders"}})
    recovery = resolve_recovery(copy.spec.bootstrap.recovery, source)
    assert recovery.s3 is not None and recovery.s3.encryption_key_secret == "backup-key"
    restoring = Cluster.from_object(cluster_body(name="copy", backup={"s3": own},
                                                 bootstrap={"recovery": recovery.to_dict()}))
    instance = _instance(restoring, 0, "primary", "recovery", recovery)
    _key_mount(build_bootstrap_pod(instance))
    _key_mount(build_postgres_pod(instance), "copy-key", "key")


def test_the_documented_command_line_decrypts_and_refuses(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_bytes(MATERIAL)
    data = os.urandom(200_000)
    sealed = seal(data)
    run = [sys.executable, "-m", "pgop.backup.encryption"]
    done = subprocess.run([*run, "decrypt", str(key_file)], input=sealed, capture_output=True, cwd=REPO)
    assert done.returncode == 0 and done.stdout == data
    again = subprocess.run([*run, "encrypt", str(key_file)], input=data, capture_output=True, cwd=REPO)
    assert unseal(again.stdout) == data
    assert subprocess.run([*run, "key-id", str(key_file)], capture_output=True, cwd=REPO,
                          text=True).stdout.strip() == KEY.key_id
    broken = bytearray(sealed)
    broken[-5] ^= 1
    failed = subprocess.run([*run, "decrypt", str(key_file)], input=bytes(broken), capture_output=True, cwd=REPO)
    assert failed.returncode == 1 and b"does not authenticate" in failed.stderr
    assert MATERIAL.strip() not in failed.stderr


def test_pgop_backups_shows_the_key_id_of_encrypted_backups_only_when_there_are_some():
    from rich.console import Console

    from pgop.cli_output import backups_document
    from pgop.cli_views import backups_table
    sealed = Backup(cluster="orders", backup_name="b2", encryption={"algorithm": enc.ALGORITHM, "keyId": KEY.key_id})
    plain = Backup(cluster="orders", backup_name="b1")

    def text(backups):
        console = Console(width=300, record=True)
        console.print(backups_table(backups, "t"))
        return console.export_text()
    assert "key id" not in text([plain])
    shown = text([plain, sealed])
    assert "key id" in shown and KEY.key_id in shown and "plain" in shown
    items = backups_document("orders", "s3://b/x", [plain, sealed], None, None)["backups"]
    assert "encryptionKeyId" not in items[0] and items[1]["encryptionKeyId"] == KEY.key_id
