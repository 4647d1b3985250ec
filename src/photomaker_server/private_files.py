"""Files only this user may read (mode 0600): the local copy of the generated API key, the TLS private key.

One helper instead of a hand-written ``os.open(..., 0o600)`` per caller, so every secret file is created the same
careful way: written aside (never readable by others, not even for a moment), fsynced, then moved into place, so a
concurrent reader never sees half a key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically.

    ``exclusive``: never replace an existing file (FileExistsError instead), for values that processes starting
    together must agree on (the first one wins, the others read it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if the path exists, unlike rename
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
