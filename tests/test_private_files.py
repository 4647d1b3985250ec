"""The one helper that writes secret files: mode 0600 from the start, whole or not at all, optionally exclusive."""

from __future__ import annotations

import stat

import pytest

from photomaker_server.private_files import write_private


def test_written_private_and_replaced_whole(tmp_path):
    path = tmp_path / "deep" / "key"
    write_private(path, b"first")
    assert path.read_bytes() == b"first" and stat.S_IMODE(path.stat().st_mode) == 0o600
    write_private(path, b"second")
    assert path.read_bytes() == b"second" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["key"], "no temp file is left behind"


def test_exclusive_never_replaces(tmp_path):
    path = tmp_path / "key"
    write_private(path, b"winner", exclusive=True)
    with pytest.raises(FileExistsError):
        write_private(path, b"loser", exclusive=True)
    assert path.read_bytes() == b"winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]
