"""``pip install`` of the wheel alone gives a working demo: built, installed into a fresh virtual environment (its
dependencies from the package index as this machine's pip is configured), then ``photomaker generate --tiny`` run
from there, away from the source tree.

This is the check that the package is self-contained: the CLIP vocabulary, the web page and the style data travel
as package data, and nothing the Makefile installs on the side is needed. It takes a minute or two (most of it is
unpacking PyTorch); PyTorch is installed first, pinned to the version running these tests, and must be the CPU build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_face

pytestmark = pytest.mark.packaging
ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DATA = [
    "photomaker_server/engine/data/bpe_simple_vocab_16e6.txt.gz",
    "photomaker_server/engine/data/LICENSE-clip-bpe.txt",
    "photomaker_server/contract/data/styles.json",
    "photomaker_server/web/index.html",
]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what points Python at the source tree or the shared venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


def check(args: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = tmp_path_factory.mktemp("source") / "photomaker-server"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "node_modules", ".data", "outputs", "__pycache__", ".*cache"))
    out = tmp_path_factory.mktemp("wheel")
    check([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(source)], cwd=out,
          timeout=300)
    (path,) = out.glob("photomaker_server-*.whl")
    return path


def test_the_wheel_carries_its_data_and_licence_notices(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [name for name in PACKAGE_DATA if name not in names]
    assert not missing, f"not in the wheel: {missing}"
    notice = zipfile.ZipFile(wheel).read("photomaker_server/engine/data/LICENSE-clip-bpe.txt").decode()
    assert "MIT License" in notice and "Copyright (c) 2021 OpenAI" in notice


def test_a_fresh_install_runs_the_tiny_demo(wheel, tmp_path):
    import torch

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    check([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    # PyTorch first, the version these tests run on (on this machine's pip configuration: the CPU build on disk).
    torch_spec = f"torch=={torch.__version__.split('+')[0]}"
    check([str(python), "-m", "pip", "install", "--quiet", torch_spec], cwd=tmp_path, timeout=600)
    check([str(python), "-c", "import torch, sys; sys.exit(torch.version.cuda is not None)"], cwd=tmp_path, timeout=120)
    check([str(python), "-m", "pip", "install", "--quiet", str(wheel)], cwd=tmp_path, timeout=600)

    # Installed from the wheel, not found in the source tree; and nothing on the side (open_clip) is needed.
    where = check([str(python), "-c", "import photomaker_server, importlib.util as u; print(photomaker_server.__file__);"
                   "print(u.find_spec('open_clip')); import swagger_ui_bundle"], cwd=tmp_path, timeout=120)
    assert str(venv) in where.splitlines()[0] and where.splitlines()[1] == "None", where

    make_face(5).save(tmp_path / "me.png")
    done = subprocess.run(
        [str(venv / "bin" / "photomaker"), "generate", "--tiny", "--images", "me.png",
         "--prompt", "a photo of a man img", "--data-dir", "data"],
        cwd=tmp_path, env=clean_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "--tiny: quick settings" in done.stderr
    image_path = tmp_path / done.stdout.splitlines()[0]
    assert image_path.parent == tmp_path / "outputs" and image_path.is_file()
    with Image.open(image_path) as image:
        assert image.format == "PNG" and "random-weight demo model" in image.info["Description"]
