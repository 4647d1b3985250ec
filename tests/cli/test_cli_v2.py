"""``photomaker generate --photomaker-version v2`` on local files, as the acceptance check runs it: the tiny model
written by ``photomaker tiny-model``, given by ``--base-model/--photomaker-v2-checkpoint/--face-model``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from helpers import image_bytes, make_face


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "photomaker_server.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def files(tiny_root, tmp_path_factory) -> dict:
    """``photomaker tiny-model --out`` (the tests' tiny model: already built, so this only reports it)."""
    done = cli("tiny-model", "--out", str(tiny_root), cwd=tmp_path_factory.mktemp("cwd"))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("photomaker", "checkpoint", "checkpoint_v2", "face_model"):
        assert Path(report[key]).exists(), key
    assert report["architecture"]["v2_perceiver"]["heads"] == 1
    return report


def zip_of(path: Path, photos: dict[str, Image.Image]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, image in photos.items():
            archive.writestr(name, image_bytes(image))
    return path


def generate_v2(files: dict, archive: Path, out: Path, checkpoint_key: str = "checkpoint_v2"):
    return cli("generate", "--base-model", files["photomaker"], "--photomaker-v2-checkpoint", files[checkpoint_key],
               "--face-model", files["face_model"], "--photomaker-version", "v2", "--archive", str(archive),
               "--prompt", "a photo of a man img, film grain", "--seed", "42", "--steps", "3", "--width", "64",
               "--height", "64", "--num-images", "2", "--guidance", "5", "--style", "(No style)", "--device", "cpu",
               "--out", str(out), cwd=out.parent)


def test_a_faceless_photo_changes_nothing_and_is_named(files, tmp_path):
    blank = Image.new("RGB", (300, 240), (140, 120, 100))
    with_blank = generate_v2(files, zip_of(tmp_path / "a.zip", {"1.png": make_face(0), "2_IMG_0042.png": blank,
                                                                "3.png": make_face(1)}), tmp_path / "a")
    without = generate_v2(files, zip_of(tmp_path / "b.zip", {"1.png": make_face(0), "3.png": make_face(1)}),
                          tmp_path / "b")
    assert with_blank.returncode == 0 and without.returncode == 0, with_blank.stderr + without.stderr
    assert "no face found in photo 2 of 3 (2_IMG_0042.png): skipped" in with_blank.stderr
    for name in ("photomaker-42-0.png", "photomaker-42-1.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert json.loads(with_blank.stdout.strip().splitlines()[-1])["demo_model"] is False  # real-weights path


def test_only_faceless_photos_exit_2_with_one_error_line(files, tmp_path):
    archive = zip_of(tmp_path / "blank.zip", {"a.png": Image.new("RGB", (200, 200), (90, 90, 90)),
                                              "b.png": Image.new("RGB", (120, 300), (250, 250, 250))})
    done = generate_v2(files, archive, tmp_path / "out")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no face was found in any of the 2 photos" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_v1_checkpoint_given_as_v2_is_one_error_line(files, tmp_path):
    done = generate_v2(files, zip_of(tmp_path / "one.zip", {"1.png": make_face(0)}), tmp_path / "out", "checkpoint")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "is a PhotoMaker v1 checkpoint, but it was given as the v2 one" in done.stderr
