"""The engine as a service: owns the loaded models and turns a validated request into images.

One ``Engine`` per process holding a device. It reads the PhotoMaker checkpoint once, keeps the base pipelines
resident (both, or up to ``max_resident_bases`` with least-recently-used eviction when memory is tight), applies
the style, picks the seed, and runs ``PhotoMakerPipeline``. Callers (the worker, the CLI) pass callbacks for log
lines, step progress and cancellation; the engine knows nothing about HTTP or queues.
"""

from __future__ import annotations

import gc
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .checkpoint import PhotoMakerCheckpoint, build_id_encoder, read_checkpoint
from .devices import CPU_WARNING, Placement, choose_placement
from .errors import InvalidRequest, WeightsUnavailable
from .id_cache import IDEmbeddingCache
from .id_encoder import PhotoMakerIDEncoder
from ..contract.request import GenerationOptions
from .options import resolve_size
from .pipeline import CancelCheck, PhotoMakerPipeline, StepCallback
from .styles import get_style
from .weights import resolve_base_model, resolve_checkpoint

log = logging.getLogger(__name__)
LogCallback = Callable[[str], None]
MAX_REFERENCE_SEED = 2**31 - 1  # the reference demo draws seeds in [0, 2^31 - 1]


@dataclass
class EngineConfig:
    #: base_pipeline name → hub id or local diffusers directory
    base_models: dict[str, str]
    checkpoint: str
    trigger_word: str = "img"
    device: str = "auto"
    max_resident_bases: int = 2
    #: GiB of weights the resident bases may take together (0: no limit beyond max_resident_bases).
    memory_budget_gb: float = 0.0
    id_cache_size: int = 512
    max_num_images: int = 4
    #: Tiny random-weight model: every output says so.
    demo: bool = False
    #: Hub file variant to prefer on GPUs (half the download); falls back to the default files.
    variant: str | None = "fp16"

    @classmethod
    def from_settings(cls, settings) -> EngineConfig:  # noqa: ANN001 (settings imports nothing from here)
        common = dict(
            trigger_word=settings.trigger_word,
            device=settings.device,
            max_resident_bases=settings.max_resident_bases,
            memory_budget_gb=settings.memory_budget_gb,
            id_cache_size=settings.id_cache_size,
            max_num_images=settings.max_num_images,
        )
        if settings.tiny:
            from .tiny import ensure_tiny_model

            tiny = ensure_tiny_model(Path(settings.models_dir) / "tiny")
            return cls(
                base_models={"photomaker": str(tiny["photomaker"]), "photomaker-style": str(tiny["photomaker-style"])},
                checkpoint=str(tiny["checkpoint"]),
                demo=True,
                **common,
            )
        return cls(
            base_models={"photomaker": settings.base_model, "photomaker-style": settings.style_base_model},
            checkpoint=settings.photomaker_checkpoint,
            **common,
        )


@dataclass
class GenerationRequest:
    options: GenerationOptions
    id_images: list[Image.Image]
    initial_image: Image.Image | None = None


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seed: int
    prompt: str
    negative_prompt: str
    width: int
    height: int
    demo_model: bool
    timings: dict[str, float] = field(default_factory=dict)


