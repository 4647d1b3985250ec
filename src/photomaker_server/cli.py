"""``photomaker``: generate images (in-process or through a server), run the service, inspect requests.

    photomaker generate --images a.jpg b.jpg --prompt "a photo of a man img" [--server URL]
    photomaker serve [--tiny] [--port 8000]
    photomaker status REQUEST_ID / photomaker cancel REQUEST_ID
    photomaker keys create|list|revoke|set|usage   (API keys, limits and usage; see docs/keys.md)
    photomaker tiny-model --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .cli_args import (
    CLIError,
    apply_quick_settings,
    build_parser as _build_parser,
    describe_validation,
    generation_fields,
    settings_from_args,
    write_output,
)
from .settings import Settings

__all__ = ["CLIError", "build_parser", "generation_fields", "main", "settings_from_args"]


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(description=__doc__)


def main(argv: list[str] | None = None) -> int:
    """Runs a command; output cut short by a closed pipe (``photomaker ... | head``) ends quietly with 141, as a
    program killed by SIGPIPE would (Python turns SIGPIPE into BrokenPipeError, which would print a traceback)."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a late write error surfaces here, not in the interpreter's exit handler
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # nothing left for Python to flush at exit
        return 141


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "generate":
            if args.server:
                from .client import generate_remote

                return generate_remote(args)
            return _generate_local(args)
        if args.command == "serve":
            from .server import serve

            settings = settings_from_args(args)
            if settings.api_processes > 1 and not args.no_worker:
                raise CLIError("--api-processes above 1 needs --no-worker (the GPU worker belongs to one process; "
                               "run workers with `photomaker worker`)")
            return serve(settings, run_worker=not args.no_worker, api_processes=settings.api_processes)
        if args.command == "worker":
            from .server import with_demo_fallback
            from .worker.main import run_worker

            run_worker(with_demo_fallback(settings_from_args(args)))
            return 0
        if args.command == "db":
            return _db(args)
        if args.command in ("login-link", "usage"):
            from .cli_admin import print_login_link, print_usage

            settings = settings_from_args(args)
            return print_login_link(settings) if args.command == "login-link" else print_usage(settings, args.json)
        if args.command == "keys":
            from .cli_keys import run_keys

            return run_keys(args)
        if args.command == "tiny-model":
            return _tiny_model(args)
        from .client import cancel_request, show_status

        return (show_status if args.command == "status" else cancel_request)(args)
    except KeyboardInterrupt:
        return 130
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = _deployment_problem(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def _deployment_problem(exc: Exception) -> str | None:
    """One line for the expected failures of opening a deployment; None for anything else (a real bug)."""
    from .deployment import DeploymentError
    from .jobs.records import SchemaTooNew, StoreUnavailable
    from .storage.base import StorageUnavailable

    if isinstance(exc, StoreUnavailable):
        return f"the job database cannot be reached: {exc}"
    if isinstance(exc, StorageUnavailable):
        return f"the file storage cannot be reached: {exc}"
    if isinstance(exc, (SchemaTooNew, DeploymentError)):
        return str(exc)
    return None


def _db(args: argparse.Namespace) -> int:
    """``photomaker db upgrade``: migrate the job database to this release's schema (servers also do it at start),
    and adopt a single-machine data dir's secrets into it."""
    from .deployment import open_deployment
    from .jobs.sql.schema_version import upgrade_database
    from .shared_secrets import generated_api_key

    settings = settings_from_args(args)
    try:
        before, after = upgrade_database(settings.job_database_url)
    except ValueError as exc:  # not a database URL we can use
        raise CLIError(str(exc)) from None
    deployment = open_deployment(settings)  # adopts the data dir's secrets, if any, into the database
    try:
        generated_api_key(settings, deployment.store)
    finally:
        deployment.close()
    print(f"job database schema: {before or 'empty'} -> {after}" if before != after else f"job database schema: {after} (up to date)")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    """``photomaker tiny-model --out DIR``: the demo model's files, e.g. to run another implementation on them."""
    from .engine.tiny import ensure_tiny_model, tiny_architecture

    try:
        locations = ensure_tiny_model(args.out)
    except OSError as exc:
        raise CLIError(f"cannot write the tiny model into {args.out}: {exc.strerror or exc}") from None
    print(json.dumps({**{k: str(v) for k, v in locations.items()}, "architecture": tiny_architecture()}, indent=2))
    return 0


def _read_photos(args: argparse.Namespace, settings: Settings):
    from .inputs.archives import ArchiveLimits, extract_photos
    from .inputs.errors import InputError
    from .inputs.images import ImageLimits, decode_image

    limits = ImageLimits.from_settings(settings)
    try:
        if args.archive:
            data = _read(args.archive)
            try:
                contents = extract_photos(data, ArchiveLimits.from_settings(settings))
            except InputError as exc:
                raise CLIError(f"{args.archive}: {exc}") from None
            for line in contents.skipped:
                print(line, file=sys.stderr)
            named = contents.photos
        else:
            named = [(str(p), _read(p)) for p in args.images]
        # Scaled down as the worker does, so a photo gives the same ID embedding here and on a server.
        photos = [decode_image(data, limits, what=name, fit_pixels=settings.id_photo_pixels) for name, data in named]
        initial = decode_image(_read(args.initial_image), limits, what="initial image") if args.initial_image else None
    except InputError as exc:
        raise CLIError(str(exc)) from None
    return photos, [name for name, _ in named], initial


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None


def _generate_local(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .contract.notices import DEMO_WARNING
    from .contract.request import GenerationOptions

    settings = settings_from_args(args)
    if settings.tiny:
        apply_quick_settings(args)
    try:
        options = GenerationOptions.model_validate(
            generation_fields(args),
            context={"trigger_word": settings.trigger_word, "max_num_images": settings.max_num_images,
                     "default_version": settings.default_version, "enable_v2": settings.enable_v2},
        )
    except ValidationError as exc:
        raise CLIError(describe_validation(exc)) from None
    photos, names, initial = _read_photos(args, settings)
    # torch and diffusers load only now: a mistake in the flags or the files is reported without that wait.
    from .engine.checkpoint import CheckpointError
    from .engine.errors import InvalidRequest, WeightsUnavailable
    from .engine.service import Engine, EngineConfig, GenerationRequest
    from .outputs import encode_image

    if settings.tiny:
        print(f"WARNING: {DEMO_WARNING}", file=sys.stderr)

    try:
        engine = Engine(EngineConfig.from_settings(settings))
    except ValueError as exc:  # e.g. a --device this machine does not have
        raise CLIError(str(exc)) from None
    # Progress goes to stderr: stdout carries only the image paths and the JSON summary (scriptable).
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("loading", total=None)

        def on_step(i: int, n: int) -> None:
            bar.update(task, description="denoising", completed=i, total=n)

        try:
            result = engine.generate(
                GenerationRequest(options, photos, initial, id_image_names=names),
                on_log=lambda message: bar.update(task, description=message),
                on_step=on_step,
            )
        except (InvalidRequest, WeightsUnavailable, CheckpointError) as exc:
            raise CLIError(str(exc)) from None

    for i, image in enumerate(result.images):
        data, _ = encode_image(image, args.output_format, DEMO_WARNING if result.demo_model else None)
        print(write_output(args.out, f"photomaker-{result.seed}-{i}", args.output_format, data))
    print(json.dumps({"seed": result.seed, "timings": result.timings, "demo_model": result.demo_model}))
    return 0


if __name__ == "__main__":
    # Run the package's module, not this ``__main__`` copy, so there is one CLIError class (client.py raises it).
    from photomaker_server.cli import main as package_main

    sys.exit(package_main())
