"""``photomaker keys``: managed API keys in the job database, on the same deployment settings as ``serve``
(``--data-dir``, ``--database-url`` or their ``PHOTOMAKER_*`` variables).

    photomaker keys create NAME [--max-concurrent N] [--max-queued N] [--requests-per-minute N] [--admin]
    photomaker keys list [--json]
    photomaker keys revoke NAME
    photomaker keys set NAME [--max-concurrent N|none] [--max-queued N|none] [--requests-per-minute N|none]
    photomaker keys usage [--json] [--since YYYY-MM-DD]

Changes reach every API replica through the deployment's wake-ups (no restart). Mistakes are one ``error:`` line
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from .cli_args import CLIError, HelpFormatter, settings_from_args
from .jobs.keys import ApiKey, KeyExists, KeyLimits, UnknownKey, check_key_name, new_secret

__all__ = ["add_keys_command", "run_keys"]

_UNLIMITED = ("none", "unlimited")


def _limit(allow_none: bool, maximum: int) -> Callable[[str], int | None]:
    def parse(text: str) -> int | None:
        if allow_none and text.strip().lower() in _UNLIMITED:
            return None
        try:
            value = int(text)
        except ValueError:
            hint = " or 'none'" if allow_none else ""
            raise argparse.ArgumentTypeError(f"not a whole number{hint}: {text!r}") from None
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be between 0 and {maximum}, not {value}")
        return value

    return parse


def _name(text: str) -> str:
    try:
        return check_key_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _limit_flags(parser: argparse.ArgumentParser, allow_none: bool) -> None:
    """One ``--the-limit N`` flag per field of :class:`KeyLimits`."""
    for field, text in KeyLimits.help().items():
        # ``set``: a flag left out is absent from the namespace (SUPPRESS), so "not given" differs from "none".
        parser.add_argument("--" + field.replace("_", "-"), dest=field, metavar="N",
                            type=_limit(allow_none, KeyLimits.maximum(field)),
                            default=argparse.SUPPRESS if allow_none else None,
                            help=text + (f"; 'none': {KeyLimits.unset(field)}" if allow_none
                                         else f" (default: {KeyLimits.unset(field)})"))


def add_keys_command(sub: Any) -> None:
    """Adds ``keys`` and its actions to the ``photomaker`` parser's subcommands."""
    text = "manage API keys: create, list, revoke, change limits, usage"
    keys = sub.add_parser("keys", help=text, description=__doc__, formatter_class=HelpFormatter)
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION", help="what to do")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        group = parser.add_argument_group("deployment (as given to serve)")
        group.add_argument("--data-dir", type=Path, help="data dir whose jobs.db is the default database")
        group.add_argument("--database-url", metavar="URL", help="job database (env PHOTOMAKER_DATABASE_URL)")
        return parser

    create = action("create", "create a key; its secret is printed once, alone on the last line")
    create.add_argument("name", type=_name, help="a unique name: 1-64 letters, digits, '.', '_' or '-'")
    create.add_argument("--admin", action="store_true", help="may also manage keys over HTTP (/admin/keys)")
    _limit_flags(create, allow_none=False)
    listing = action("list", "list keys: name, prefix, created, last used, limits, revoked")
    listing.add_argument("--json", action="store_true", help="a JSON list")
    revoke = action("revoke", "refuse a key from now on, on every replica within 2 s")
    revoke.add_argument("name", help="the key's name")
    change = action("set", "change a key's limits, effective at once")
    change.add_argument("name", help="the key's name")
    _limit_flags(change, allow_none=True)
    usage = action("usage", "jobs and inference time per key")
    usage.add_argument("--json", action="store_true", help="a JSON list of objects")
    usage.add_argument("--since", type=_day, metavar="YYYY-MM-DD", help="count from this UTC day on (default: all)")


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
