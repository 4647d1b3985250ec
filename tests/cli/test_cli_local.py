"""``photomaker generate`` in-process on the tiny model, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
from PIL import Image

from helpers import image_bytes, make_face


def photomaker(*args: str, cwd, tiny_root) -> subprocess.CompletedProcess:
    data_dir = cwd / "data"
    (data_dir / "models").mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models" / "tiny").exists():
        (data_dir / "models" / "tiny").symlink_to(tiny_root, target_is_directory=True)
    return subprocess.run(
        [sys.executable, "-m", "photomaker_server.cli", "generate", *args, "--tiny", "--data-dir", str(data_dir)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture
def photos(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"face{i}.png"
        make_face(i).save(path)
        paths.append(str(path))
    return paths


def test_generate_writes_images_and_reports_the_seed(tmp_path, tiny_root, photos):
    done = photomaker("--images", *photos, "--prompt", "a photo of a man img", "--steps", "3", "--width", "64",
                      "--height", "96", "--seed", "11", "--num-images", "2", "--out", "out", cwd=tmp_path,
                      tiny_root=tiny_root)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["seed"] == 11 and report["demo_model"] is True
    files = [tmp_path / line for line in lines[:-1]]
    assert [f.name for f in files] == ["photomaker-11-0.png", "photomaker-11-1.png"]
    with Image.open(files[0]) as image:
        assert image.size == (64, 96)
        assert "random-weight demo model" in image.info["Description"], "demo outputs must say so inside the file"
    assert "random-weight demo model" in done.stderr


def test_generate_from_a_zip_with_style_and_initial_image(tmp_path, tiny_root):
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"person/{i}.jpg", image_bytes(make_face(i), "JPEG"))
        zf.writestr("notes.txt", "hello")
    make_face(7, (128, 64)).save(tmp_path / "start.png")
    done = photomaker("--archive", str(archive), "--prompt", "a woman img", "--style", "Neonpunk", "--steps", "4",
                      "--initial-image", str(tmp_path / "start.png"), "--strength", "0.5", "--width", "64",
                      "--height", "64", "--output-format", "jpeg", cwd=tmp_path, tiny_root=tiny_root)
    assert done.returncode == 0, done.stderr
    assert "notes.txt" in done.stderr  # the skipped entry is reported
    out = tmp_path / done.stdout.strip().splitlines()[0]
    assert out.suffix == ".jpg" and Image.open(out).format == "JPEG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt", "a photo of a man"], "prompt: the prompt must contain the trigger word 'img'"),
        (["--prompt", "a man img", "--steps", "0"], "num_inference_steps"),
        (["--prompt", "a man img", "--style", "Vaporwave"], "style"),
    ],
)
def test_bad_options_are_one_clear_line(tmp_path, tiny_root, photos, args, message):
    done = photomaker("--images", *photos, *args, cwd=tmp_path, tiny_root=tiny_root)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_unreadable_photo_is_a_clear_error(tmp_path, tiny_root):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    done = photomaker("--images", str(tmp_path / "broken.jpg"), "--prompt", "a man img", cwd=tmp_path, tiny_root=tiny_root)
    assert done.returncode == 2 and "broken.jpg" in done.stderr and "Traceback" not in done.stderr


def test_missing_file(tmp_path, tiny_root):
    done = photomaker("--images", str(tmp_path / "nope.jpg"), "--prompt", "a man img", cwd=tmp_path, tiny_root=tiny_root)
    assert done.returncode == 2 and "cannot read" in done.stderr
