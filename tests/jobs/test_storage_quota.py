"""Stored files per key in the job database (``sql/quota.py``), on SQLite and PostgreSQL: the quota is checked and
charged in one step, per key, with expiry; it holds when several store instances (API replicas) charge the same key
at the same moment; a signed upload is charged once; one-time tokens are used once."""

from __future__ import annotations

import threading

import pytest

from photomaker_server.jobs.sql import SQLJobStore
from photomaker_server.limits import QuotaExceeded, StorageQuota, StorageUsage, UploadAlreadyCharged

QUOTA = StorageQuota(max_bytes=1000, max_files=3)
DAY = 86_400.0


def usage(store: SQLJobStore, owner: str) -> tuple[int, int]:
    found = store.storage_usage(owner)
    return (found[0].files, found[0].bytes) if found else (0, 0)


def test_files_are_charged_until_the_quota_then_refused_with_nothing_recorded(store):
    store.charge_files("alice", [400, 300], QUOTA, DAY)
    with pytest.raises(QuotaExceeded) as bytes_over:
        store.charge_files("alice", [301], QUOTA, DAY)
    assert bytes_over.value.what == "bytes" and bytes_over.value.usage == StorageUsage("alice", 2, 700)
    assert "1000" in bytes_over.value.message and "PHOTOMAKER_STORAGE_QUOTA_BYTES" in bytes_over.value.message
    store.charge_files("alice", [300], QUOTA, DAY)  # exactly full
    with pytest.raises(QuotaExceeded) as files_over:
        store.charge_files("alice", [0], QUOTA, DAY)
    assert files_over.value.what == "files"
    assert usage(store, "alice") == (3, 1000)
    # Another key is not affected by alice's usage; a refused batch records none of its files.
    store.charge_files("bob", [999], QUOTA, DAY)
    with pytest.raises(QuotaExceeded):
        store.charge_files("bob", [1, 1, 1], QUOTA, DAY)
    assert usage(store, "bob") == (1, 999)
    assert [u.owner for u in store.storage_usage()] == ["alice", "bob"]  # most bytes first


def test_expired_files_stop_counting_and_are_pruned(store, clock):
    store.charge_files("alice", [1000], QUOTA, ttl_s=60)
    with pytest.raises(QuotaExceeded):
        store.charge_files("alice", [1], QUOTA, DAY)
    clock.advance(61)
    assert usage(store, "alice") == (0, 0)
    store.charge_files("alice", [1000], QUOTA, DAY)
    assert store.expire_stored_files() == 1 and usage(store, "alice") == (1, 1000)


def test_dropped_files_no_longer_count(store):
    ids = store.charge_files("alice", [500, 500], QUOTA, DAY)
    store.settle_file(ids[0], "tok/a.png")
    store.drop_files(ids)
    assert usage(store, "alice") == (0, 0)


def test_a_signed_upload_is_a_file_at_once_and_charged_its_bytes_once(store):
    (file_id,) = store.charge_files("alice", [0], QUOTA, 3600, pending=True)
    store.settle_file(file_id, "tok/up.bin")
    assert usage(store, "alice") == (1, 0)
    quota_for = {"alice": QUOTA}.__getitem__
    with pytest.raises(QuotaExceeded):
        store.charge_upload("tok/up.bin", 1001, quota_for, DAY)
    assert usage(store, "alice") == (1, 0), "a refused PUT leaves the URL pending"
    assert store.charge_upload("tok/up.bin", 800, quota_for, DAY) == file_id
    with pytest.raises(UploadAlreadyCharged):
        store.charge_upload("tok/up.bin", 10, quota_for, DAY)
    assert usage(store, "alice") == (1, 800)
    store.uncharge_upload(file_id, 3600)  # the bytes could not be stored after all
    assert usage(store, "alice") == (1, 0)
    assert store.charge_upload("never/issued.bin", 10, quota_for, DAY) is None


def test_one_time_tokens_are_used_once(store, clock):
    assert store.use_token_once("n1", clock() + 60) is True
    assert store.use_token_once("n1", clock() + 60) is False
    assert store.use_token_once("n2", clock() + 60) is True


def test_replicas_charging_one_key_at_once_never_pass_its_quota(db_path):
    """Eight store instances (as eight API replicas would hold) charge 100-byte files for one key concurrently:
    exactly as many as the quota allows are admitted."""
    quota = StorageQuota(max_bytes=2000, max_files=None)
    stores = [SQLJobStore(db_path) for _ in range(8)]
    admitted, refused = [], []
    lock = threading.Lock()

    def replica(store: SQLJobStore) -> None:
        for _ in range(5):
            try:
                store.charge_files("alice", [100], quota, DAY)
                outcome = admitted
            except QuotaExceeded:
                outcome = refused
            with lock:
                outcome.append(1)

    threads = [threading.Thread(target=replica, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert len(admitted) == 20 and len(refused) == 20
        assert usage(stores[0], "alice") == (20, 2000)
    finally:
        for store in stores:
            store.close()
