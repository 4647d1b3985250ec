"""The harness itself: PostgreSQL and SeaweedFS from the wheels, reached across network namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

import reaper
import substrate

SQL = """
import json, sys
import psycopg
with psycopg.connect(sys.argv[1], connect_timeout=5, autocommit=True) as conn:
    cur = conn.execute(sys.argv[2])
    print(json.dumps(cur.fetchall() if cur.description else None))
"""


def sql(host, dsn: str, statement: str):  # noqa: ANN001, ANN201 - host: netns.Host
    """Run one statement with psycopg in another namespace; returns the rows."""
    done = host.call([sys.executable, "-c", SQL, dsn, statement])
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_postgres_unix_socket_for_a_single_machine(no_leftovers):
    from sqlalchemy import create_engine, text

    pg = substrate.start_postgres(no_leftovers / "pg")
    try:
        assert pg.url.startswith("postgresql+psycopg://postgres@/postgres?host=")
        engine = create_engine(pg.url)
        with engine.begin() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            assert conn.execute(text("SHOW listen_addresses")).scalar() == ""  # no TCP: socket only
        engine.dispose()
    finally:
        pg.stop()
    assert not pg.running


def test_postgres_over_tcp_from_another_namespace_survives_restart_and_kill(network, no_leftovers):
    db_host, client = network.add_host("pg"), network.add_host("client")
    pg = substrate.start_postgres(no_leftovers / "pg", host=db_host.ip, netns=db_host.ns)
    try:
        assert pg.url == f"postgresql+psycopg://postgres@{db_host.ip}:{pg.port}/postgres"
        assert sql(client, pg.dsn, "SELECT 1") == [[1]]
        # It really is on the other host: the client's own loopback has no PostgreSQL.
        local = client.call([sys.executable, "-c", SQL, f"postgresql://postgres@127.0.0.1:{pg.port}/postgres",
                             "SELECT 1"])
        assert local.returncode != 0 and "refused" in local.stderr

        sql(client, pg.dsn, "CREATE TABLE notes (body text)")
        sql(client, pg.dsn, "INSERT INTO notes VALUES ('before restart')")
        pg.restart()
        assert sql(client, pg.dsn, "SELECT body FROM notes") == [["before restart"]]

        sql(client, pg.dsn, "INSERT INTO notes VALUES ('before kill')")
        first_pid = pg.process.pid
        pg.kill()  # SIGKILL: the next start runs crash recovery
        assert db_host.wait_empty()
        pg.start()
        assert pg.process.pid != first_pid
        assert sql(client, pg.dsn, "SELECT body FROM notes ORDER BY body") == [["before kill"], ["before restart"]]
    finally:
        pg.stop()
    assert db_host.wait_empty() and not pg.running


PUT_GET = """
import sys
import boto3
s3 = boto3.client("s3")
s3.put_object(Bucket=sys.argv[1], Key="from-client.txt", Body=b"written in the client namespace")
print(s3.get_object(Bucket=sys.argv[1], Key="from-client.txt")["Body"].read().decode())
"""


def test_seaweed_in_a_namespace_serves_another_namespace(network, no_leftovers):
    store_host, client, third = network.add_host("s3"), network.add_host("client"), network.add_host("third")
    s3 = substrate.start_seaweed(no_leftovers / "s3", ip=store_host.ip, netns=store_host.ns)
    try:
        assert s3.endpoint == f"http://{store_host.ip}:{s3.s3_port}"
        bucket = s3.bucket("harness-test")
        assert s3.bucket("harness-test") == bucket  # idempotent
        env = {**os.environ, **s3.env()}
        done = client.call([sys.executable, "-c", PUT_GET, bucket], env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "written in the client namespace"
        # Read back here (the root namespace, over the bridge) and, via a presigned URL, from a third namespace.
        body = s3.client().get_object(Bucket=bucket, Key="from-client.txt")["Body"].read()
        assert body == b"written in the client namespace"
        url = s3.client().generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "from-client.txt"})
        fetched = third.call(["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", url])
        assert fetched.stdout.splitlines() == ["written in the client namespace", "200"], fetched.stderr
        assert httpx.get(url).content == body
    finally:
        s3.stop()
    assert store_host.wait_empty() and not s3.running


def test_network_teardown_removes_everything_even_with_processes_running(netns_module, no_leftovers):
    net = netns_module.Network()
    host = net.add_host("busy")
    sleeper = host.run(["sleep", "600"])
    deadline = time.monotonic() + 10  # `ip netns exec` joins the namespace just after the fork
    while host.pids() != [sleeper.pid] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.pids() == [sleeper.pid]
    net.close()
    assert sleeper.wait(10) == -9
    assert net.leftovers() == []


def test_missing_wheel_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/bin/python")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(substrate.SubstrateMissing, match=r"make test-deps.*pip install -e \.\[test\]"):
        substrate.weed_binary()


def test_what_a_crashed_run_left_is_removed_by_the_next(netns_module, no_leftovers):
    # A run that died without its teardown: namespace (with a process inside) and bridge named after its pid.
    dead = subprocess.Popen(["true"])
    dead.wait()
    ns, bridge = f"{netns_module.PREFIX}{dead.pid}n0-h", f"{netns_module.PREFIX}{dead.pid}b0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    orphan = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "600"], start_new_session=True)
    try:
        removed = netns_module.clean_stale()
        assert ns in removed and bridge in removed
        assert orphan.wait(10) == -9
        assert ns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    finally:
        reaper.kill_group(orphan)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
