"""The ``photomaker`` command line: flags, their help and defaults, and what they turn into (Settings, fal fields).

Kept apart from ``cli.py`` (which runs the commands) so that ``client.py`` can share the flag handling without an
import cycle, and so that ``photomaker --help`` stays fast: nothing here imports torch.

Defaults shown in ``--help`` come from where they really live (``Settings`` for the service and model flags,
``GenerationOptions`` for the generation flags), so the help text can never drift from the behaviour. Flags whose
default is "not given" stay ``None`` in the namespace: an unset generation flag is left out of the request, so
the server (or the engine) applies its own default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from .contract.request import GenerationOptions, ImageSize, error_details
from .contract.styles import style_names
from .jobs.keys import KeyLimits, check_key_name
from .settings import Settings

#: CLI flag → Settings field, for the flags that configure the model or the server.
SETTINGS_FLAGS = (
    "data_dir", "host", "port", "public_base_url", "tiny", "base_model", "style_base_model", "photomaker_checkpoint",
    "photomaker_v2_checkpoint", "face_model", "default_version", "enable_v2",
    "device", "trigger_word", "tls", "tls_cert", "tls_key", "demo_fallback", "log_format", "fetch_allow",
    "max_request_bytes", "database_url", "storage_url", "shutdown_grace_s", "api_processes", "prefetch_depth",
)

#: fal field → the flag that sets it, so that validation errors name what the user typed.
FLAG_FOR_FIELD = {
    "prompt": "--prompt", "style": "--style", "base_pipeline": "--base-pipeline",
    "initial_image_strength": "--strength", "seed": "--seed", "num_inference_steps": "--steps",
    "num_images": "--num-images", "guidance_scale": "--guidance", "style_strength": "--style-strength",
    "negative_prompt": "--negative-prompt", "width": "--width", "height": "--height",
    "photomaker_version": "--photomaker-version",
}

#: What ``generate --tiny`` uses when --steps/--width/--height are not given: the demo model's images are noise, so
#: full-size SDXL settings would only make a CPU user wait for noise.
QUICK_STEPS = 10
QUICK_SIZE = 256


class CLIError(Exception):
    """A problem to report in one line, without a traceback."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where a flag has a real default; flags that default to "unset" (None, or a
    store_true's False) keep their help as written, which says what happens when they are left out."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or isinstance(action, argparse._HelpAction):
            return action.help or ""
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to ``--help`` (the full usage of ``generate`` is a
    screenful that buries the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _setting(name: str) -> Any:
    """A Settings field's built-in default, for help texts (the environment variable may override it)."""
    return Settings.model_fields[name].default


def _option(name: str) -> Any:
    return GenerationOptions.model_fields[name].default


def _env(name: str) -> str:
    return f"env PHOTOMAKER_{name.upper()}"


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--base-model", metavar="REPO_OR_DIR",
                       help=f"hub id or local diffusers dir for base_pipeline 'photomaker' "
                            f"(default: {_setting('base_model')}; {_env('base_model')})")
    group.add_argument("--style-base-model", metavar="REPO_OR_DIR",
                       help=f"hub id or local diffusers dir for base_pipeline 'photomaker-style' "
                            f"(default: {_setting('style_base_model')}; {_env('style_base_model')})")
    group.add_argument("--photomaker-checkpoint", metavar="FILE_OR_REPO_FILE",
                       help=f"local .bin/.safetensors file or hub 'owner/repo/file' "
                            f"(default: {_setting('photomaker_checkpoint')})")
    group.add_argument("--photomaker-v2-checkpoint", metavar="FILE_OR_REPO_FILE",
                       help=f"PhotoMaker v2: local .bin/.safetensors file or hub 'owner/repo/file' "
                            f"(default: {_setting('photomaker_v2_checkpoint')}; {_env('photomaker_v2_checkpoint')})")
    group.add_argument("--face-model", metavar="DIR",
                       help="PhotoMaker v2: directory holding an InsightFace model pack's .onnx files (default: the "
                            f"buffalo_l pack InsightFace downloads; {_env('face_model')}). InsightFace's models are "
                            "licensed for non-commercial research only")
    group.add_argument("--tiny", action="store_true", default=None,
                       help="use the tiny random-weight demo model: no downloads, images are coloured noise")
    group.add_argument("--device", help=f"auto, cuda, cuda:1, mps or cpu (default: {_setting('device')})")
    group.add_argument("--trigger-word", help=f"the word that marks the person in the prompt "
                                              f"(default: {_setting('trigger_word')})")
    group.add_argument("--data-dir", type=Path, help=f"where the queue, files, keys and tiny model live "
                                                     f"(default: {_setting('data_dir')}; {_env('data_dir')})")


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    photos = parser.add_mutually_exclusive_group(required=True)
    photos.add_argument("--images", nargs="+", type=Path, metavar="PHOTO", help="photos of one person")
    photos.add_argument("--archive", type=Path, metavar="ZIP", help="a zip of photos of one person")
    parser.add_argument("--prompt", required=True,
                        help="name the person with a class word and the trigger word, e.g. "
                             "'portrait photo of a man img, film grain'")
    parser.add_argument("--style", choices=style_names(), metavar="STYLE",
                        help=f"style template; one of: {', '.join(style_names())} (default: {_option('style')})")
    parser.add_argument("--photomaker-version", choices=["v1", "v2"],
                        help="v1 (fal's model) or v2 (adds an InsightFace face embedding; photos without a face are "
                             "skipped) (default: the server's, v1 unless PHOTOMAKER_DEFAULT_VERSION says otherwise)")
    parser.add_argument("--base-pipeline", choices=["photomaker", "photomaker-style"],
                        help=f"realistic or stylised base model (default: {_option('base_pipeline')})")
    parser.add_argument("--initial-image", type=Path, metavar="IMAGE", help="start from this image (image-to-image)")
    parser.add_argument("--strength", type=float,
                        help=f"initial image strength: 0 keeps it, 1 ignores it "
                             f"(default: {_option('initial_image_strength')})")
    parser.add_argument("--seed", type=int, help="same seed and settings give the same images (default: random)")
    parser.add_argument("--steps", type=int, help=f"denoising steps, 1..100 (default: {_option('num_inference_steps')};"
                                                  f" with --tiny in-process: {QUICK_STEPS})")
    parser.add_argument("--num-images", type=int, help=f"images in one batch (default: {_option('num_images')})")
    parser.add_argument("--width", type=int, help="output width in pixels, a multiple of 8 (default: 1024, or the "
                                                  f"initial image's aspect ratio; with --tiny in-process: {QUICK_SIZE})")
    parser.add_argument("--height", type=int, help="output height in pixels, a multiple of 8 (default: as --width)")
    parser.add_argument("--guidance", type=float, help=f"guidance scale, 0.1..10 (default: {_option('guidance_scale')})")
    parser.add_argument("--style-strength", type=int,
                        help=f"percent of steps on the text alone, 15..50 (default: {_option('style_strength')})")
    parser.add_argument("--negative-prompt", help="what the image should not show (default: none)")
    parser.add_argument("--output-format", choices=["png", "jpeg", "webp"], default="png", help="image file format")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="directory for the images")
    parser.add_argument("--server", metavar="URL",
                        help="submit to a running photomaker server instead of running in-process")
    parser.add_argument("--key", help="API key for --server (default: PHOTOMAKER_KEY, FAL_KEY, or the data dir's "
                                      "api-key file)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def add_shutdown_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shutdown-grace", dest="shutdown_grace_s", type=_seconds, metavar="SECONDS",
                        help=f"on SIGTERM/SIGINT, how long the running job may take to finish before it goes back to "
                             f"the queue (default: {_setting('shutdown_grace_s')}; env PHOTOMAKER_SHUTDOWN_GRACE_S)")


