"""``photomaker keys``: the actions on managed API keys (create, list, revoke, set, usage). The command and its flags
are defined with every other command in ``cli_args`` (``KEYS_DESCRIPTION`` says what each action does)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from typing import Any

from .cli_args import CLIError, settings_from_args
from .jobs.keys import ApiKey, KeyExists, KeyLimits, UnknownKey, new_secret

__all__ = ["run_keys"]



def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _limits_text(limits: KeyLimits) -> str:
    shown = [f"{name}={value}" for name, value in limits.as_dict().items() if value is not None]
    return " ".join(shown) or "none set"  # (the deployment's per-key storage quota still applies)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def _describe(key: ApiKey) -> str:
    state = "revoked " + _when(key.revoked_at) if key.revoked else "active"
    return f"{key.name} ({key.kind}{', admin' if key.admin else ''}): {_limits_text(key.limits)}; {state}"


def run_keys(args: argparse.Namespace) -> int:
    from .deployment import open_job_database

    store, wakeups = open_job_database(settings_from_args(args))
    try:
        return _ACTIONS[args.keys_command](store, args)
    except (UnknownKey, KeyExists, ValueError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        store.close()
        wakeups.close()


def _create(store: Any, args: argparse.Namespace) -> int:
    limits = KeyLimits(**{name: getattr(args, name) for name in KeyLimits.names()})
    secret = new_secret()
    key = store.create_key(args.name, secret, limits, admin=args.admin)
    print(f"created {_describe(key)}")
    print("the key (shown only now; store it where the app reads its secrets):")
    print(secret)
    return 0


def _list(store: Any, args: argparse.Namespace) -> int:
    keys = store.list_keys()
    if args.json:
        print(json.dumps([k.public() for k in keys], indent=2))
        return 0
    rows = [["NAME", "PREFIX", "KIND", "CREATED", "LAST USED", "LIMITS", "STATE"]]
    for k in keys:
        rows.append([k.name, k.prefix or "-", k.kind + (" admin" if k.admin else ""), _when(k.created_at),
                     _when(k.last_used_at), _limits_text(k.limits), "revoked" if k.revoked else "active"])
    print(_table(rows))
    return 0


def _revoke(store: Any, args: argparse.Namespace) -> int:
    print(f"revoked {_describe(store.revoke_key(args.name))}")
    return 0


def _set(store: Any, args: argparse.Namespace) -> int:
    changes = {name: getattr(args, name) for name in KeyLimits.names() if hasattr(args, name)}
    if not changes:
        flags = ", ".join("--" + name.replace("_", "-") for name in KeyLimits.names())
        raise CLIError(f"nothing to change: give one or more of {flags}")
    print(f"updated {_describe(store.set_key_limits(args.name, changes))}")
    return 0


def _usage(store: Any, args: argparse.Namespace) -> int:
    rows = [u.as_dict() for u in store.usage(args.since)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fields = ["name", "jobs_submitted", "jobs_completed", "jobs_failed", "jobs_cancelled", "images",
              "inference_seconds"]
    print(_table([[f.upper() for f in fields], *[[str(r[f]) for f in fields] for r in rows]]))
    return 0


_ACTIONS = {"create": _create, "list": _list, "revoke": _revoke, "set": _set, "usage": _usage}
