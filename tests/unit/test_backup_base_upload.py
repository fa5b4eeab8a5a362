"""The multipart sink of a base backup, against a fake S3 client: parts of the set size in order,
the last one shorter, an abort when something fails."""
from __future__ import annotations

import threading
import time

import pytest

from pgop.backup import basebackup
from pgop.backup.basebackup import MultipartWriter


class FakeClient:
    def __init__(self, fail_part: int | None = None):
        self.parts: dict[int, bytes] = {}
        self.completed = None
        self.aborted = False
        self.fail_part = fail_part
        self.lock = threading.Lock()

    def create_multipart_upload(self, **kw):
        return {"UploadId": "u1"}

    def upload_part(self, *, PartNumber, Body, **kw):
        if PartNumber == self.fail_part:
            raise RuntimeError("S3 said no")
        with self.lock:
            self.parts[PartNumber] = Body
        return {"ETag": f"e{PartNumber}"}

    def complete_multipart_upload(self, *, MultipartUpload, **kw):
        self.completed = MultipartUpload["Parts"]

    def abort_multipart_upload(self, **kw):
        self.aborted = True


class FakeStorage:
    bucket = "b"

    def __init__(self, client):
        self.client = client


def test_parts_are_cut_at_the_part_size_and_completed_in_order():
    client = FakeClient()
    writer = MultipartWriter(FakeStorage(client), "k", part_size=5 << 20)
    data = bytes(range(256)) * (50 << 10)  # 12.5 MiB
    for start in range(0, len(data), 777_777):
        writer.write(data[start:start + 777_777])
    writer.complete()
    assert [p["PartNumber"] for p in client.completed] == [1, 2, 3]
    assert b"".join(client.parts[n] for n in (1, 2, 3)) == data
    assert len(client.parts[1]) == len(client.parts[2]) == 5 << 20
    assert writer.size == len(data) and not client.aborted


def test_an_empty_stream_is_one_empty_part():
    client = FakeClient()
    writer = MultipartWriter(FakeStorage(client), "k", part_size=5 << 20)
    writer.complete()
    assert client.completed == [{"PartNumber": 1, "ETag": "e1"}]


def test_a_failed_part_fails_the_upload_and_abort_cleans_up():
    client = FakeClient(fail_part=1)
    writer = MultipartWriter(FakeStorage(client), "k", part_size=5 << 20)
    with pytest.raises(RuntimeError, match="S3 said no"):
        writer.write(b"x" * (5 << 20))
        writer.write(b"x" * (5 << 20))
        writer.complete()
    writer.abort()
    assert client.aborted and client.completed is None


def test_parts_below_the_s3_minimum_are_refused():
    with pytest.raises(ValueError):
        MultipartWriter(FakeStorage(FakeClient()), "k", part_size=1 << 20)


def test_parts_grow_so_that_10000_hold_more_than_the_32_mib_parts_did():
    sizes = [basebackup.part_size_for(n) for n in range(1, 10_001)]
    assert sizes[0] == sizes[1999] == 8 << 20 and sizes[2000] == 16 << 20
    assert sizes[-1] == 128 << 20  # the largest part, for backups beyond 240 GiB compressed
    assert sum(sizes) > 10_000 * (32 << 20)  # 484 GiB, more than 312 GiB at 32 MiB parts


def test_the_writer_cuts_growing_parts(monkeypatch):
    monkeypatch.setattr(basebackup, "PARTS_PER_SIZE", 2)
    client = FakeClient()
    writer = MultipartWriter(FakeStorage(client), "k", part_size=5 << 20)
    data = bytes(range(256)) * (140 << 10)  # 35 MiB: parts of 5, 5, 10, 10 and the last 5
    view = memoryview(data)
    for start in range(0, len(data), 3 << 20):
        writer.write(view[start:start + (3 << 20)])
    writer.complete()
    assert [len(client.parts[n]) >> 20 for n in sorted(client.parts)] == [5, 5, 10, 10, 5]
    assert b"".join(client.parts[n] for n in sorted(client.parts)) == data


def test_memory_holds_the_part_being_filled_and_one_upload():
    """UPLOADS_IN_FLIGHT (1): while S3 takes a part, the next one fills; a third waits."""
    active, most = 0, 0
    lock = threading.Lock()

    class SlowClient(FakeClient):
        def upload_part(self, **kw):
            nonlocal active, most
            with lock:
                active += 1
                most = max(most, active)
            time.sleep(0.05)
            with lock:
                active -= 1
            return super().upload_part(**kw)

    client = SlowClient()
    writer = MultipartWriter(FakeStorage(client), "k", part_size=5 << 20)
    for _ in range(5):
        writer.write(b"y" * (5 << 20))
    writer.complete()
    assert most == basebackup.UPLOADS_IN_FLIGHT == 1 and len(client.parts) == 5
