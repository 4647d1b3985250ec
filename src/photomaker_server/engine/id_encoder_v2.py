"""PhotoMaker's ID encoder, version 2: CLIP patch features + an InsightFace (ArcFace) face embedding.

Per photo, the face embedding (512 numbers from the face recogniser) is projected to ``num_tokens`` (2) tokens of
the text width (a two-layer MLP, then LayerNorm); a perceiver resampler lets those tokens read the photo's CLIP
patch features (the vision tower's *last hidden state*, before its final LayerNorm) and adds what it found to them.
The two tokens of each photo are then fused, one by one, into two copies of the class word in the prompt with V1's
fuse module (``ln(mlp2(mlp1([c, e]) + c))``). V2 never uses the tower's pooled output or its projections, but the
published checkpoint carries ``visual_projection`` and ``visual_projection_2``, so the model keeps them for a strict
load.

Names follow ``photomaker-v2.bin`` (``qformer_perceiver.token_proj.0`` ... ``perceiver_resampler.layers.3.1.3``).
The sizes are read off the checkpoint (``IDEncoderV2Config.from_state_dict``); the attention heads follow the
reference's rule (128 numbers per head), so the published file and the project's tiny one load through one path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import CLIPVisionModelWithProjection

from .id_encoder import FuseModule, IDEncoderConfig
from .resampler import FacePerceiverResampler

#: Width of one perceiver attention head (the reference fixes it; heads = width // 128).
PERCEIVER_HEAD_DIM = 128
_PREFIX = "qformer_perceiver."


@dataclass(frozen=True)
class IDEncoderV2Config:
    """Defaults: the published v2 checkpoint (ViT-L/14 tower, SDXL's 2048-wide text, ArcFace's 512)."""

    vision: IDEncoderConfig = field(default_factory=IDEncoderConfig)
    id_embed_dim: int = 512
    num_tokens: int = 2
    token_proj_ratio: int = 4
    depth: int = 4
    ff_mult: int = 4

    @property
    def embed_dim(self) -> int:
        """Width of one ID token = width of SDXL's concatenated text hidden states."""
        return self.vision.embed_dim

    @property
    def heads(self) -> int:
        return self.embed_dim // PERCEIVER_HEAD_DIM

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> IDEncoderV2Config:
        """Read the sizes off the tensors (the checkpoint has no config file); ``ValueError`` names what is missing."""
        vision = IDEncoderConfig.from_state_dict(state_dict)
        try:
            first = state_dict[_PREFIX + "token_proj.0.weight"]
            last = state_dict[_PREFIX + "token_proj.2.weight"]
            width = state_dict[_PREFIX + "token_norm.weight"].shape[0]
            ff = state_dict[_PREFIX + "perceiver_resampler.layers.0.1.1.weight"]
        except KeyError as missing:
            raise ValueError(f"missing key {missing.args[0]!r}, needed to read the ID encoder's architecture") from None
        layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"qformer_perceiver\.perceiver_resampler\.layers\.(\d+)\.", k))}
        if width != vision.embed_dim:
            raise ValueError(f"the perceiver is {width} wide but the fuse width is {vision.embed_dim}")
        if width % PERCEIVER_HEAD_DIM:
            raise ValueError(f"the perceiver width {width} is not a multiple of {PERCEIVER_HEAD_DIM} (the head width)")
        return cls(
            vision=vision,
            id_embed_dim=first.shape[1],
            num_tokens=last.shape[0] // width,
            token_proj_ratio=first.shape[0] // first.shape[1],
            depth=max(layers) + 1,
            ff_mult=ff.shape[0] // width,
        )


class QFormerPerceiver(nn.Module):
    """Face embedding → ``num_tokens`` tokens → refined by reading the CLIP patch features (residual)."""

    def __init__(self, config: IDEncoderV2Config) -> None:
        super().__init__()
        width, tokens = config.embed_dim, config.num_tokens
        self.num_tokens, self.width = tokens, width
        hidden = config.id_embed_dim * config.token_proj_ratio
        self.token_proj = nn.Sequential(nn.Linear(config.id_embed_dim, hidden), nn.GELU(), nn.Linear(hidden, width * tokens))
        self.token_norm = nn.LayerNorm(width)
        self.perceiver_resampler = FacePerceiverResampler(
            dim=width,
            depth=config.depth,
            dim_head=PERCEIVER_HEAD_DIM,
            heads=config.heads,
            embedding_dim=config.vision.hidden_size,
            output_dim=width,
            ff_mult=config.ff_mult,
        )

    def forward(self, face_embeds: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        """(N, id_dim), (N, patches, hidden) → (N, num_tokens, width)."""
        tokens = self.token_norm(self.token_proj(face_embeds).reshape(-1, self.num_tokens, self.width))
        return tokens + self.perceiver_resampler(tokens, patch_features)


class PhotoMakerIDEncoderV2(CLIPVisionModelWithProjection):
    """CLIP vision tower (+ its unused projections) + ``qformer_perceiver`` + ``fuse_module``, named as in
    ``photomaker-v2.bin``."""

    version = "v2"

    def __init__(self, config: IDEncoderV2Config | None = None) -> None:
        config = config or IDEncoderV2Config()
        super().__init__(config.vision.vision_config())
        self.id_config = config
        self.visual_projection_2 = nn.Linear(config.vision.hidden_size, config.vision.projection_dim_2, bias=False)
        self.fuse_module = FuseModule(config.embed_dim)
        self.qformer_perceiver = QFormerPerceiver(config)

    @property
    def image_size(self) -> int:
        return self.id_config.vision.image_size

    @property
    def tokens_per_photo(self) -> int:
        return self.id_config.num_tokens

    @torch.no_grad()
    def embed_photos(self, pixel_values: torch.Tensor, face_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) preprocessed photos and their (N, 512) raw face embeddings → (N, num_tokens, D)."""
        if face_embeds is None or face_embeds.shape[0] != pixel_values.shape[0]:
            raise ValueError("PhotoMaker v2 needs one face embedding per photo")
        patches = self.vision_model(pixel_values=pixel_values).last_hidden_state
        return self.qformer_perceiver(face_embeds.to(patches.dtype), patches)

    @torch.no_grad()
    def fuse_into_prompt(
        self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor, class_tokens_mask: torch.Tensor
    ) -> torch.Tensor:
        """``id_embeds`` (N, num_tokens, D) go, photo by photo and token by token, into the N·num_tokens copies."""
        return self.fuse_module(prompt_embeds, id_embeds.reshape(-1, id_embeds.shape[-1]), class_tokens_mask)
