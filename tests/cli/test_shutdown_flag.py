"""``--shutdown-grace`` on ``serve`` and ``worker``: parsed into ``Settings.shutdown_grace_s``, bad values refused."""

from __future__ import annotations

import pytest

from photomaker_server.cli import build_parser, settings_from_args


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_the_flag_sets_the_grace_period(command, monkeypatch):
    monkeypatch.delenv("PHOTOMAKER_SHUTDOWN_GRACE_S", raising=False)
    assert settings_from_args(build_parser().parse_args([command])).shutdown_grace_s == 60
    assert settings_from_args(build_parser().parse_args([command, "--shutdown-grace", "2.5"])).shutdown_grace_s == 2.5
    monkeypatch.setenv("PHOTOMAKER_SHUTDOWN_GRACE_S", "7")
    assert settings_from_args(build_parser().parse_args([command])).shutdown_grace_s == 7
    assert settings_from_args(build_parser().parse_args([command, "--shutdown-grace", "0"])).shutdown_grace_s == 0


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_bad_values_are_one_clear_line(value, capsys):
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--shutdown-grace", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--shutdown-grace" in err and "Traceback" not in err


def test_generate_has_no_such_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--images", "a.png", "--prompt", "x img", "--shutdown-grace", "5"])
