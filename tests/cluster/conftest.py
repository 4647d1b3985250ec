"""Fixtures for the multi-host tests: a private network of namespaces, and a check that nothing outlives a test.

Namespaces need root; CI runs as root. Where they cannot be made the tests FAIL with the reason, unless
``PHOTOMAKER_NO_NETNS=1`` says that this machine is known not to allow them (then they skip, with the reason).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import netns
import reaper


def require_netns() -> None:
    reason = netns.available()
    if reason is None:
        return
    if os.environ.get("PHOTOMAKER_NO_NETNS") == "1":
        pytest.skip(f"PHOTOMAKER_NO_NETNS=1 and network namespaces are unavailable: {reason}")
    pytest.fail(f"network namespaces are unavailable: {reason} (set PHOTOMAKER_NO_NETNS=1 to skip on purpose)",
                pytrace=False)


@pytest.fixture(scope="session")
def netns_ready() -> None:
    """Fails (or, with PHOTOMAKER_NO_NETNS=1, skips) when network namespaces cannot be made here."""
    require_netns()


@pytest.fixture
def network():
    """A fresh ``netns.Network``; afterwards every namespace, veth and the bridge must be gone."""
    require_netns()
    with netns.Network() as net:
        yield net
    assert net.leftovers() == []


@pytest.fixture
def netns_module():
    """The ``netns`` module, once namespaces are known to work here (fails or skips like ``network``)."""
    require_netns()
    return netns


@pytest.fixture
def no_leftovers(tmp_path: Path):
    """After the test: no process started from the test's tmp path runs, and the reaper tracks nothing live that
    the test started (session-wide servers of other test modules, already running, are not the test's)."""
    before = {p.pid for p in reaper.tracked() if p.poll() is None}
    yield tmp_path
    assert reaper.processes_mentioning(str(tmp_path)) == []
    assert [p.pid for p in reaper.tracked() if p.poll() is None and p.pid not in before] == []
