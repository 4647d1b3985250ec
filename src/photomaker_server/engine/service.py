"""The engine as a service: owns the loaded models and turns a validated request into images.

One ``Engine`` per process holding a device. It reads each PhotoMaker checkpoint (v1, v2) once, on first use, keeps
the base pipelines resident (both, or up to ``max_resident_bases`` per version with least-recently-used eviction,
within ``memory_budget_gb`` across versions), applies the style, picks the seed, for v2 finds the faces (photos
without one are dropped, and named in the logs), and runs ``PhotoMakerPipeline``.

A base serves v1 and v2 with different LoRAs fused into its UNet, so each version has its own UNet; the second
version of a resident base shares the first one's text encoders and VAE (only a UNet is loaded). Callers (the worker, the CLI) pass callbacks for log
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
from .errors import InvalidRequest, NoFaceDetected, WeightsUnavailable
from .faces import DETECTION_SIZES, FaceAnalyzer
from .id_cache import IDEmbeddingCache
from .id_encoder import PhotoMakerIDEncoder
from .id_encoder_v2 import PhotoMakerIDEncoderV2
from ..contract.request import GenerationFields
from .options import resolve_size
from .pipeline import CancelCheck, PhotoMakerPipeline, StepCallback
from ..contract.styles import get_style
from .weights import resolve_base_model, resolve_checkpoint

log = logging.getLogger(__name__)
LogCallback = Callable[[str], None]
MAX_REFERENCE_SEED = 2**31 - 1  # the reference demo draws seeds in [0, 2^31 - 1]


@dataclass
class EngineConfig:
    #: base_pipeline name → hub id or local diffusers directory
    base_models: dict[str, str]
    checkpoint: str
    #: PhotoMaker v2 checkpoint (read on the first v2 request) and InsightFace pack directory ("" = buffalo_l).
    checkpoint_v2: str = ""
    face_model: str = ""
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
                checkpoint_v2=str(tiny["checkpoint_v2"]),
                face_model=str(tiny["face_model"]),
                demo=True,
                **common,
            )
        return cls(
            base_models={"photomaker": settings.base_model, "photomaker-style": settings.style_base_model},
            checkpoint=settings.photomaker_checkpoint,
            checkpoint_v2=settings.photomaker_v2_checkpoint,
            face_model=settings.face_model,
            **common,
        )

    def checkpoint_for(self, version: str) -> str:
        return self.checkpoint_v2 if version == "v2" else self.checkpoint


@dataclass
class GenerationRequest:
    #: A GenerationOptions, a PhotoMakerInput or a StoredRequest: every one carries the generation fields.
    options: GenerationFields
    id_images: list[Image.Image]
    initial_image: Image.Image | None = None
    #: The photos' file names, for messages about one photo (v2's "no face found in photo 3 of 5 (x.jpg)").
    id_image_names: list[str] | None = None


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
        #: Resident pipelines by (base location, version), least recently used first.
        self._pipelines: OrderedDict[tuple[str, str], PhotoMakerPipeline] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}  # bytes of weights per resident pipeline (see _recount)
        self._checkpoints: dict[str, PhotoMakerCheckpoint] = {}
        self._id_encoders: dict[str, PhotoMakerIDEncoder | PhotoMakerIDEncoderV2] = {}
        self._faces: FaceAnalyzer | None = None
        if self.placement.device.type == "cpu" and not config.demo:
            log.warning(CPU_WARNING)

    @property
    def demo_model(self) -> bool:
        return self.config.demo

    def loaded_bases(self) -> list[str]:
        """Resident bases by name; a v2 one as ``name:v2``."""
        return [
            base if version == "v1" else f"{base}:{version}"
            for version in ("v1", "v2")
            for base, location in self.config.base_models.items()
            if (location, version) in self._pipelines
        ]

    # --- loading --------------------------------------------------------------------------------------------
    def pipeline(self, base_pipeline: str, on_log: LogCallback | None = None, version: str = "v1") -> PhotoMakerPipeline:
        location = self.config.base_models[base_pipeline]
        key = (location, version)
        if key in self._pipelines:
            self._pipelines.move_to_end(key)
            return self._pipelines[key]
        shared = self._resident_sibling(location)
        need = self._estimated_bytes(location, unet_only=shared is not None) if self.config.memory_budget_gb > 0 else 0
        budget = int(self.config.memory_budget_gb * 2**30)
        while self._pipelines:
            same_version = [k for k in self._pipelines if k[1] == version]
            too_many = len(same_version) >= max(1, self.config.max_resident_bases)
            if not too_many and not (budget and sum(self._sizes.values()) + need > budget):
                break
            evicted = same_version[0] if too_many else next(iter(self._pipelines))  # least recently used
            del self._pipelines[evicted]
            self._recount()
            log.info("unloading base model %s (%s) to stay within the residency limits", *evicted)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        shared = self._resident_sibling(location)
        _say(on_log, f"Loading model ({base_pipeline}: {location}{', PhotoMaker v2' if version == 'v2' else ''})")
        pipe = self._load(location, version, shared)
        self._pipelines[key] = pipe
        self._recount()
        return pipe

    def _recount(self) -> None:
        """Bytes of weights per resident pipeline, a shared component counted once (with the first holder left)."""
        seen: set[int] = set()
        self._sizes = {}
        for key, pipe in self._pipelines.items():
            fresh = [p for p in _parameters(pipe) if id(p) not in seen]
            seen.update(id(p) for p in fresh)
            self._sizes[key] = sum(p.numel() * p.element_size() for p in fresh)

    def _resident_sibling(self, location: str) -> PhotoMakerPipeline | None:
        """A resident pipeline of the same base (the other version), whose text encoders and VAE can be shared."""
        return next((pipe for (loc, _), pipe in self._pipelines.items() if loc == location), None)

    def _estimated_bytes(self, location: str, unet_only: bool = False) -> int:
        """Bytes the base will take once loaded, read from its safetensors headers (no weights are loaded)."""
        from safetensors import safe_open

        root = resolve_base_model(location, self.config.variant if self.placement.dtype != torch.float32 else None)
        element = torch.tensor([], dtype=self.placement.dtype).element_size()
        total = 0
        for path in root.glob("unet/*.safetensors" if unet_only else "*/*.safetensors"):
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    total += math.prod(handle.get_slice(key).get_shape()) * element
        return total

    def load_all(self, on_log: LogCallback | None = None, version: str = "v1") -> None:
        """Warm up: load as many bases of ``version`` (the deployment's default) as may stay resident, the default
        base last (so it is kept); v2 also loads its face models. The other version loads on its first request."""
        bases = list(dict.fromkeys(self.config.base_models))[: max(1, self.config.max_resident_bases)]
        for base in reversed(bases):
            self.pipeline(base, on_log, version)
        if version == "v2":
            self.face_analyzer(on_log)

    def _load(self, location: str, version: str, shared: PhotoMakerPipeline | None) -> PhotoMakerPipeline:
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

        device, dtype = self.placement.device, self.placement.dtype
        variant = self.config.variant if dtype != torch.float32 else None
        checkpoint = self._read_checkpoint(version)  # before the base: a wrong file fails fast
        root = resolve_base_model(location, variant)
        if shared is None:
            sdxl = StableDiffusionXLPipeline.from_pretrained(root, dtype=dtype)
        else:  # the other version of this base is resident: only its UNet differs (another LoRA is fused into it)
            unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", dtype=dtype)
            sdxl = StableDiffusionXLPipeline(**{**shared.sdxl.components, "unet": unet})
        sdxl.scheduler = EulerDiscreteScheduler.from_config(sdxl.scheduler.config)
        sdxl.set_progress_bar_config(disable=True)
        # PhotoMaker's LoRA, converted from the old attention-processor naming by diffusers, then fused into the
        # UNet weights and its adapter layers removed: no per-step LoRA cost.
        sdxl.load_lora_weights(dict(checkpoint.lora_weights), adapter_name="photomaker")
        sdxl.fuse_lora()
        sdxl.unload_lora_weights()
        sdxl.to(device)
        widths = (sdxl.text_encoder.config.hidden_size, sdxl.text_encoder_2.config.hidden_size)
        encoder = self._id_encoders.get(version)
        if encoder is None:
            encoder = self._id_encoders[version] = build_id_encoder(checkpoint, widths).to(device, dtype)
        else:
            expected = encoder.fuse_module.layer_norm.normalized_shape[0]
            if expected != sum(widths):
                raise WeightsUnavailable(  # a deployment problem, not the user's
                    f"base model {location} has text widths {widths}, but the PhotoMaker {version} ID encoder is "
                    f"{expected} wide: the checkpoint does not fit this base model"
                )
        return PhotoMakerPipeline(sdxl, encoder, self.config.trigger_word, self.id_cache)

    def _read_checkpoint(self, version: str) -> PhotoMakerCheckpoint:
        if version not in self._checkpoints:
            path = resolve_checkpoint(self.config.checkpoint_for(version))
            self._checkpoints[version] = read_checkpoint(path, version)
        return self._checkpoints[version]

    def face_analyzer(self, on_log: LogCallback | None = None) -> FaceAnalyzer:
        """InsightFace's models for v2, loaded on first use."""
        if self._faces is None:
            _say(on_log, f"Loading the face models ({self.config.face_model or 'InsightFace buffalo_l'})")
            self._faces = FaceAnalyzer(self.config.face_model, self.placement.device, self.id_cache)
        return self._faces

    def find_faces(
        self, photos: list[Image.Image], names: list[str] | None, on_log: LogCallback | None = None
    ) -> tuple[list[Image.Image], list]:
        """The photos that show a face and their face embeddings; the others are dropped, each named in the logs.

        Dropped entirely (from the CLIP images too), so the result equals the same request without them.
        """
        analyzer = self.face_analyzer(on_log)
        kept, embeddings = [], []
        for i, (photo, embedding) in enumerate(zip(photos, analyzer.embeddings(photos))):
            if embedding is None:
                name = f" ({names[i]})" if names and i < len(names) and names[i] else ""
                _say(on_log, f"no face found in photo {i + 1} of {len(photos)}{name}: skipped", logging.WARNING)
            else:
                kept.append(photo)
                embeddings.append(embedding)
        if not kept:
            count = f"any of the {len(photos)} photos" if len(photos) > 1 else "the one photo sent"
            raise NoFaceDetected(
                f"no face was found in {count} (PhotoMaker v2 needs a visible face; detection tried at "
                f"{DETECTION_SIZES[0]} down to {DETECTION_SIZES[-1]} px)"
            )
        return kept, embeddings

    # --- generating -----------------------------------------------------------------------------------------
    def generate(
        self,
        request: GenerationRequest,
        on_log: LogCallback | None = None,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_denoise_start: Callable[[], None] | None = None,
    ) -> GenerationResult:
        """``on_step(i, n)`` after each denoising step; ``on_denoise_start()`` once before the first, after the
        prompt and ID encoding (so a caller timing steps does not charge the encoders to step 1)."""
        started = time.perf_counter()
        # Validated once by whoever built them (the API at submit, with the deployment's rules; the CLI; a library
        # caller constructing GenerationOptions): the engine runs on them as they are.
        options = request.options
        if not request.id_images:
            raise InvalidRequest("at least one photo of the person is needed", field="image_archive_url")
        if self.config.demo:
            _say(on_log, "Using the random-weight demo model: images will be noise and resemble no one")

        version = options.photomaker_version or "v1"
        pipe = self.pipeline(options.base_pipeline, on_log, version)
        load_time = time.perf_counter() - started
        photos, face_embeds, face_time = request.id_images, None, None
        if version == "v2":
            faces_started = time.perf_counter()
            photos, face_embeds = self.find_faces(photos, request.id_image_names, on_log)
            face_time = round(time.perf_counter() - faces_started, 4)

        style = get_style(options.style)
        prompt, negative_prompt = style.apply(options.prompt, options.negative_prompt)
        initial = request.initial_image
        width, height = resolve_size(options.image_size, initial.size if initial is not None else None)
        seed = options.seed if options.seed is not None else secrets.randbelow(MAX_REFERENCE_SEED + 1)

        tag = " (PhotoMaker v2)" if version == "v2" else ""  # v1's log lines stay as they were
        _say(on_log, f"Encoding {len(photos)} ID photo{'s' if len(photos) != 1 else ''}{tag}")
        output = pipe(
            prompt,
            photos,
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
            face_embeds=face_embeds,
            on_denoise_start=on_denoise_start,
        )
        faces = {"face_analysis": face_time} if face_time is not None else {}
        timings = {"load": round(load_time, 4), **faces, **output.timings,
                   "total": round(time.perf_counter() - started, 4)}
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


def _say(on_log: LogCallback | None, message: str, level: int = logging.INFO) -> None:
    log.log(level, message)
    if on_log is not None:
        on_log(message)


def _parameters(pipe: PhotoMakerPipeline):
    """Every weight a pipeline holds (its SDXL components; the ID encoder is shared and not counted)."""
    for module in pipe.sdxl.components.values():
        if isinstance(module, torch.nn.Module):
            yield from module.parameters()
