"""Where the model runs and in which precision.

bf16 on CUDA GPUs that support it (no overflow in the SDXL VAE, same speed as fp16); fp16 on older CUDA GPUs and on
Apple MPS; fp32 on CPU, where half precision is slower, not faster.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the compute device (CUDA draws differ from CPU draws, as in the reference).

        MPS generators are not fully supported, so noise for MPS is drawn on the CPU.
        """
        where = "cpu" if self.device.type == "mps" else self.device
        return torch.Generator(device=where).manual_seed(seed)


def choose_placement(requested: str = "auto") -> Placement:
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif device.type == "mps":
        dtype = torch.float16
    else:
        dtype = torch.float32
    return Placement(device, dtype)


CPU_WARNING = (
    "Running on the CPU in float32. Full-size SDXL is very slow there: measured 6 s per denoising step at 256x256 on "
    "2 cores, which extrapolates to over a minute and a half per step at 1024x1024 (docs/benchmarks.md). "
    "Use a CUDA GPU for real work."
)
