"""The CLI as a person meets it: help texts, quick settings for the demo model, a closed pipe, and one clear line
(never a traceback) for every failure a user can cause."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from helpers import make_face
from live_server import free_port
from photomaker_server.cli import build_parser
from photomaker_server.cli_args import QUICK_SIZE, QUICK_STEPS
from photomaker_server.contract.styles import style_names


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PHOTOMAKER_KEY", "FAL_KEY", "PHOTOMAKER_SERVER")}
    return subprocess.run([sys.executable, "-m", "photomaker_server.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**base, "HF_HUB_OFFLINE": "1", **(env or {})})


def tiny_data_dir(tmp_path: Path, tiny_root: Path) -> Path:
    data_dir = tmp_path / "data"
    (data_dir / "models").mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models" / "tiny").exists():
        (data_dir / "models" / "tiny").symlink_to(tiny_root, target_is_directory=True)
    return data_dir


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The failure is exit 2 with exactly one error line on stderr and no traceback; returns that line."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, done.stderr
    assert done.stdout == ""
    return errors[0]


@pytest.fixture
def photo(tmp_path) -> str:
    path = tmp_path / "face.png"
    make_face(3).save(path)
    return str(path)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_the_help_shows_defaults_and_styles(tmp_path):
    parser = build_parser()
    commands = _subcommands(parser)
    assert set(commands) == {"generate", "serve", "worker", "status", "cancel", "db", "login-link", "usage", "keys",
                             "tiny-model"}
    commands.update({f"db {name}": sub for name, sub in _subcommands(commands["db"]).items()})
    commands.update({f"keys {name}": sub for name, sub in _subcommands(commands["keys"]).items()})
    assert "db upgrade" in commands
    assert {"keys create", "keys list", "keys revoke", "keys set", "keys usage"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"photomaker {name} {action.option_strings or action.dest}"
    gen = commands["generate"]
    style = next(a for a in gen._actions if "--style" in a.option_strings)
    assert list(style.choices) == style_names()

    # The rendered help, as a person reads it (run as a program: the formatter adds the defaults).
    text = " ".join(run("generate", "--help", cwd=tmp_path).stdout.split())
    for name in style_names():
        assert name in text
    assert "(default: Photographic)" in text and "(default: 50;" in text and "(default: outputs)" in text
    assert "(default: png)" in text and "(default: SG161222/RealVisXL_V3.0;" in text
    assert "default: None" not in text and "default: False" not in text
    serve = " ".join(run("serve", "--help", cwd=tmp_path).stdout.split())
    assert "(default: 8000)" in serve and "(default: 127.0.0.1;" in serve


def test_tiny_without_sizes_uses_quick_settings_and_says_so(tmp_path, tiny_root, photo):
    data_dir = tiny_data_dir(tmp_path, tiny_root)
    # --steps given: only the size is chosen (the packaging test runs it with neither, on a fresh install).
    done = run("generate", "--tiny", "--images", photo, "--prompt", "a photo of a man img", "--seed", "4",
               "--steps", "2", "--data-dir", str(data_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"--tiny: quick settings --width {QUICK_SIZE} --height {QUICK_SIZE}" in done.stderr
    assert f"--steps {QUICK_STEPS}" not in done.stderr
    # The default output folder, relative to where the command runs (git-ignored in the repository).
    out = tmp_path / done.stdout.splitlines()[0]
    assert out.parent == tmp_path / "outputs"
    with Image.open(out) as image:
        assert image.size == (QUICK_SIZE, QUICK_SIZE)
    # The harmless diffusers notice about the LoRA's missing text-encoder keys is not shown as a warning.
    assert "No LoRA keys" not in done.stderr


def test_default_output_folder_is_git_ignored():
    root = Path(__file__).resolve().parents[2]
    patterns = (root / ".gitignore").read_text().split()
    assert "/outputs/" in patterns or "outputs/" in patterns


def test_a_bad_width_is_one_message_about_the_flag(tmp_path, photo):
    line = one_error_line(run("generate", "--tiny", "--images", photo, "--prompt", "a man img", "--width", "1002",
                              cwd=tmp_path))
    assert line.startswith("error: --width: must be a multiple of 8") and "1002" in line
    assert "height" not in line and "image_size" not in line
    # The same check runs before anything is uploaded to a server (the server's union error names every branch).
    line = one_error_line(run("generate", "--images", photo, "--prompt", "a man img", "--height", "20",
                              "--server", f"http://127.0.0.1:{free_port()}", "--key", "k", cwd=tmp_path))
    assert line.startswith("error: --height:") and "64" in line


def _bad_zip(tmp_path: Path) -> str:
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    return str(path)


def _zip_without_photos(tmp_path: Path) -> str:
    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "no photos here")
    return str(path)


@pytest.mark.parametrize("case", [
    "missing photo", "bad archive", "archive without photos", "unknown style", "not a number", "unknown flag",
    "steps out of range", "bad device", "unwritable output", "server unreachable", "weights unavailable",
])
def test_expected_failures_are_one_clear_line(case, tmp_path, tiny_root, photo):
    data_dir = str(tiny_data_dir(tmp_path, tiny_root))
    tiny = ["--tiny", "--data-dir", data_dir, "--steps", "1", "--width", "64"]
    prompt = ["--prompt", "a photo of a man img"]
    env = None
    if case == "missing photo":
        args, expect = ["--images", str(tmp_path / "nope.jpg"), *prompt, *tiny], "cannot read"
    elif case == "bad archive":
        args, expect = ["--archive", _bad_zip(tmp_path), *prompt, *tiny], "broken.zip"
    elif case == "archive without photos":
        args, expect = ["--archive", _zip_without_photos(tmp_path), *prompt, *tiny], "notes.zip"
    elif case == "unknown style":
        args, expect = ["--images", photo, *prompt, "--style", "Vaporwave", *tiny], "--style"
    elif case == "not a number":
        args, expect = ["--images", photo, *prompt, "--seed", "abc", *tiny], "--seed"
    elif case == "unknown flag":
        args, expect = ["--images", photo, *prompt, "--colour", "red", *tiny], "--colour"
    elif case == "steps out of range":
        args, expect = ["--images", photo, *prompt, *tiny, "--steps", "500"], "--steps (num_inference_steps)"
    elif case == "bad device":
        args, expect = ["--images", photo, *prompt, *tiny, "--device", "quantum"], "device 'quantum'"
    elif case == "unwritable output":
        (tmp_path / "a-file").write_text("x")
        args, expect = ["--images", photo, *prompt, *tiny, "--out", str(tmp_path / "a-file" / "out")], "cannot write"
    elif case == "server unreachable":
        args, expect = ["--images", photo, *prompt, "--server", f"http://127.0.0.1:{free_port()}", "--key", "k"], \
            "cannot reach http://127.0.0.1:"
    else:  # no --tiny, no network to the hub, nothing cached: the real weights cannot be had
        args, expect = ["--images", photo, *prompt, "--steps", "1", "--data-dir", data_dir], "--tiny"
        env = {"HF_HOME": str(tmp_path / "hf-home")}
    line = one_error_line(run("generate", *args, cwd=tmp_path, env=env))
    assert expect in line, line
    assert not list(tmp_path.glob("outputs/*"))


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["status", "--help"]])
def test_a_closed_pipe_ends_quietly(tmp_path, args):
    """``photomaker --help | head -1``: the reader goes away before the output is written."""
    process = subprocess.Popen([sys.executable, "-m", "photomaker_server.cli", *args], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # as `head` does once it has its line
    stderr = process.stderr.read().decode()
    process.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "Exception ignored" not in stderr, stderr
    assert process.returncode in (0, 141)


def test_help_piped_into_head(tmp_path):
    """The same through a real shell pipeline (``set -o pipefail`` would report our status; none is a crash)."""
    done = subprocess.run(f"{sys.executable} -m photomaker_server.cli generate --help | head -1", shell=True,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("usage: photomaker generate")
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
