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
    """The device and dtype for ``requested`` (auto, cpu, cuda, cuda:N, mps). A device this machine does not
    have is a ``ValueError`` with a message for the operator, not a torch assertion deep inside loading."""
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested, but this PyTorch sees no CUDA GPU "
                         f"(torch {torch.__version__}; a CPU-only build, or no driver)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {requested!r} requested, but Apple MPS is not available here")
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
