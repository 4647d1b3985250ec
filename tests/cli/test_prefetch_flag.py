"""``--prefetch-depth`` on ``serve`` and ``worker``: parsed into ``Settings.prefetch_depth`` (env
``PHOTOMAKER_PREFETCH_DEPTH``), 0 turns prefetching off, bad values refused in one line."""

from __future__ import annotations

import pytest

from photomaker_server.cli import build_parser, settings_from_args


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_flag_and_the_environment_set_the_depth(command, monkeypatch):
    monkeypatch.delenv("PHOTOMAKER_PREFETCH_DEPTH", raising=False)
    assert settings_from_args(build_parser().parse_args([command])).prefetch_depth == 1
    assert settings_from_args(build_parser().parse_args([command, "--prefetch-depth", "0"])).prefetch_depth == 0
    monkeypatch.setenv("PHOTOMAKER_PREFETCH_DEPTH", "2")
    assert settings_from_args(build_parser().parse_args([command])).prefetch_depth == 2
    assert settings_from_args(build_parser().parse_args([command, "--prefetch-depth", "0"])).prefetch_depth == 0


@pytest.mark.parametrize("value", ["-1", "9", "one"])
def test_bad_values_are_one_clear_line(value, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["worker", "--prefetch-depth", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--prefetch-depth" in err and "Traceback" not in err