def add_prefetch_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefetch-depth", dest="prefetch_depth", type=_depth, metavar="N",
                        help=f"jobs the worker claims ahead of the one on its device, reading their inputs meanwhile "
                             f"(0: off; default: {_setting('prefetch_depth')}; env PHOTOMAKER_PREFETCH_DEPTH)")


def _depth(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 8:
        raise argparse.ArgumentTypeError(f"must be 0 to 8, not {value}")
    return value


def add_deployment_flags(parser: argparse.ArgumentParser) -> None:
    """What every process of one deployment (API replicas, workers) must be given alike."""
    group = parser.add_argument_group("deployment (the same on every API replica and worker)")
    group.add_argument("--database-url", metavar="URL",
                       help="job database: postgresql://user:pass@host/db for several machines (env "
                            "PHOTOMAKER_DATABASE_URL; default: the SQLite file jobs.db in the data dir)")
    group.add_argument("--storage-url", metavar="URL",
                       help="file storage: s3://bucket/prefix, endpoint and credentials from the AWS_* variables "
                            "(env PHOTOMAKER_STORAGE_URL; default: files/ in the data dir)")
    group.add_argument("--fetch-allow", action="append", metavar="HOST_OR_CIDR",
                       help="an internal host or network that input URLs and webhooks may reach (repeatable; "
                            "also PHOTOMAKER_FETCH_ALLOW, comma-separated)")


#: ``photomaker keys --help`` (the actions themselves are in :mod:`.cli_keys`).
KEYS_DESCRIPTION = """``photomaker keys``: managed API keys in the job database, on the same deployment settings as ``serve``
(``--data-dir``, ``--database-url`` or their ``PHOTOMAKER_*`` variables).

    photomaker keys create NAME [--max-concurrent N] [--max-queued N] [--requests-per-minute N] [--admin]
    photomaker keys list [--json]
    photomaker keys revoke NAME
    photomaker keys set NAME [--max-concurrent N|none] [--max-queued N|none] [--requests-per-minute N|none]
    photomaker keys usage [--json] [--since YYYY-MM-DD]

Changes reach every API replica through the deployment's wake-ups (no restart). Mistakes are one ``error:`` line
and exit status 2.
"""

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
    keys = sub.add_parser("keys", help=text, description=KEYS_DESCRIPTION, formatter_class=HelpFormatter)
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


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="photomaker", description=description, formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (every HTTP request, ...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)

    gen = command("generate", "generate images of a person (in-process, or on a server with --server)")
    add_generation_flags(gen)
    add_model_flags(gen)

    serve = command("serve", "run the HTTP service (API + GPU worker)")
    serve.add_argument("--host", help=f"address to listen on (default: {_setting('host')}; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, help=f"port to listen on (default: {_setting('port')})")
    serve.add_argument("--public-base-url", metavar="URL",
                       help="absolute URL clients reach this server at, for the URLs it returns "
                            "(default: derived from --host/--port)")
    serve.add_argument("--api-key", action="append", metavar="KEY",
                       help="accepted API key, repeatable (default: PHOTOMAKER_API_KEYS, else a generated key in the "
                            "data dir)")
    serve.add_argument("--tls", action="store_true", default=None,
                       help="serve HTTPS (a self-signed certificate in the data dir unless --tls-cert/--tls-key)")
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="certificate for --tls")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="private key for --tls")
    serve.add_argument("--log-format", choices=["text", "json"],
                       help=f"json: one object per line for log collectors (default: {_setting('log_format')})")
    serve.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    serve.add_argument("--api-processes", type=_positive_int, metavar="K",
                       help="with --no-worker: K API processes share the port (each opens its own connections to "
                            "the database and storage; use with --database-url; their log lines name their pid) "
                            f"(default: {_setting('api_processes')}; {_env('api_processes')})")
    serve.add_argument("--no-demo-fallback", dest="demo_fallback", action="store_false", default=None,
                       help="fail at start-up when the real weights cannot be had (default: serve the demo model)")
    serve.add_argument("--default-version", choices=["v1", "v2"],
                       help=f"photomaker_version of requests that name none "
                            f"(default: {_setting('default_version')}; {_env('default_version')})")
    serve.add_argument("--no-v2", dest="enable_v2", action="store_false", default=None,
                       help="refuse photomaker_version 'v2' (422); env PHOTOMAKER_ENABLE_V2=false")
    serve.add_argument("--max-request-bytes", type=int, metavar="BYTES",
                       help=f"largest request body accepted, answered 413 beyond it "
                            f"(default: {_setting('max_request_bytes')}; env PHOTOMAKER_MAX_REQUEST_BYTES)")
    add_shutdown_flag(serve)
    add_prefetch_flag(serve)
    add_deployment_flags(serve)
    add_model_flags(serve)

    worker = command("worker", "run a GPU worker: claims jobs from the job database (no HTTP)")
    add_shutdown_flag(worker)
    add_prefetch_flag(worker)
    add_deployment_flags(worker)
    add_model_flags(worker)

    tiny = command("tiny-model", "write the tiny random-weight demo model to a directory (two bases, the v1 and v2 "
                                 "checkpoints, a tiny InsightFace-shaped face pack) and print where each part is")
    tiny.add_argument("--out", type=Path, required=True, metavar="DIR",
                      help="directory to write into (reused when it already holds this version of the tiny model)")

    db = command("db", "manage the job database")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION", help="what to do")
    upgrade = db_sub.add_parser("upgrade", help="apply pending schema migrations (servers also do it at start) and "
                                "adopt a single-machine data dir's secrets", formatter_class=HelpFormatter,
                                description="apply pending schema migrations and adopt a data dir's secrets")
    add_deployment_flags(upgrade)
    upgrade.add_argument("--data-dir", type=Path, help=f"data dir whose secrets to adopt, and whose jobs.db is the "
                                                       f"default database (default: {_setting('data_dir')})")

    link = command("login-link", "print a fresh one-time link that signs the web page in with the local key")
    link.add_argument("--host", help=f"the server's address, as given to serve (default: {_setting('host')})")
    link.add_argument("--port", type=int, help=f"the server's port, as given to serve (default: {_setting('port')})")
    link.add_argument("--public-base-url", metavar="URL", help="the server's public URL, as given to serve")
    link.add_argument("--tls", action="store_true", default=None, help="the server serves HTTPS")
    usage = command("usage", "show stored files and bytes per key, against the storage quota")
    usage.add_argument("--json", action="store_true", help="one JSON list instead of lines")
    for admin in (link, usage):
        add_deployment_flags(admin)
        admin.add_argument("--data-dir", type=Path, help=f"the data dir (default: {_setting('data_dir')})")
    add_keys_command(sub)

    default_server = os.environ.get("PHOTOMAKER_SERVER", "http://127.0.0.1:8000")
    for name, text in (("status", "show a request's status and logs"), ("cancel", "cancel a request")):
        cmd = command(name, text)
        cmd.add_argument("request_id", help="the request_id that submit (or generate --server) printed")
        cmd.add_argument("--server", default=default_server, metavar="URL",
                         help="the photomaker server (env PHOTOMAKER_SERVER)")
        cmd.add_argument("--key", help="API key (default: PHOTOMAKER_KEY, FAL_KEY, or the data dir's api-key file)")
        cmd.add_argument("--data-dir", type=Path, help=f"where to find the api-key file "
                                                       f"(default: {_setting('data_dir')})")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in SETTINGS_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "api_key", None):
        given["api_keys"] = args.api_key
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise CLIError(describe_validation(exc)) from None


