"""The bucket flusher's rules, in-process (chunkfs/store/_bucket_flush.py); against a real SeaweedFS: test_object_store.py.

The rule that keeps a restore possible: the object of a removed pack is
deleted only once its grace period is over *and* an index generation taken
after its removal is in the bucket, so the latest generation never names a
deleted object.  A stand-in backend and bucket record what the flusher asks
of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from chunkfs.errors import ObjectStoreError
from chunkfs.store import _bucket_flush
from chunkfs.store._bucket import pack_name
from chunkfs.store._bucket_flush import BucketFlusher, retrying_for


@dataclass
class Times:
    upload_interval: float = 3600.0
    close_wait: float = 1.0


@dataclass
class Location:
    def describe(self) -> str:
        return "the stand-in bucket"


@dataclass
class StandInBucket:
    deleted: list[str] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)

    def delete(self, key: str) -> None:
        self.deleted.append(key)

    def idle(self) -> float:
        return 0.0


class StandInBackend:
    """What BucketFlusher needs of a backend (UploadingBackend), with nothing waiting to upload."""

    def __init__(self, tmp_path):
        self.readonly = False
        self.store_dir = str(tmp_path)
        self.state_dir = str(tmp_path / "bucket")
        (tmp_path / "bucket").mkdir()
        self.bucket = StandInBucket()
        self.location = Location()
        self.options = Times()
        self.closed = False
        self.failures: list[str] = []

    def note_failure(self, message: str) -> None:
        self.failures.append(message)

    def local_packs(self) -> tuple[set[int], set[int]]:
        return set(), set()

    def waiting_uploads(self) -> bool:
        return False

    def checkpoint(self, pack: int, last: tuple[int, int] | None) -> tuple[int, int] | None:
        return None

    def wait_uploaded(self, packs: set[int] | None) -> None:
        return None

    def stats(self) -> dict:
        return {"objects": 0}


@pytest.fixture
def flusher(tmp_path, monkeypatch):
    backend = StandInBackend(tmp_path)
    flusher = BucketFlusher(backend)
    flusher.copy_index = lambda fd: None

    def new_generation(bucket, index_path, store_dir):
        bucket.generations.append(f"g{len(bucket.generations) + 1}")
        return bucket.generations[-1]

    monkeypatch.setattr(_bucket_flush.meta, "copy_if_changed", lambda copy, path, state_dir: True)
    monkeypatch.setattr(_bucket_flush.meta, "upload_index", new_generation)
    return flusher


def test_a_removed_packs_object_waits_for_a_newer_index_generation(flusher, monkeypatch):
    monkeypatch.setattr(_bucket_flush, "REMOVED_PACK_GRACE", 0.0)
    bucket = flusher.backend.bucket
    flusher.doom(7)
    time.sleep(0.01)  # the flush below starts strictly after the removal
    flusher.delete_doomed()
    assert bucket.deleted == []  # the latest generation in the bucket may still name pack 7
    assert flusher.flush(wait=True) == {"generation": "g1"}
    assert bucket.deleted == [pack_name(7)]  # g1 was taken after the removal
    assert flusher.doomed_count() == 0


def test_a_pack_removed_during_a_flush_waits_for_the_next_one(flusher, monkeypatch):
    monkeypatch.setattr(_bucket_flush, "REMOVED_PACK_GRACE", 0.0)
    bucket = flusher.backend.bucket
    real_upload = _bucket_flush.meta.upload_index

    def upload_while_a_pack_goes(bucket_, index_path, store_dir):
        flusher.doom(9)  # removed after this generation's index copy was taken
        return real_upload(bucket_, index_path, store_dir)

    monkeypatch.setattr(_bucket_flush.meta, "upload_index", upload_while_a_pack_goes)
    flusher.flush(wait=True)
    assert pack_name(9) not in bucket.deleted
    monkeypatch.setattr(_bucket_flush.meta, "upload_index", real_upload)
    time.sleep(0.01)  # the next flush starts strictly after the removal
    flusher.flush(wait=True)
    assert bucket.deleted == [pack_name(9)]


def test_the_grace_period_holds_a_removed_packs_object_even_after_a_newer_generation(flusher):
    flusher.doom(3)
    flusher.flush(wait=True)
    assert flusher.backend.bucket.deleted == []  # readers already on their way may still fetch it
    flusher.delete_doomed(everything=True)  # the final flush at close takes the rest
    assert flusher.backend.bucket.deleted == [pack_name(3)]


def test_a_flush_with_nothing_attached_or_after_close_uploads_nothing(flusher):
    flusher.copy_index = None
    assert flusher.flush(wait=True) == {}
    flusher.copy_index = lambda fd: None
    flusher.backend.closed = True
    assert flusher.flush(wait=True) == {}
    assert flusher.backend.bucket.generations == []


def test_retrying_goes_on_while_the_object_store_fails_then_gives_up(monkeypatch):
    monkeypatch.setattr(_bucket_flush, "RETRY_BACKOFF", (0.0,))
    failures: list[str] = []
    answers = iter([ObjectStoreError("503 SlowDown"), ObjectStoreError("timeout"), "done"])

    def work():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retrying_for(5.0, work, failures.append) == "done"
    assert failures == ["503 SlowDown", "timeout"]

    def always_down():
        raise ObjectStoreError("connection refused")

    with pytest.raises(ObjectStoreError, match="connection refused"):
        retrying_for(0.0, always_down, failures.append)
