"""``photomaker``: generate images (in-process or through a server), run the service, inspect requests.

    photomaker generate --images a.jpg b.jpg --prompt "a photo of a man img" [--server URL]
    photomaker serve [--tiny] [--port 8000]
    photomaker status REQUEST_ID / photomaker cancel REQUEST_ID
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .settings import Settings

#: CLI flag → Settings field, for the flags that configure the model or the server.
_SETTINGS_FLAGS = (
    "data_dir", "host", "port", "public_base_url", "tiny", "base_model", "style_base_model", "photomaker_checkpoint",
    "device", "trigger_word", "tls", "tls_cert", "tls_key", "demo_fallback", "log_format", "shutdown_grace_s",
)


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--base-model", help="hub id or local diffusers dir for base_pipeline 'photomaker' "
                       "(default SG161222/RealVisXL_V3.0)")
    group.add_argument("--style-base-model", help="hub id or local dir for 'photomaker-style' (default SDXL base 1.0)")
    group.add_argument("--photomaker-checkpoint", help="local file or hub 'owner/repo/file' "
                       "(default TencentARC/PhotoMaker/photomaker-v1.bin)")
    group.add_argument("--tiny", action="store_true", default=None,
                       help="use the tiny random-weight demo model (no downloads; images are noise)")
    group.add_argument("--device", help="auto (default), cuda, cuda:1, mps or cpu")
    group.add_argument("--trigger-word", help="the word that marks the person in the prompt (default img)")
    group.add_argument("--data-dir", type=Path, help="where the queue, files, keys and tiny model live (default .data)")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def _add_shutdown_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shutdown-grace", dest="shutdown_grace_s", type=_seconds, metavar="SECONDS",
                        help="on SIGTERM/SIGINT, how long the running job may take to finish before it goes back to "
                        "the queue (default 60; also PHOTOMAKER_SHUTDOWN_GRACE_S)")


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    photos = parser.add_mutually_exclusive_group(required=True)
    photos.add_argument("--images", nargs="+", type=Path, help="photos of one person")
    photos.add_argument("--archive", type=Path, help="a zip of photos of one person")
    parser.add_argument("--prompt", required=True, help="e.g. 'portrait photo of a man img, film grain'")
    parser.add_argument("--style", help="one of the 11 styles (default Photographic)")
    parser.add_argument("--base-pipeline", choices=["photomaker", "photomaker-style"])
    parser.add_argument("--initial-image", type=Path, help="start from this image (image-to-image)")
    parser.add_argument("--strength", type=float, help="initial image strength: 0 keeps it, 1 ignores it (0.5)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--steps", type=int, help="denoising steps (50)")
    parser.add_argument("--num-images", type=int, help="images in one batch (1)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--guidance", type=float, help="guidance scale (5)")
    parser.add_argument("--style-strength", type=int, help="15..50 (20)")
    parser.add_argument("--negative-prompt")
    parser.add_argument("--output-format", choices=["png", "jpeg", "webp"], default="png")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="directory for the images (outputs/)")
    parser.add_argument("--server", help="submit to a running photomaker server instead of running in-process")
    parser.add_argument("--key", help="API key for --server (default: PHOTOMAKER_KEY / FAL_KEY / the local data dir)")


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
    }
    if args.width or args.height:
        fields["image_size"] = {"width": args.width or 1024, "height": args.height or 1024}
    return {k: v for k, v in fields.items() if v is not None}


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in _SETTINGS_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "api_key", None):
        given["api_keys"] = args.api_key
    return Settings(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="photomaker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images of a person")
    _add_generation_flags(gen)
    _add_model_flags(gen)

    serve = sub.add_parser("serve", help="run the HTTP service (API + GPU worker)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--public-base-url", help="absolute URL clients reach this server at (for returned URLs)")
    serve.add_argument("--api-key", action="append", help="accepted API key (repeatable; also PHOTOMAKER_API_KEYS)")
    serve.add_argument("--tls", action="store_true", default=None, help="serve HTTPS (self-signed cert unless given)")
    serve.add_argument("--tls-cert", type=Path)
    serve.add_argument("--tls-key", type=Path)
    serve.add_argument("--log-format", choices=["text", "json"], help="json: one object per line (default text)")
    serve.add_argument("--no-worker", action="store_true", help="API only (workers run elsewhere)")
    serve.add_argument("--no-demo-fallback", dest="demo_fallback", action="store_false", default=None,
                       help="fail at start-up when the real weights cannot be had (default: serve the demo model)")
    _add_shutdown_flag(serve)
    _add_model_flags(serve)

    worker = sub.add_parser("worker", help="run a GPU worker against a data dir (no HTTP)")
    _add_shutdown_flag(worker)
    _add_model_flags(worker)

    for name, text in (("status", "show a request's status and logs"), ("cancel", "cancel a request")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("request_id")
        cmd.add_argument("--server", default=os.environ.get("PHOTOMAKER_SERVER", "http://127.0.0.1:8000"))
        cmd.add_argument("--key")
        cmd.add_argument("--data-dir", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
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

            return serve(settings_from_args(args), run_worker=not args.no_worker)
        if args.command == "worker":
            from .jobs.worker import run_worker
            from .server import with_demo_fallback

            run_worker(with_demo_fallback(settings_from_args(args)))
            return 0
        from .client import cancel_request, show_status

        return (show_status if args.command == "status" else cancel_request)(args)
    except KeyboardInterrupt:
        return 130
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class CLIError(Exception):
    """A problem to report in one line, without a traceback."""


def _read_photos(args: argparse.Namespace, settings: Settings):
    from .inputs.archives import ArchiveLimits, extract_photos
    from .inputs.errors import InputError
    from .inputs.images import ImageLimits, decode_image

    limits = ImageLimits.from_settings(settings)
    try:
        if args.archive:
            contents = extract_photos(_read(args.archive), ArchiveLimits.from_settings(settings))
            for line in contents.skipped:
                print(line, file=sys.stderr)
            named = contents.photos
        else:
            named = [(str(p), _read(p)) for p in args.images]
        photos = [decode_image(data, limits, what=name) for name, data in named]
        initial = decode_image(_read(args.initial_image), limits, what="initial image") if args.initial_image else None
    except InputError as exc:
        raise CLIError(str(exc)) from None
    return photos, initial


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror}") from None


def _generate_local(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .engine.errors import InvalidRequest, WeightsUnavailable
    from .engine.options import GenerationOptions, error_details
    from .engine.service import Engine, EngineConfig, GenerationRequest
    from .engine.demo import DEMO_WARNING
    from .outputs import encode_image

    settings = settings_from_args(args)
    try:
        options = GenerationOptions.model_validate(
            generation_fields(args),
            context={"trigger_word": settings.trigger_word, "max_num_images": settings.max_num_images},
        )
    except ValidationError as exc:
        raise CLIError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error_details(exc))) from None
    photos, initial = _read_photos(args, settings)
    if settings.tiny:
        print(f"WARNING: {DEMO_WARNING}", file=sys.stderr)

    engine = Engine(EngineConfig.from_settings(settings))
    # Progress goes to stderr: stdout carries only the image paths and the JSON summary (scriptable).
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("loading", total=None)

        def on_step(i: int, n: int) -> None:
            bar.update(task, description="denoising", completed=i, total=n)

        try:
            result = engine.generate(
                GenerationRequest(options, photos, initial),
                on_log=lambda message: bar.update(task, description=message),
                on_step=on_step,
            )
        except (InvalidRequest, WeightsUnavailable) as exc:
            raise CLIError(str(exc)) from None

    args.out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(result.images):
        data, _ = encode_image(image, args.output_format, DEMO_WARNING if result.demo_model else None)
        path = args.out / f"photomaker-{result.seed}-{i}.{'jpg' if args.output_format == 'jpeg' else args.output_format}"
        path.write_bytes(data)
        print(path)
    print(json.dumps({"seed": result.seed, "timings": result.timings, "demo_model": result.demo_model}))
    return 0


if __name__ == "__main__":
    # Run the package's module, not this ``__main__`` copy, so there is one CLIError class (client.py raises it).
    from photomaker_server.cli import main as package_main

    sys.exit(package_main())
