"""A rolling restart loses nothing: under steady load from BOTH official clients (``fal-client`` and
``@fal-ai/client``, unmodified, each submitting and polling through the cluster's one front address), every
process is restarted one at a time with ``cluster.py ctl restart``: zero errors seen by either client, zero lost
jobs (every accepted job completed and its images downloaded), zero duplicated jobs (one job row per submission,
one run per job).

Two tests on one cluster (a start costs a minute of CPU): the replicas and the workers, then PostgreSQL. The
PostgreSQL one needs the API to ride out a database restart (requests held while it reconnects, answers the
clients retry); that is issue 16's lease/ride-out work, so it fails on a tree without it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import reaper
import substrate
from cluster_lab import Lab
from helpers import image_bytes, make_face

HERE = Path(__file__).parent
CLIENTS_DIR = HERE.parent / "clients"
LOOPS = 2  # concurrent subscribe loops per client


@pytest.fixture(scope="module")
def lab(tiny_root, tmp_path_factory):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (the machine's Node.js runs the official JS client)")
    if not (CLIENTS_DIR / "node_modules" / "@fal-ai" / "client").is_dir():
        pytest.fail("@fal-ai/client is not installed: `make test-deps` runs `npm ci` in tests/clients")
    root = tmp_path_factory.mktemp("rolling")
    # A restarted worker finishes its job rather than handing it back, even on a machine this busy.
    made = Lab(root / "cluster", tiny_root, env={"PHOTOMAKER_SHUTDOWN_GRACE_S": "60"})
    made.launch("--replicas", "2", "--workers", "2", "--port", str(substrate.free_port()))
    try:
        made.description_at_start = made.wait_up()
        face = root / "face.png"
        face.write_bytes(image_bytes(make_face(0)))
        made.face = face
        yield made
    finally:
        assert made.stop() == 0, made.output()
        assert reaper.processes_mentioning(str(root)) == []
        made.run("clean")


class Load:
    """Both official clients, looping subscribe + download through the front address until told to stop."""

    def __init__(self, lab: Lab) -> None:
        description = lab.description()
        self.stop_file = lab.directory.parent / f"stop-{time.monotonic_ns()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAL_")}
        front, key = description["front"], description["api_key"]
        self.outputs = {name: lab.directory.parent / f"{self.stop_file.name}-{name}.json" for name in ("py", "js")}
        self.errors = {name: lab.directory.parent / f"{self.stop_file.name}-{name}.err" for name in ("py", "js")}
        commands = {
            "py": ([sys.executable, str(HERE / "fal_load.py"), front, str(lab.face), str(self.stop_file),
                    str(LOOPS)], {**env, "FAL_KEY": key}, HERE),
            "js": ([shutil.which("node"), "fal_load.mjs"], {**env, "PM_URL": front, "PM_KEY": key,
                   "PM_FACE": str(lab.face), "PM_STOP": str(self.stop_file), "PM_LOOPS": str(LOOPS)}, CLIENTS_DIR),
        }
        self.processes = {}
        for name, (command, run_env, cwd) in commands.items():
            with open(self.outputs[name], "wb") as out, open(self.errors[name], "wb") as err:
                self.processes[name] = reaper.track(subprocess.Popen(
                    command, env=run_env, cwd=cwd, stdout=out, stderr=err, start_new_session=True))

    def finish(self, timeout: float = 300) -> dict[str, dict]:
        self.stop_file.touch()
        reports = {}
        for name, process in self.processes.items():
            try:
                process.wait(timeout)
            finally:
                reaper.kill_group(process)
            assert process.returncode == 0, (name, self.errors[name].read_text()[-3000:])
            reports[name] = json.loads(self.outputs[name].read_text())
        return reports


def jobs_before(lab: Lab) -> set[str]:
    return {row[0] for row in lab.query("SELECT id FROM jobs")}


def wait_for_completions(lab: Lab, known: set[str], count: int, timeout: float = 300) -> None:
    """Until ``count`` more jobs than ``known`` have completed: the load is flowing."""
    deadline = time.monotonic() + timeout
    while True:
        done = {row[0] for row in lab.query("SELECT id FROM jobs WHERE status = 'completed'")} - known
        if len(done) >= count:
            return
        assert time.monotonic() < deadline, f"only {len(done)} jobs completed: {lab.output()[-3000:]}"
        time.sleep(1)


def restart_under_load(lab: Lab, *names: str) -> None:
    known = jobs_before(lab)
    load = Load(lab)
    try:
        wait_for_completions(lab, known, 4)
        for name in names:
            lab.ctl("restart", name)
            wait_for_completions(lab, known | jobs_before(lab), 2)  # work flows again before the next one
    finally:
        reports = load.finish()
    assert_nothing_lost(lab, known, reports)


def assert_nothing_lost(lab: Lab, known: set[str], reports: dict[str, dict]) -> None:
    """Every kind of loss at once, so that one failure tells the whole story."""
    problems: dict[str, object] = {}
    for name, report in reports.items():
        if report["errors"]:
            problems[f"{name}: errors the client raised"] = report["errors"]
        if not report["submitted"]:
            problems[f"{name}: nothing submitted"] = True
        # Every accepted job completed for the client, every image downloaded (the load scripts check each one).
        if missing := sorted(set(report["submitted"]) - set(report["completed"])):
            problems[f"{name}: accepted but no result for the client"] = missing
    submitted = [i for report in reports.values() for i in report["submitted"]]
    if len(submitted) != len(set(submitted)):
        problems["one request id given twice"] = sorted({i for i in submitted if submitted.count(i) > 1})
    # One job per submission: a submit retried by a client or by the load balancer would leave a second row.
    new = {row[0]: row for row in lab.query("SELECT id, status, error FROM jobs") if row[0] not in known}
    if unknown := sorted(set(new) - set(submitted)):
        problems["jobs no client knows of (a duplicated submit?)"] = unknown
    if lost := sorted(set(submitted) - set(new)):
        problems["request ids with no job"] = lost
    if failed := [row for row in new.values() if row[1] != "completed" or row[2] is not None]:
        problems["jobs not completed, or failed"] = failed
    # One run per job: a graceful stop lets a worker finish its job instead of handing it back.
    starts = dict(lab.query("SELECT job_id, count(*) FROM job_logs WHERE message LIKE 'Started on worker%' "
                            "GROUP BY job_id"))
    if reruns := {job: starts.get(job, 0) for job in new if starts.get(job, 0) != 1}:
        problems["jobs not run exactly once"] = reruns
    assert problems == {}, {"completed per client": {n: len(r["completed"]) for n, r in reports.items()},
                            **problems}


def test_rolling_restart_of_replicas_and_workers_loses_nothing(lab):
    restart_under_load(lab, "api1", "api2", "worker1", "worker2")
    rows = lab.status()
    assert all(rows[name]["restarts"] == 1 for name in ("api1", "api2", "worker1", "worker2")), rows


def test_rolling_restart_of_postgres_loses_nothing(lab):
    """Needs the API to ride out a PostgreSQL restart (issue 16's lease and ride-out work)."""
    restart_under_load(lab, "postgres")
    assert lab.status()["postgres"]["restarts"] == 1
