"""Reading and checking PhotoMaker checkpoint files.

Two layouts carry the same tensors:

* the published torch pickle (``photomaker-v1.bin``): ``{"id_encoder": {...}, "lora_weights": {...}}``;
* a flat ``.safetensors`` file whose keys are prefixed ``id_encoder.`` / ``lora_weights.``.

Both versions use these layouts; a v2 ID encoder is recognised by its ``qformer_perceiver.*`` tensors, and a file of
one version given where the other is expected is refused in one line (the LoRA of either would load silently into
the wrong encoder's UNet otherwise).

Pickles are read with ``weights_only=True`` (no code runs from the file). Every problem is raised as a
``CheckpointError`` that names the file and the offending keys, because a raw ``load_state_dict`` traceback
tells an operator nothing about which download went wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .id_encoder import IDEncoderConfig, PhotoMakerIDEncoder
from .id_encoder_v2 import IDEncoderV2Config, PhotoMakerIDEncoderV2

SECTIONS = ("id_encoder", "lora_weights")
#: Buffers older transformers saved that the model no longer keeps; harmless when present.
_IGNORED_KEYS = re.compile(r"vision_model\.embeddings\.position_ids$")
_LORA_KEY = re.compile(r"^unet\..+\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$")
_SHOW = 8


class CheckpointError(ValueError):
    """A PhotoMaker checkpoint that cannot be used, with the reason in words."""


#: How the two versions are told apart, and the flag each one is given with (for the error message).
VERSION_FLAGS = {"v1": "--photomaker-checkpoint", "v2": "--photomaker-v2-checkpoint"}


@dataclass
class PhotoMakerCheckpoint:
    id_encoder: dict[str, torch.Tensor]
    lora_weights: dict[str, torch.Tensor]
    path: Path

    @property
    def version(self) -> str:
        """"v2" when the ID encoder has the face-embedding perceiver, else "v1"."""
        return "v2" if any(k.startswith("qformer_perceiver.") for k in self.id_encoder) else "v1"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" (and {len(keys) - _SHOW} more)" if len(keys) > _SHOW else "")


def read_checkpoint(path: str | Path, version: str | None = None) -> PhotoMakerCheckpoint:
    """Read and check a checkpoint; with ``version``, refuse a file of the other version."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"PhotoMaker checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path))
            sections: dict[str, dict[str, torch.Tensor]] = {name: {} for name in SECTIONS}
            stray = []
            for key, tensor in flat.items():
                section, _, rest = key.partition(".")
                if section in sections and rest:
                    sections[section][rest] = tensor
                else:
                    stray.append(key)
            if stray:
                raise CheckpointError(
                    f"{path}: keys must start with 'id_encoder.' or 'lora_weights.'; found {_listing(stray)}"
                )
            raw: object = sections
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt zip, truncated pickle, unsafe pickle content, bad header ...
        raise CheckpointError(f"{path} is not a readable PhotoMaker checkpoint ({type(exc).__name__}: {exc})") from None

    if not isinstance(raw, dict) or set(raw) != set(SECTIONS):
        found = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: expected top-level keys {list(SECTIONS)}, found {found}")
    for section in SECTIONS:
        if not isinstance(raw[section], dict) or not raw[section]:
            raise CheckpointError(f"{path}: section {section!r} is empty or not a dict of tensors")
    lora = raw["lora_weights"]
    bad_lora = sorted(k for k in lora if not _LORA_KEY.match(k))
    if bad_lora:
        raise CheckpointError(
            f"{path}: lora_weights keys must use the attention-processor naming "
            f"('unet.<block>.attn1.processor.to_q_lora.down.weight'); found {_listing(bad_lora)}"
        )
    checkpoint = PhotoMakerCheckpoint(id_encoder=raw["id_encoder"], lora_weights=lora, path=path)
    if version is not None and checkpoint.version != version:
        raise CheckpointError(
            f"{path} is a PhotoMaker {checkpoint.version} checkpoint, but it was given as the {version} one "
            f"(use {VERSION_FLAGS[checkpoint.version]} for it)"
        )
    return checkpoint


def build_id_encoder(
    checkpoint: PhotoMakerCheckpoint, text_widths: tuple[int, int] | None = None
) -> PhotoMakerIDEncoder | PhotoMakerIDEncoderV2:
    """Build the ID encoder (v1 or v2, as the checkpoint says) the checkpoint describes and load it strictly.

    ``text_widths`` are the hidden widths of the base model's two text encoders; the ID embedding is written into
    their concatenated hidden states, so the projections must produce exactly those widths.
    """
    state = {k: v for k, v in checkpoint.id_encoder.items() if not _IGNORED_KEYS.search(k)}
    version = checkpoint.version
    try:
        config = IDEncoderV2Config.from_state_dict(state) if version == "v2" else IDEncoderConfig.from_state_dict(state)
    except ValueError as exc:
        raise CheckpointError(f"{checkpoint.path}: id_encoder {exc}") from None
    vision = config.vision if isinstance(config, IDEncoderV2Config) else config
    if text_widths is not None and (vision.projection_dim, vision.projection_dim_2) != tuple(text_widths):
        raise CheckpointError(
            f"{checkpoint.path}: the ID encoder projects to widths {vision.projection_dim}+{vision.projection_dim_2}, "
            f"but the base model's text encoders are {text_widths[0]}+{text_widths[1]} wide "
            "(is this checkpoint made for this base model?)"
        )
    model = PhotoMakerIDEncoderV2(config) if isinstance(config, IDEncoderV2Config) else PhotoMakerIDEncoder(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if misshapen:
        problems.append(f"wrong shapes: {_listing(misshapen)}")
    if problems:
        raise CheckpointError(f"{checkpoint.path}: id_encoder does not match PhotoMaker {version}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_checkpoint(path: str | Path, id_encoder: dict[str, torch.Tensor], lora_weights: dict[str, torch.Tensor]) -> Path:
    """Write a checkpoint in the layout its suffix names (``.safetensors`` flat, anything else a torch pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {f"id_encoder.{k}": v.contiguous() for k, v in id_encoder.items()}
        flat.update({f"lora_weights.{k}": v.contiguous() for k, v in lora_weights.items()})
        save_file(flat, str(path))
    else:
        torch.save({"id_encoder": id_encoder, "lora_weights": lora_weights}, path)
    return path
