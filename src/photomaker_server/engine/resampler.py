"""The perceiver resampler of PhotoMaker v2's ID encoder.

A few learned *latent* tokens (here: the face embedding projected to ``num_tokens`` tokens) attend to the CLIP
patch features of the same photo and are refined by a feed-forward block, ``depth`` times. Each attention layer
lets the latents see the image features *and themselves* (keys and values are both concatenated), and scales
queries and keys by ``dim_head ** -0.25`` each before the product (numerically kinder in half precision than one
``dim_head ** -0.5`` afterwards). Softmax runs in float32.

Module and parameter names (``proj_in``, ``layers.<i>.0.to_q``, ``layers.<i>.1.<j>``, ``norm_out`` ...) are the
checkpoint's, so ``photomaker-v2.bin`` loads strictly.
"""

from __future__ import annotations

import torch
from torch import nn


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm → Linear(dim → mult·dim) → GELU → Linear(back), without biases (indices 0, 1, 3 hold weights)."""
    inner = int(dim * mult)
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False))


class PerceiverAttention(nn.Module):
    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.dim_head, self.heads = dim_head, heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)  # image features
        self.norm2 = nn.LayerNorm(dim)  # latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, -1).transpose(1, 2)  # (b, heads, length, dim_head)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        batch, length, _ = latents.shape
        query = self._heads(self.to_q(latents))
        key, value = self.to_kv(torch.cat([features, latents], dim=-2)).chunk(2, dim=-1)
        key, value = self._heads(key), self._heads(value)
        scale = self.dim_head**-0.25
        weights = (query * scale) @ (key * scale).transpose(-2, -1)
        weights = torch.softmax(weights.float(), dim=-1).to(weights.dtype)
        out = (weights @ value).transpose(1, 2).reshape(batch, length, -1)
        return self.to_out(out)


class FacePerceiverResampler(nn.Module):
    """``depth`` × (attention + feed-forward, each residual) over latents of width ``dim``; features enter through
    ``proj_in`` (``embedding_dim`` → ``dim``), the result leaves through ``proj_out`` and ``norm_out``."""

    def __init__(self, *, dim: int, depth: int, dim_head: int, heads: int, embedding_dim: int, output_dim: int,
                 ff_mult: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)]) for _ in range(depth)
        )

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        for attention, ff in self.layers:
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))
