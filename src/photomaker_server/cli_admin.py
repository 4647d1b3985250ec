"""Operator commands that read the deployment directly (its job database and secrets), not a server's HTTP API:
``photomaker login-link`` (a fresh one-time sign-in link for the web page) and ``photomaker usage`` (stored
files per key, what storage quotas count)."""

from __future__ import annotations

import json
import time

from .api.auth import KeyRing
from .api.login import login_link
from .cli_args import CLIError
from .deployment import open_deployment
from .limits import KeyedLimits
from .settings import Settings
from .shared_secrets import generated_api_key

__all__ = ["print_login_link", "print_usage"]


def print_login_link(settings: Settings) -> int:
    """A new login link for the web page (the one printed at start-up may be used or expired already)."""
    deployment = open_deployment(settings)
    try:
        keys = KeyRing(settings, generated_api_key(settings, deployment.store))
        if keys.local_key is None:
            raise CLIError("this deployment has no local key (keys are configured and the data dir has no api-key "
                           "file): the web page needs a key typed in")
        print(login_link(settings.base_url, deployment.secrets.token_secret, time.time()))
    finally:
        deployment.close()
    return 0


def print_usage(settings: Settings, as_json: bool) -> int:
    """Unexpired stored files and bytes per key against the quota, most bytes first."""
    deployment = open_deployment(settings)
    try:
        # Registers the configured keys under their names (config-N), as a server does: the names `keys list` shows.
        KeyRing(settings, generated_api_key(settings, deployment.store), deployment.store)
        keys = {key.owner: key for key in deployment.store.list_keys()}
        limits = KeyedLimits(deployment.limits, keys.get)
        usage = deployment.store.storage_usage()
        quotas = {item.owner: limits.for_owner(item.owner).storage for item in usage}
    finally:
        deployment.close()
    rows = []
    for item in usage:
        quota = quotas[item.owner]
        key = keys.get(item.owner)
        rows.append({"owner": item.owner, "key": key.name if key else None, "files": item.files, "bytes": item.bytes,
                     "max_files": quota.max_files, "max_bytes": quota.max_bytes})
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no stored files")
    for row in rows:
        line = (f"{row['owner']}  files {_of(row['files'], row['max_files'])}  "
                f"bytes {_of(row['bytes'], row['max_bytes'])}")
        print(line + (f"  ({row['key']})" if row["key"] else ""))
    return 0


def _of(used: int, cap: int | None) -> str:
    return f"{used}/{cap}" if cap is not None else str(used)
