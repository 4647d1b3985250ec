"""uvicorn's settings for the API: the options handed over, and the open-file limit raised to fit
``max_connections`` (the header deadline itself is tested with real sockets in tests/service/test_connection_budgets.py)."""

from __future__ import annotations

import subprocess
import sys

from photomaker_server.api.http_server import DeadlineProtocol, uvicorn_options
from photomaker_server.settings import Settings


def test_uvicorn_gets_the_protocol_keep_alive_and_the_connection_ceiling():
    options = uvicorn_options(Settings(keep_alive_timeout_s=7, max_connections=999))
    assert options == {"http": DeadlineProtocol, "timeout_keep_alive": 7, "limit_concurrency": 999}


def test_the_open_file_limit_is_raised_to_fit_max_connections():
    script = (
        "import resource\n"
        "from photomaker_server.api.http_server import FD_RESERVE, ensure_file_limit\n"
        "from photomaker_server.settings import Settings\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "ensure_file_limit(Settings(max_connections=1000))\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], min(1000 + FD_RESERVE, hard))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got, wanted = done.stdout.split()
    assert got == wanted