class Engine:
    def __init__(self, config: EngineConfig, placement: Placement | None = None) -> None:
        self.config = config
        self.placement = placement or choose_placement(config.device)
        self.id_cache = IDEmbeddingCache(config.id_cache_size)
        self._pipelines: OrderedDict[str, PhotoMakerPipeline] = OrderedDict()
        self._sizes: dict[str, int] = {}  # bytes of weights of each resident base
        self._checkpoint: PhotoMakerCheckpoint | None = None
        self._id_encoder: PhotoMakerIDEncoder | None = None
        if self.placement.device.type == "cpu" and not config.demo:
            log.warning(CPU_WARNING)

    @property
    def demo_model(self) -> bool:
        return self.config.demo

    def loaded_bases(self) -> list[str]:
        return [base for base, location in self.config.base_models.items() if location in self._pipelines]

    # --- loading --------------------------------------------------------------------------------------------
    def pipeline(self, base_pipeline: str, on_log: LogCallback | None = None) -> PhotoMakerPipeline:
        location = self.config.base_models[base_pipeline]
        if location in self._pipelines:
            self._pipelines.move_to_end(location)
            return self._pipelines[location]
        need = self._estimated_bytes(location) if self.config.memory_budget_gb > 0 else 0
        budget = int(self.config.memory_budget_gb * 2**30)
        while self._pipelines and (
            len(self._pipelines) >= max(1, self.config.max_resident_bases)
            or (budget and sum(self._sizes.values()) + need > budget)
        ):
            evicted, _ = self._pipelines.popitem(last=False)
            self._sizes.pop(evicted, None)
            log.info("unloading base model %s to stay within the residency limits", evicted)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        _say(on_log, f"Loading model ({base_pipeline}: {location})")
        pipe = self._load(location)
        self._pipelines[location] = pipe
        self._sizes[location] = sum(
            p.numel() * p.element_size() for m in pipe.sdxl.components.values() if isinstance(m, torch.nn.Module)
            for p in m.parameters()
        )
        return pipe

    def _estimated_bytes(self, location: str) -> int:
        """Bytes the base will take once loaded, read from its safetensors headers (no weights are loaded)."""
        from safetensors import safe_open

        root = resolve_base_model(location, self.config.variant if self.placement.dtype != torch.float32 else None)
        element = torch.tensor([], dtype=self.placement.dtype).element_size()
        total = 0
        for path in root.glob("*/*.safetensors"):
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    total += math.prod(handle.get_slice(key).get_shape()) * element
        return total

    def load_all(self, on_log: LogCallback | None = None) -> None:
        """Warm up: load as many bases as may stay resident, the default one last (so it is kept)."""
        bases = list(dict.fromkeys(self.config.base_models))[: max(1, self.config.max_resident_bases)]
        for base in reversed(bases):
            self.pipeline(base, on_log)

    def _load(self, location: str) -> PhotoMakerPipeline:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

        device, dtype = self.placement.device, self.placement.dtype
        variant = self.config.variant if dtype != torch.float32 else None
        sdxl = StableDiffusionXLPipeline.from_pretrained(resolve_base_model(location, variant), dtype=dtype)
        sdxl.scheduler = EulerDiscreteScheduler.from_config(sdxl.scheduler.config)
        sdxl.set_progress_bar_config(disable=True)
        checkpoint = self._read_checkpoint()
        # PhotoMaker's LoRA, converted from the old attention-processor naming by diffusers, then fused into the
        # UNet weights and its adapter layers removed: no per-step LoRA cost.
        sdxl.load_lora_weights(dict(checkpoint.lora_weights), adapter_name="photomaker")
        sdxl.fuse_lora()
        sdxl.unload_lora_weights()
        sdxl.to(device)
        widths = (sdxl.text_encoder.config.hidden_size, sdxl.text_encoder_2.config.hidden_size)
        if self._id_encoder is None:
            self._id_encoder = build_id_encoder(checkpoint, widths).to(device, dtype)
        else:
            expected = (self._id_encoder.id_config.projection_dim, self._id_encoder.id_config.projection_dim_2)
            if expected != widths:
                raise WeightsUnavailable(  # a deployment problem, not the user's
                    f"base model {location} has text widths {widths}, but the PhotoMaker ID encoder projects to "
                    f"{expected}: the checkpoint does not fit this base model"
                )
        return PhotoMakerPipeline(sdxl, self._id_encoder, self.config.trigger_word, self.id_cache)

    def _read_checkpoint(self) -> PhotoMakerCheckpoint:
        if self._checkpoint is None:
            self._checkpoint = read_checkpoint(resolve_checkpoint(self.config.checkpoint))
        return self._checkpoint

    # --- generating -----------------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        on_log: LogCallback | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        started = time.perf_counter()
        options = GenerationOptions.model_validate(
            # The worker hands over the whole submit-time model (a GenerationOptions subclass with the file and
            # delivery fields); re-validate only the generation fields, which forbid extras.
            request.options.model_dump(include=set(GenerationOptions.model_fields)),
            context={"trigger_word": self.config.trigger_word, "max_num_images": self.config.max_num_images},
        )
        if not request.id_images:
            raise InvalidRequest("at least one photo of the person is needed", field="image_archive_url")
        if self.config.demo:
            _say(on_log, "Using the random-weight demo model: images will be noise and resemble no one")

        pipe = self.pipeline(options.base_pipeline, on_log)
        load_time = time.perf_counter() - started

        style = get_style(options.style)
        prompt, negative_prompt = style.apply(options.prompt, options.negative_prompt)
        initial = request.initial_image
        width, height = resolve_size(options.image_size, initial.size if initial is not None else None)
        seed = options.seed if options.seed is not None else secrets.randbelow(MAX_REFERENCE_SEED + 1)

        _say(on_log, f"Encoding {len(request.id_images)} ID photo{'s' if len(request.id_images) != 1 else ''}")
        output = pipe(
            prompt,
            request.id_images,
            negative_prompt,
            width=width,
            height=height,
            num_inference_steps=options.num_inference_steps,
            guidance_scale=options.guidance_scale,
            style_strength=options.style_strength,
            num_images=options.num_images,
            generator=self.placement.generator(seed),
            initial_image=initial,
            strength=options.initial_image_strength,
            on_step=on_step,
            should_cancel=should_cancel,
        )
        timings = {"load": round(load_time, 4), **output.timings, "total": round(time.perf_counter() - started, 4)}
        return GenerationResult(
            images=output.images,
            seed=seed,
            prompt=prompt,
            negative_prompt=negative_prompt,
            width=width,
            height=height,
            demo_model=self.config.demo,
            timings=timings,
        )


def _say(on_log: LogCallback | None, message: str) -> None:
    log.info(message)
    if on_log is not None:
        on_log(message)
