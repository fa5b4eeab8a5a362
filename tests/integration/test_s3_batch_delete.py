"""S3Storage.delete_many on the real S3 server (versitygw): retention removes a long archive's
objects with one DeleteObjects request per 1000 keys, not one request each."""
from __future__ import annotations

import concurrent.futures

import pytest

from pgop.backup.s3 import DELETE_BATCH, Credentials, S3Storage
from tests.integration.test_backup_wal import _keys, s3, storage  # noqa: F401  (fixtures)


def test_delete_many_removes_every_key_in_batches_and_nothing_else(s3, storage):  # noqa: F811
    doomed = [f"arch/wal/{i:024X}.zst" for i in range(DELETE_BATCH + 150)]
    kept = ["arch/wal/00000002.history.zst", "arch/base/b1/backup.json"]

    def put(key: str) -> None:
        s3["client"].put_object(Bucket=s3["bucket"], Key=key, Body=b"x")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, doomed + kept))
    assert len(_keys(s3, "arch/")) == len(doomed) + len(kept)

    # A key already gone counts as deleted, as with DeleteObject.
    requests = storage.delete_many(doomed + ["arch/wal/never-there.zst"])

    assert requests == 2
    assert _keys(s3, "arch/") == set(kept)
    assert storage.delete_many([]) == 0


def test_delete_many_says_what_s3_refused_without_naming_the_keys(s3):  # noqa: F811
    stranger = S3Storage(s3["bucket"], endpoint=s3["endpoint"], credentials=Credentials("nobody", "wrong-secret"),
                         max_attempts=1)
    s3["client"].put_object(Bucket=s3["bucket"], Key="refused/secret-name.zst", Body=b"x")
    with pytest.raises(Exception) as refused:
        stranger.delete_many(["refused/secret-name.zst"])
    assert "secret-name" not in str(refused.value)
    assert _keys(s3, "refused/") == {"refused/secret-name.zst"}
