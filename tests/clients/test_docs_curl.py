"""The curl walk-through in docs/clients.md, run as written against a live server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from live_server import API_KEY

pytestmark = pytest.mark.clients
DOC = Path(__file__).parents[2] / "docs" / "clients.md"


def curl_block() -> str:
    text = DOC.read_text()
    section = text[text.index("\n## curl"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_curl_examples_work_as_written(tmp_path, live_server, face_png):
    assert shutil.which("curl") and shutil.which("jq"), "the documented examples use curl and jq (`make test-deps`)"
    shutil.copy(face_png, tmp_path / "face.png")
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", curl_block()], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "SERVER": live_server.url, "KEY": API_KEY})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    events = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert events[-1]["status"] == "COMPLETED" and not events[-1].get("error")
    streamed = [entry["message"] for event in events for entry in event["logs"]]
    assert "Step 4/4" in streamed and len(streamed) == len(set(streamed))  # each event carries only new lines
    rest = [line for line in lines if not line.startswith("data: ") and line.strip()]
    assert rest[0] == "COMPLETED"  # the poll
    assert rest[1].startswith(f"{live_server.url}/files/") and rest[2] == "1"  # result: image URL, seed
    assert json.loads(rest[3]) == {"status": "ALREADY_COMPLETED"}  # cancel after the fact
    assert rest[4].isdigit()  # the synchronous run's (random) seed
