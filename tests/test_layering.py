"""The layering promises of docs/architecture.md, checked: statically, every import chain against the contracts in
pyproject.toml (import-linter), and at run time, what an API process really loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold():
    """contract/ imports nothing of ours; the API never imports engine, worker or torch; the engine never the API;
    jobs, storage, inputs and webhooks none of the three (pyproject.toml, ``[tool.importlinter]``)."""
    code = "import sys\nfrom importlinter.cli import lint_imports\nsys.exit(lint_imports(no_cache=True))\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_forbidden_import_breaks_the_contracts(tmp_path):
    """The check can fail: the same contracts over a copy of the package in which the API imports the engine."""
    import shutil

    package = tmp_path / "photomaker_server"
    shutil.copytree(ROOT / "src" / "photomaker_server", package, ignore=shutil.ignore_patterns("__pycache__", "web"))
    with open(package / "api" / "proxy.py", "a") as f:
        f.write("\nfrom ..engine import service as _service  # noqa\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    code = "import sys\nfrom importlinter.cli import lint_imports\nsys.exit(lint_imports(no_cache=True))\n"
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode != 0
    assert "photomaker_server.api.proxy -> photomaker_server.engine" in done.stdout


def test_the_api_process_never_imports_torch(tmp_path):
    """The HTTP layer stays light: no torch, diffusers or transformers, and none of v2's face stack (onnxruntime,
    onnx, OpenCV, InsightFace), in the API process."""
    code = (
        "import sys\n"
        "from photomaker_server.api.app import create_app\n"
        "from photomaker_server.settings import Settings\n"
        f"create_app(Settings(data_dir={str(tmp_path)!r}), housekeeping=False)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'onnxruntime', 'onnx', 'cv2', 'insightface')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_engine_never_imports_the_web_framework():
    code = (
        "import sys\n"
        "import photomaker_server.engine.service, photomaker_server.engine.pipeline, photomaker_server.worker.process\n"
        "web = [m for m in ('fastapi', 'starlette', 'uvicorn') if m in sys.modules]\n"
        "assert not web, web\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_json_logs_are_one_object_per_line():
    code = (
        "import logging\n"
        "from photomaker_server.logs import configure_logging\n"
        "configure_logging('json', 'worker')\n"
        "logging.getLogger('x').warning('hello %s', 'there')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    import json

    entry = json.loads(done.stderr.strip().splitlines()[-1])
    assert entry["message"] == "hello there" and entry["level"] == "WARNING" and entry["role"] == "worker"
