"""The curl walk-throughs in docs/clients.md and README.md, run as written against a live server."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image

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


README = Path(__file__).parents[2] / "README.md"


def readme_block() -> str:
    text = README.read_text()
    section = text[text.index("\n**curl**"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_readme_walk_through_works_as_written(tmp_path, live_server):
    """The README's curl walk-through, as a new user runs it in the repository: it makes its own zip, submits
    with quick settings, polls to COMPLETED and saves the image; a refused step stops it with curl's error."""
    assert shutil.which("curl") and shutil.which("jq"), "the documented examples use curl and jq (`make test-deps`)"
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    venv_python = tmp_path / ".venv" / "bin" / "python"  # the repository's venv: here, the test's interpreter
    venv_python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # (a symlink would lose the venv)
    venv_python.chmod(0o755)
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "api-key").write_text(API_KEY + "\n")
    env = {**os.environ, "SERVER": live_server.url}
    started = time.monotonic()
    done = subprocess.run(["bash", "-e", "-c", readme_block()], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 180  # quick settings: not the 13 minutes of full-size defaults
    with zipfile.ZipFile(tmp_path / "faces.zip") as archive:
        assert len(archive.namelist()) == 3
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "COMPLETED" and set(lines[:-1]) <= {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}, lines
    result = json.loads(lines[-1])
    assert result["url"].startswith(f"{live_server.url}/files/") and isinstance(result["seed"], int)
    with Image.open(tmp_path / "result.png") as image:
        assert image.size == (256, 256)

    # Fails loudly: with a key the server refuses, the first request stops the walk-through with curl's error.
    (tmp_path / ".data" / "api-key").write_text("not-a-key\n")
    refused = subprocess.run(["bash", "-e", "-c", readme_block()], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120, env=env)
    assert refused.returncode != 0 and "401" in refused.stderr, (refused.returncode, refused.stderr)