def describe_validation(exc: ValidationError) -> str:
    """One line for a pydantic error, naming the CLI flag where there is one: ``--steps (num_inference_steps): ...``."""
    parts = []
    for error in error_details(exc):
        loc = [str(p) for p in error["loc"]]
        # The innermost location a flag sets (image_size.width → --width), else the dotted location.
        field = next((part for part in reversed(loc) if part in FLAG_FOR_FIELD), None)
        if field is None:
            label = ".".join(loc)
        else:
            flag = FLAG_FOR_FIELD[field]
            label = flag if flag[2:] == field else f"{flag} ({field})"
        parts.append(f"{label}: {error['msg']}" if label else error["msg"])
    return "; ".join(parts)


def check_size(args: argparse.Namespace) -> tuple[int, int] | None:
    """(width, height) from --width/--height (one alone: a square), checked with the model's own rule so that a
    bad value is one message about the flag (the request's ``image_size`` is a union, whose errors would name
    every branch)."""
    given = {name: value for name in ("width", "height") if (value := getattr(args, name)) is not None}
    if not given:
        return None
    try:
        ImageSize.model_validate(given)
    except ValidationError as exc:
        raise CLIError(describe_validation(exc)) from None
    width = given.get("width", given.get("height"))
    height = given.get("height", width)
    return width, height


