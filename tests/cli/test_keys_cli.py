"""``photomaker keys``: create / list / set / revoke / usage on a data dir's database, and one ``error:`` line with
exit status 2 for every mistake (unknown or duplicate name, bad or absurd limits, a configured key, a bad date)."""

from __future__ import annotations

import json

import pytest

from photomaker_server.cli import main
from photomaker_server.jobs.keys import hash_secret, owner_of
from photomaker_server.jobs.sql import SQLJobStore


def keys(capsys, data_dir, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["keys", *args, "--data-dir", str(data_dir)])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error(result: tuple[int, str, str], expected: str) -> None:
    code, out, err = result
    assert code == 2 and out == "", result
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err


def test_the_keys_lifecycle(capsys, tmp_path) -> None:
    code, out, _ = keys(capsys, tmp_path, "create", "shop", "--max-concurrent", "2", "--max-queued", "10",
                        "--requests-per-minute", "60", "--admin")
    assert code == 0
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("pm_") and len(secret) > 40 and out.count(secret) == 1
    with SQLJobStore(tmp_path / "jobs.db") as store:  # only the hash is stored
        key = store.key("shop")
        assert key.secret_hash == hash_secret(secret) and key.owner == owner_of(secret)
        store.register_configured_keys(["a-configured-key"])

    code, out, _ = keys(capsys, tmp_path, "list", "--json")
    listed = {k["name"]: k for k in json.loads(out)}
    assert secret not in out and set(listed) == {"shop", "config-1"}
    expected = {"prefix": secret[:8], "kind": "managed", "admin": True, "revoked": False, "max_concurrent": 2,
                "max_queued": 10, "requests_per_minute": 60}
    assert {name: listed["shop"][name] for name in expected} == expected
    code, out, _ = keys(capsys, tmp_path, "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "PREFIX", "KIND"] and "shop" in out

    code, out, _ = keys(capsys, tmp_path, "set", "shop", "--max-queued", "none", "--max-concurrent", "3")
    assert code == 0 and "max_concurrent=3" in out and "max_queued" not in out and "requests_per_minute=60" in out
    code, out, _ = keys(capsys, tmp_path, "revoke", "shop")
    assert code == 0 and "revoked" in out

    code, out, _ = keys(capsys, tmp_path, "usage", "--json", "--since", "2026-01-01")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["config-1", "shop"]
    assert all(list(r) == ["name", "jobs_submitted", "jobs_completed", "jobs_failed", "jobs_cancelled", "images",
                           "inference_seconds"] for r in rows)


def test_mistakes_are_one_error_line(capsys, tmp_path) -> None:
    assert keys(capsys, tmp_path, "create", "taken")[0] == 0
    capsys.readouterr()
    one_error(keys(capsys, tmp_path, "create", "taken"), "exists already")
    one_error(keys(capsys, tmp_path, "create", "bad name"), "invalid key name")
    one_error(keys(capsys, tmp_path, "create", "config-7"), "reserved")
    one_error(keys(capsys, tmp_path, "create", "x", "--max-queued", "-1"), "between 0 and")
    one_error(keys(capsys, tmp_path, "create", "x", "--max-queued", "99999999999"), "between 0 and")
    one_error(keys(capsys, tmp_path, "create", "x", "--requests-per-minute", "lots"), "not a whole number")
    one_error(keys(capsys, tmp_path, "set", "nobody", "--max-queued", "2"), "no key named 'nobody'")
    one_error(keys(capsys, tmp_path, "set", "taken"), "nothing to change")
    one_error(keys(capsys, tmp_path, "revoke", "nobody"), "no key named")
    one_error(keys(capsys, tmp_path, "usage", "--since", "yesterday"), "YYYY-MM-DD")
    with SQLJobStore(tmp_path / "jobs.db") as store:
        store.register_configured_keys(["configured"])
    one_error(keys(capsys, tmp_path, "revoke", "config-1"), "configured key")
