"""PhotoMaker's ID encoder (version 1): a CLIP ViT-L/14 vision tower, two projections and the fuse module.

It turns N photos of one person into N "stacked ID embeddings" that replace the N copies of the class word in the
prompt embedding. The module and parameter names follow the published checkpoint exactly (``vision_model.*``,
``visual_projection``, ``visual_projection_2``, ``fuse_module.*``) so that ``photomaker-v1.bin`` loads strictly.

The tower's size is read off the checkpoint (``IDEncoderConfig.from_state_dict``): the published file gives the
ViT-L/14 of the paper, and the project's tiny test model gives a small tower through the same code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

HEAD_DIM = 64


@dataclass(frozen=True)
class IDEncoderConfig:
    """Defaults: the published v1 checkpoint's tower, CLIP ViT-L/14 at 224 px."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_hidden_layers: int = 24
    patch_size: int = 14
    image_size: int = 224
    projection_dim: int = 768  # width of text encoder 1 (CLIP-L: 768)
    projection_dim_2: int = 1280  # width of text encoder 2 (OpenCLIP bigG: 1280)

    @property
    def embed_dim(self) -> int:
        """Width of one ID embedding = width of SDXL's concatenated text hidden states."""
        return self.projection_dim + self.projection_dim_2

    def vision_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_hidden_layers=self.num_hidden_layers,
            patch_size=self.patch_size,
            image_size=self.image_size,
            projection_dim=self.projection_dim,
            hidden_act="quick_gelu",
        )

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> IDEncoderConfig:
        """Read the architecture off the tensors' shapes (the checkpoint has no config file).

        Only the shapes that *define* the architecture are read here; every other tensor is then checked
        against the model built from them, so a damaged file is still reported key by key.
        """
        try:
            hidden = state_dict["vision_model.embeddings.class_embedding"].shape[0]
            patch = state_dict["vision_model.embeddings.patch_embedding.weight"].shape[-1]
            positions = state_dict["vision_model.embeddings.position_embedding.weight"].shape[0]
            intermediate = state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
            projection = state_dict["visual_projection.weight"].shape[0]
            projection_2 = state_dict["visual_projection_2.weight"].shape[0]
        except KeyError as missing:
            raise ValueError(f"missing key {missing.args[0]!r}, needed to read the ID encoder's architecture") from None
        layer_ids = {int(m.group(1)) for k in state_dict if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
        side = math.isqrt(positions - 1)
        return cls(
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_attention_heads=max(1, hidden // HEAD_DIM),
            num_hidden_layers=max(layer_ids) + 1,
            patch_size=patch,
            image_size=side * patch,
            projection_dim=projection,
            projection_dim_2=projection_2,
        )


class MLP(nn.Module):
    """LayerNorm → fc1 → GELU → fc2, optionally plus the input."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, use_residual: bool = True) -> None:
        super().__init__()
        if use_residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)
        self.act_fn = nn.GELU()
        self.use_residual = use_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act_fn(self.fc1(self.layernorm(x))))
        return out + x if self.use_residual else out


class FuseModule(nn.Module):
    """Fuses one class-word embedding with one photo embedding: ``ln(mlp2(mlp1([c, e]) + c))``."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.mlp1 = MLP(embed_dim * 2, embed_dim, embed_dim, use_residual=False)
        self.mlp2 = MLP(embed_dim, embed_dim, embed_dim, use_residual=True)
        self.layer_norm = nn.LayerNorm(embed_dim)

    def fuse(self, class_embeds: torch.Tensor, id_embeds: torch.Tensor) -> torch.Tensor:
        x = self.mlp1(torch.cat([class_embeds, id_embeds], dim=-1)) + class_embeds
        return self.layer_norm(self.mlp2(x))

    def forward(self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor, class_tokens_mask: torch.Tensor) -> torch.Tensor:
        """Write the fused embeddings back at the masked positions, in photo order.

        prompt_embeds: (1, seq, D); id_embeds: (N, D); class_tokens_mask: (1, seq) with N True entries.
        """
        if int(class_tokens_mask.sum()) != id_embeds.shape[0]:
            raise ValueError(f"{int(class_tokens_mask.sum())} class-word positions for {id_embeds.shape[0]} photos")
        flat = prompt_embeds.reshape(-1, prompt_embeds.shape[-1]).clone()
        mask = class_tokens_mask.reshape(-1)
        fused = self.fuse(flat[mask], id_embeds.to(flat.dtype))
        flat[mask] = fused.to(flat.dtype)
        return flat.view_as(prompt_embeds)


class PhotoMakerIDEncoder(CLIPVisionModelWithProjection):
    """CLIP vision tower + ``visual_projection_2`` + ``fuse_module``, named as in ``photomaker-v1.bin``."""

    version = "v1"
    #: Class-word copies per photo in the ID prompt.
    tokens_per_photo = 1

    def __init__(self, config: IDEncoderConfig | None = None) -> None:
        config = config or IDEncoderConfig()
        super().__init__(config.vision_config())
        self.id_config = config
        self.visual_projection_2 = nn.Linear(config.hidden_size, config.projection_dim_2, bias=False)
        self.fuse_module = FuseModule(config.embed_dim)

    @property
    def image_size(self) -> int:
        return self.id_config.image_size

    @torch.no_grad()
    def embed_photos(self, pixel_values: torch.Tensor, face_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) preprocessed photos → (N, D) ID embeddings (before fusing with the prompt). V1 uses no face
        embeddings; the parameter keeps one signature for both versions."""
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return torch.cat([self.visual_projection(pooled), self.visual_projection_2(pooled)], dim=-1)

    @torch.no_grad()
    def fuse_into_prompt(
        self, prompt_embeds: torch.Tensor, id_embeds: torch.Tensor, class_tokens_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.fuse_module(prompt_embeds, id_embeds, class_tokens_mask)
