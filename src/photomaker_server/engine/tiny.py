"""A tiny random-weight PhotoMaker, built in code and saved in the real on-disk layouts.

It exists so that tests and offline demos run the *real* loading path (a diffusers directory for the base model,
a ``photomaker-v1.bin``-style checkpoint with the same keys) on a machine that cannot download 8 GB of weights.
The tokenizers are real: CLIP's BPE vocabulary ships with this package (``engine/data``, MIT, see
``LICENSE-clip-bpe.txt`` there), so ``pip install`` alone gives a working demo. Every weight is random
(fixed seeds), so images made with it are coloured noise and resemble no one; everything that runs on it says so.

Two bases are built (``realistic`` and ``style``, different seeds) so that ``base_pipeline`` visibly matters, with
a v1 and a v2 checkpoint (``photomaker-tiny-v1.bin``, ``photomaker-tiny-v2.bin``: the published key layouts) and a
tiny InsightFace-shaped face model pack (``faces/``, see ``tiny_faces.py``) for v2.

The text encoders are 64 wide each, so the ID width is 128: v2's perceiver has one attention head of 128, by the
reference's own rule (heads = width // 128), and the reference implementation can be run on these files by
setting its size constants to the ones below (``tiny_architecture()``).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .checkpoint import save_checkpoint
from ..contract.notices import DEMO_WARNING
from .tiny_faces import save_face_pack
from .id_encoder import IDEncoderConfig, PhotoMakerIDEncoder
from .id_encoder_v2 import IDEncoderV2Config, PhotoMakerIDEncoderV2

log = logging.getLogger(__name__)
TINY_VERSION = 2
TEXT_WIDTH = 64  # both tiny text encoders; the ID embedding is 2 * TEXT_WIDTH wide
TIME_EMBED = 8
LORA_RANK = 4

#: The scheduler config of SDXL base 1.0 (what RealVisXL ships too).
SDXL_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    timestep_spacing="leading",
    steps_offset=1,
    interpolation_type="linear",
    use_karras_sigmas=False,
)


#: CLIP's BPE vocabulary (OpenAI CLIP, MIT; the copy distributed in the open_clip_torch wheel), shipped as package data.
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-entry vocabulary and its merges, read from the copy shipped in this package."""
    path = resources.files("photomaker_server.engine") / "data" / CLIP_BPE_FILE
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        lines = text.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = _bytes_to_unicode()
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's reversible mapping of the 256 byte values to printable characters, in vocabulary order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _tokenizer(pad_token: str) -> CLIPTokenizer:
    vocab, merges = clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token=pad_token, model_max_length=77)


def _text_config(**extra: object) -> CLIPTextConfig:
    # bos/eos/pad ids as in SDXL's text encoder configs (eos_token_id=2 selects argmax pooling, as on the hub).
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        **extra,
    )


def build_base(seed: int) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    text_encoder = CLIPTextModel(_text_config(hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=TEXT_WIDTH))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer("<|endoftext|>"),
        tokenizer_2=_tokenizer("!"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )


def tiny_id_encoder_config() -> IDEncoderConfig:
    return IDEncoderConfig(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=1,  # what IDEncoderConfig.from_state_dict infers for width 32
        num_hidden_layers=2,
        patch_size=14,
        image_size=224,
        projection_dim=TEXT_WIDTH,
        projection_dim_2=TEXT_WIDTH,
    )


def tiny_id_encoder_v2_config() -> IDEncoderV2Config:
    return IDEncoderV2Config(vision=tiny_id_encoder_config())


def tiny_architecture() -> dict[str, object]:
    """The sizes of the tiny ID encoders, for running another implementation (e.g. the reference) on the files."""
    vision = tiny_id_encoder_config()
    v2 = tiny_id_encoder_v2_config()
    return {
        "vision_tower": {"hidden_size": vision.hidden_size, "intermediate_size": vision.intermediate_size,
                         "num_attention_heads": vision.num_attention_heads, "num_hidden_layers": vision.num_hidden_layers,
                         "patch_size": vision.patch_size, "image_size": vision.image_size,
                         "projection_dim": vision.projection_dim, "hidden_act": "quick_gelu"},
        "visual_projection_2": [vision.hidden_size, vision.projection_dim_2],
        "fuse_module_width": vision.embed_dim,
        "v2_perceiver": {"id_embeddings_dim": v2.id_embed_dim, "cross_attention_dim": v2.embed_dim,
                         "num_tokens": v2.num_tokens, "embedding_dim": vision.hidden_size, "depth": v2.depth,
                         "dim_head": 128, "heads": v2.heads, "ff_mult": v2.ff_mult, "ratio": v2.token_proj_ratio},
    }


def build_checkpoint_tensors(unet: UNet2DConditionModel, seed: int, version: str = "v1") -> tuple[dict, dict]:
    """ID-encoder weights and a LoRA in the checkpoint's old attention-processor naming, for every attention."""
    torch.manual_seed(seed)
    if version == "v2":
        id_state = PhotoMakerIDEncoderV2(tiny_id_encoder_v2_config()).state_dict()
    else:
        id_state = PhotoMakerIDEncoder(tiny_id_encoder_config()).state_dict()
    lora: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not name.endswith(("attn1", "attn2")):
            continue
        for proj, layer in (("q", module.to_q), ("k", module.to_k), ("v", module.to_v), ("out", module.to_out[0])):
            prefix = f"unet.{name}.processor.to_{proj}_lora"
            lora[f"{prefix}.down.weight"] = torch.randn(LORA_RANK, layer.in_features) / layer.in_features**0.5
            lora[f"{prefix}.up.weight"] = torch.randn(layer.out_features, LORA_RANK) * 0.1
    return id_state, lora


def ensure_tiny_model(root: Path) -> dict[str, Path]:
    """Build the tiny model under ``root`` once; return the locations to load it from.

    ``{"photomaker": base dir, "photomaker-style": base dir, "checkpoint": file, "checkpoint_v2": file,
    "face_model": dir}``.
    """
    root = Path(root)
    locations = {
        "photomaker": root / "realistic",
        "photomaker-style": root / "style",
        "checkpoint": root / "photomaker-tiny-v1.bin",
        "checkpoint_v2": root / "photomaker-tiny-v2.bin",
        "face_model": root / "faces",
    }
    marker = root / "tiny-model.json"
    if marker.is_file() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
        return locations
    # Build beside the target and rename into place: concurrent first starts never see a half-built model.
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("building the tiny random-weight demo model in %s (once)", root)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=".tiny-build-") as tmp:
        build = Path(tmp) / "tiny"
        realistic = build_base(seed=0)
        realistic.save_pretrained(build / "realistic")
        build_base(seed=1).save_pretrained(build / "style")
        id_state, lora = build_checkpoint_tensors(realistic.unet, seed=2)
        save_checkpoint(build / locations["checkpoint"].name, id_state, lora)
        save_checkpoint(build / locations["checkpoint_v2"].name, *build_checkpoint_tensors(realistic.unet, 3, "v2"))
        save_face_pack(build / locations["face_model"].name)
        (build / marker.name).write_text(json.dumps(
            {"version": TINY_VERSION, "warning": DEMO_WARNING, "architecture": tiny_architecture()}, indent=2))
        if root.exists():  # an older version, or another process won the race
            if marker.is_file() and json.loads(marker.read_text()).get("version") == TINY_VERSION:
                return locations
            shutil.rmtree(root)
        try:
            os.rename(build, root)
        except OSError:  # another process renamed its build first
            if not marker.is_file():
                raise
    return locations