def apply_quick_settings(args: argparse.Namespace) -> None:
    """``generate --tiny`` (in-process) without --steps/--width/--height: small, fast settings, said on stderr."""
    chosen = []
    if args.steps is None:
        args.steps = QUICK_STEPS
        chosen.append(f"--steps {QUICK_STEPS}")
    if args.width is None and args.height is None:
        args.width = args.height = QUICK_SIZE
        chosen.append(f"--width {QUICK_SIZE} --height {QUICK_SIZE}")
    if chosen:
        print(f"--tiny: quick settings {' '.join(chosen)} (pass --steps/--width/--height to change them)",
              file=sys.stderr)


def generation_fields(args: argparse.Namespace) -> dict:
    """The request's generation fields (fal names) from the CLI flags that were given."""
    fields = {
        "prompt": args.prompt,
        "style": args.style,
        "base_pipeline": args.base_pipeline,
        "initial_image_strength": args.strength,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "num_images": args.num_images,
        "guidance_scale": args.guidance,
        "style_strength": args.style_strength,
        "negative_prompt": args.negative_prompt,
        "photomaker_version": args.photomaker_version,
    }
    size = check_size(args)
    if size:
        fields["image_size"] = {"width": size[0], "height": size[1]}
    return {k: v for k, v in fields.items() if v is not None}


def write_output(folder: Path, stem: str, output_format: str, data: bytes) -> Path:
    """Writes one image into ``folder`` (created if needed); a folder that cannot be written is a one-line error."""
    path = folder / f"{stem}.{'jpg' if output_format == 'jpeg' else output_format}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
