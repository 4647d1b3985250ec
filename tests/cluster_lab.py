"""Drives ``tools/cluster.py`` (``make cluster``) as a user would: started as a process, controlled through
``cluster.py ctl``, stopped with SIGTERM; and reads what it left: its output, its database, its directory."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import reaper

CLUSTER = Path(__file__).resolve().parents[1] / "tools" / "cluster.py"
APP = "fal-ai/photomaker"
PNG = b"\x89PNG\r\n\x1a\n"
#: Generous: a 2-core machine shared with other test runs.
START_TIMEOUT_S = 400


class Lab:
    """One cluster directory and the ``cluster.py`` process running it (if any)."""

    def __init__(self, directory: Path, tiny_root: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.out_path = directory.parent / f"{directory.name}.out"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.offset = 0  # where the latest launch's output begins
        if tiny_root is not None and not (directory / "models" / "tiny").exists():
            (directory / "models").mkdir(parents=True, exist_ok=True)
            (directory / "models" / "tiny").symlink_to(tiny_root.resolve(), target_is_directory=True)  # not rebuilt

    # -- the process
    def launch(self, *args: str) -> subprocess.Popen:
        self.offset = len(self.output())
        with open(self.out_path, "ab") as out:
            self.process = reaper.track(subprocess.Popen(
                [sys.executable, str(CLUSTER), "--dir", str(self.directory), *args], env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
        return self.process

    def output(self) -> str:
        """Everything every launch printed."""
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def latest_output(self) -> str:
        return self.output()[self.offset:]

    def wait_up(self, timeout: float = START_TIMEOUT_S) -> dict:
        """Until the banner is printed (everything healthy); returns ``cluster.json``."""
        deadline = time.monotonic() + timeout
        while "cluster is up" not in self.latest_output():
            assert self.process.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.5)
        return self.description()

    def description(self) -> dict:
        return json.loads((self.directory / "cluster.json").read_text())

    def stop(self, timeout: float = 180) -> int:
        """SIGTERM, as Ctrl-C would; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            reaper.kill_group(self.process)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``cluster.py ARGS --dir <dir>`` (ctl, clean) as a separate process."""
        return subprocess.run([sys.executable, str(CLUSTER), *args, "--dir", str(self.directory)], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ctl(self, *args: str, timeout: float = 600) -> dict:
        done = self.run("ctl", *args, "--json", timeout=timeout)
        assert done.returncode == 0, (args, done.stdout, done.stderr, self.output()[-4000:])
        return json.loads(done.stdout)

    def status(self) -> dict[str, dict]:
        return {row["name"]: row for row in self.ctl("status")["services"]}

    def wait_healed(self, timeout: float = 300) -> dict[str, dict]:
        """Until every process runs and every replica is UP at the load balancer."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.status()
            if all(r["state"] == "running" and (r["kind"] != "replica" or r["balancer"].startswith("UP"))
                   for r in rows.values()):
                return rows
            assert time.monotonic() < deadline, rows
            time.sleep(0.5)

    # -- what it holds and leaves
    def query(self, sql: str) -> list[tuple]:
        import psycopg

        url = self.description()["database_url"].replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url, connect_timeout=10) as connection:
            return connection.execute(sql).fetchall()

    def leftovers(self, s3_ports: list[int]) -> list[str]:
        """Sockets, lock and pid files in the directory (or weed's in the temp dir) after a stop."""
        found = []
        for path in self.directory.rglob("*"):
            try:
                mode = path.lstat().st_mode
            except OSError:
                continue
            if stat.S_ISSOCK(mode) or path.name.endswith(".lock") or path.name in ("postmaster.pid",
                                                                                  "cluster.json"):
                found.append(str(path))
        for port in s3_ports:
            found += [str(p) for p in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port + 10000}.sock")]
        return found
