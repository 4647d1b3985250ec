"""The layering promises of docs/architecture.md, checked."""

from __future__ import annotations

import subprocess
import sys


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
