"""Finding the weights: a Hugging Face hub id (downloaded once into the hub cache, with a progress bar) or a local
directory/file for offline deployments.

When weights cannot be had, fail at once with what was tried and how to point at local files, instead of a
connection traceback from deep inside the hub client.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import WeightsUnavailable

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    "If this machine cannot reach huggingface.co, download the weights elsewhere and point at them: "
    "--base-model /path/to/diffusers-dir, --style-base-model /path/to/diffusers-dir, "
    "--photomaker-checkpoint /path/to/photomaker-v1.bin, --photomaker-v2-checkpoint /path/to/photomaker-v2.bin, "
    "--face-model /path/to/buffalo_l (or the PHOTOMAKER_* environment variables). "
    "To try the service without weights, use --tiny (random-weight demo model)."
)


def _looks_local(location: str) -> bool:
    return location.startswith(("/", "./", "../", "~")) or os.sep in location and Path(location).exists()


def resolve_base_model(location: str, variant: str | None = None) -> Path:
    """A local diffusers directory for ``location`` (a directory, or a hub repo id to download)."""
    path = Path(location).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise WeightsUnavailable(f"{path} is not a diffusers model directory (no model_index.json)")
        return path
    if _looks_local(location):
        raise WeightsUnavailable(f"base model directory {path} does not exist. {OFFLINE_HINT}")
    from diffusers import StableDiffusionXLPipeline

    log.info("fetching base model %s from the Hugging Face hub (cached after the first time)", location)
    errors = []
    for candidate in ([variant, None] if variant else [None]):
        try:
            return Path(StableDiffusionXLPipeline.download(location, variant=candidate, use_safetensors=True))
        except Exception as exc:  # network, auth, missing variant: report all tries together
            errors.append(f"{'variant ' + candidate if candidate else 'default files'}: {type(exc).__name__}: {exc}")
    raise WeightsUnavailable(f"could not get base model {location!r} from the hub ({'; '.join(errors)}). {OFFLINE_HINT}")


def resolve_checkpoint(location: str) -> Path:
    """A local PhotoMaker checkpoint file for ``location`` (a file path, or ``owner/repo/file`` on the hub)."""
    path = Path(location).expanduser()
    if path.is_file():
        return path
    parts = location.split("/")
    if _looks_local(location) or len(parts) < 3:
        raise WeightsUnavailable(f"PhotoMaker checkpoint {location} does not exist. {OFFLINE_HINT}")
    from huggingface_hub import hf_hub_download

    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    log.info("fetching %s from hub repo %s (cached after the first time)", filename, repo_id)
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not get {filename!r} from hub repo {repo_id!r} ({type(exc).__name__}: {exc}). {OFFLINE_HINT}"
        ) from None


def unavailable_weights(locations: list[str], timeout_s: float = 5.0) -> list[str]:
    """Quick check before starting a service: which locations can certainly not be had (with why).

    Local paths must exist; hub ids must be in the local hub cache or answer on the hub within ``timeout_s``.
    Torch-free and fast, so ``serve`` can decide at start-up whether to fall back to the demo model.
    """
    problems = []
    for location in locations:
        path = Path(location).expanduser()
        if path.exists():
            continue
        if _looks_local(location):
            problems.append(f"{location}: no such file or directory")
            continue
        parts = location.split("/")
        repo_id = "/".join(parts[:2])
        filename = "/".join(parts[2:]) or "model_index.json"
        try:
            from huggingface_hub import HfApi, try_to_load_from_cache

            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                continue
            HfApi().model_info(repo_id, timeout=timeout_s)
        except Exception as exc:  # offline, DNS failure, gated repo ...
            problems.append(f"{location}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    return problems
