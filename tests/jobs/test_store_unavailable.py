"""A PostgreSQL outage: every store call raises StoreUnavailable (the API answers 503), and the same store object
works again once the server is back, without being reopened."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from pg_server import PgServer
from helpers import stored_request, stored_output
from photomaker_server.jobs.records import StoreUnavailable, WorkerInfo
from photomaker_server.jobs.sql import SQLJobStore

APP = "fal-ai/photomaker"

CALLS = {
    "submit": lambda s, j: s.submit("alice", APP, stored_request()),
    "get": lambda s, j: s.get(j.id),
    "queue_position": lambda s, j: s.queue_position(j),
    "has_work": lambda s, j: s.has_work(),
    "claim": lambda s, j: s.claim("w", 30),
    "renew_lease": lambda s, j: s.renew_lease(j.id, "w", 30),
    "complete": lambda s, j: s.complete(j.id, "w", stored_output()),
    "fail": lambda s, j: s.fail(j.id, "w", "x", "runner_server_error"),
    "release": lambda s, j: s.release(j.id, "w"),
    "append_log": lambda s, j: s.append_log(j.id, "hello"),
    "logs": lambda s, j: s.logs(j.id),
    "request_cancel": lambda s, j: s.request_cancel(j.id, None),
    "expire_deadlines": lambda s, j: s.expire_deadlines(),
    "requeue_expired_leases": lambda s, j: s.requeue_expired_leases(),
    "cleanup": lambda s, j: s.cleanup(3600),
    "counts": lambda s, j: s.counts(),
    "outcomes": lambda s, j: s.outcomes(),
    "due_webhooks": lambda s, j: s.due_webhooks(),
    "mark_webhook": lambda s, j: s.mark_webhook(1, ok=True),
    "webhook_deliveries": lambda s, j: s.webhook_deliveries(j.id),
    "heartbeat": lambda s, j: s.heartbeat(WorkerInfo(id="w", host="h", pid=1)),
    "remove_worker": lambda s, j: s.remove_worker("w"),
    "workers": lambda s, j: s.workers(),
    "shared_secret": lambda s, j: s.shared_secret("k", lambda: b"v"),
    "ping": lambda s, j: s.ping(),
    "ops_counts": lambda s, j: s.ops_counts(),
}


@pytest.fixture
def private_pg(pg_server):
    """A server the test may stop: the session's embedded one (restarted afterwards), or a server of its own
    when the session uses an operator's server."""
    if pg_server.handle is not None:
        yield pg_server
        pg_server.start()
        return
    server = PgServer.embedded()
    yield server
    server.cleanup()


def test_an_outage_raises_store_unavailable_and_the_store_recovers(private_pg):
    url = private_pg.create_database()
    store = SQLJobStore(url)
    try:
        job = store.submit("alice", APP, stored_request())
        private_pg.stop()
        for name, call in CALLS.items():
            with pytest.raises(StoreUnavailable):
                call(store, job)
            assert name  # (named in the traceback when it does not raise)
        with pytest.raises(StoreUnavailable):
            SQLJobStore(url)  # opening during the outage, too
        assert not store.health.up and store.health.failures >= len(CALLS)
        private_pg.start()
        assert store.get(job.id).id == job.id  # the same object, no reopen
        assert store.health.up and store.health.reconnects == 1 and store.health.failures == 0
        assert store.claim("w", 30).id == job.id
        assert store.complete(job.id, "w", stored_output())
        assert store.counts()["completed"] == 1
    finally:
        store.close()


def test_dropped_connections_are_replaced_transparently(private_pg):
    """The server kills every session (a failover, an idle timeout): the pool notices and reconnects."""
    url = private_pg.create_database()
    store = SQLJobStore(url)
    try:
        job = store.submit("alice", APP, stored_request())
        admin = sa.create_engine(private_pg.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            killed = conn.execute(sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = :db AND pid <> pg_backend_pid()"
            ), {"db": sa.make_url(url).database}).scalar()
        assert killed >= 1
        assert store.get(job.id).id == job.id

        # Dropped in the middle of a transaction: that call fails as unavailable (it may or may not have been
        # applied, so it is not retried silently), and the next one works.
        with pytest.raises(StoreUnavailable):
            with store._write() as conn:
                pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                with admin.connect() as other:
                    other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                conn.execute(sa.text("SELECT 1"))
        admin.dispose()
        assert store.claim("w", 30).id == job.id
    finally:
        store.close()


def test_a_pooled_connection_is_pinged_only_when_there_is_reason_to(pg_server, monkeypatch):
    """No round trip per checkout: a connection used a moment ago is handed out as it is; one whose server spoke
    (a termination notice) or that sat idle for PING_AFTER_IDLE_S is pinged first."""
    from photomaker_server.jobs.sql import postgres

    url = pg_server.create_database()
    store = SQLJobStore(url)
    pings: list[int] = []
    real_ping = store._engine.dialect.do_ping
    monkeypatch.setattr(store._engine.dialect, "do_ping", lambda conn: (pings.append(1), real_ping(conn))[1])
    try:
        job = store.submit("alice", APP, stored_request())
        for _ in range(20):
            assert store.get(job.id) is not None
        assert pings == []
        monkeypatch.setattr(postgres, "PING_AFTER_IDLE_S", 0.0)
        assert store.get(job.id) is not None
        assert pings == [1]
        monkeypatch.setattr(postgres, "PING_AFTER_IDLE_S", 30.0)
        with store._read() as conn:  # the server ends this session while the connection sits in the pool
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()
        time.sleep(0.2)  # the termination notice reaches our socket
        assert store.get(job.id) is not None  # noticed at checkout, replaced: no error
        assert len(pings) == 2
    finally:
        store.close()
        pg_server.drop_database(url)
