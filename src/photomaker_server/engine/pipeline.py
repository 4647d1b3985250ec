"""The PhotoMaker generation pipeline, one story from prompt to pixels.

    1. tokenize   the ID prompt (class word repeated once per photo) and the text-only prompt
    2. encode     both prompts and the negative prompt with SDXL's two text encoders
    3. ID         embed the photos (cached by content) and fuse them into the class-word positions; v1: one
                  CLIP embedding per photo, v2: two tokens per photo from its face embedding and CLIP patches
    4. latents    seeded noise, or the initial image noised to ``strength`` (image-to-image)
    5. denoise    classifier-free guidance; text-only embeddings up to ``start_merge_step``, ID embeddings after
    6. decode     VAE → 8-bit images

The SDXL components (text encoders, UNet, VAE, scheduler) are a loaded diffusers ``StableDiffusionXLPipeline``
with PhotoMaker's LoRA fused into its UNet; this file only orchestrates them. Algorithm facts and the reasons behind
them: ``docs/engine.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageOps

from .errors import GenerationCancelled
from .id_cache import IDEmbeddingCache
from .id_encoder import PhotoMakerIDEncoder
from .id_encoder_v2 import PhotoMakerIDEncoderV2
from .options import start_merge_step
from .preprocess import IDImageProcessor
from .prompts import add_trigger_word, text_only_prompt, tokenize_id_prompt, tokenize_plain

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass
class PromptEmbeddings:
    hidden: torch.Tensor  # (1, 77, D): both encoders' penultimate hidden states, concatenated
    pooled: torch.Tensor  # (1, D2): text encoder 2's projected pooled output


@dataclass
class PipelineOutput:
    images: list[Image.Image]
    timings: dict[str, float] = field(default_factory=dict)
    id_cache_hits: int = 0


class PhotoMakerPipeline:
    def __init__(
        self,
        sdxl: StableDiffusionXLPipeline,
        id_encoder: PhotoMakerIDEncoder | PhotoMakerIDEncoderV2,
        trigger_word: str = "img",
        id_cache: IDEmbeddingCache | None = None,
    ) -> None:
        self.sdxl = sdxl
        self.id_encoder = id_encoder
        self.trigger_word = trigger_word
        self.id_cache = id_cache if id_cache is not None else IDEmbeddingCache(0)
        self.id_processor = IDImageProcessor(id_encoder.image_size)
        self.tokenizers = [sdxl.tokenizer, sdxl.tokenizer_2]
        self.text_encoders = [sdxl.text_encoder, sdxl.text_encoder_2]
        for tokenizer in self.tokenizers:
            add_trigger_word(tokenizer, trigger_word)

    @property
    def device(self) -> torch.device:
        return self.sdxl.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sdxl.unet.dtype

    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        id_images: Sequence[Image.Image],
        negative_prompt: str,
        *,
        width: int,
        height: int,
        num_inference_steps: int,
        guidance_scale: float,
        style_strength: int,
        num_images: int,
        generator: torch.Generator,
        initial_image: Image.Image | None = None,
        strength: float = 1.0,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        face_embeds: Sequence[np.ndarray] | None = None,
        on_denoise_start: Callable[[], None] | None = None,
    ) -> PipelineOutput:
        """``face_embeds``: v2 only, one raw face embedding per photo (``faces.FaceAnalyzer``), in photo order.
        ``on_denoise_start()``: called once the prompts and ID photos are encoded, just before the first step (step
        times start there: a step's time is the UNet and scheduler, not the encoders)."""
        timer = _Timer(self.device)

        # 1-2. Prompts: the ID path (class word × N × tokens per photo), the text-only path and the negative side
        # (never sees the ID).
        copies = len(id_images) * self.id_encoder.tokens_per_photo
        id_tokens = tokenize_id_prompt(self.tokenizers, prompt, self.trigger_word, num_id_tokens=copies)
        id_prompt = self.encode_token_ids(id_tokens.input_ids)
        text_only = self.encode_text(text_only_prompt(self.tokenizers[0], prompt, self.trigger_word))
        negative = self.encode_text(negative_prompt)
        timer.lap("encode_prompt")

        # 3. Stacked ID embeddings replace the class-word copies of the ID prompt.
        id_embeds, hits = self.embed_id_images(id_images, face_embeds)
        id_prompt.hidden = self.id_encoder.fuse_into_prompt(id_prompt.hidden, id_embeds, id_tokens.class_tokens_mask.to(self.device))
        timer.lap("id_encoding")

        # 4. Timesteps and starting latents. Image-to-image runs only the last `strength` share of the schedule.
        scheduler = self.sdxl.scheduler
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        timesteps = scheduler.timesteps
        if initial_image is not None and strength < 1.0:
            timesteps = self._img2img_timesteps(num_inference_steps, strength)
            latents = self._noised_image_latents(initial_image, width, height, num_images, timesteps, generator)
        else:
            latents = self._noise_latents(width, height, num_images, generator)
        merge_step = start_merge_step(style_strength, len(timesteps))

        # 5. Denoise. Batch order for guidance is [unconditional, conditional], as in the reference.
        time_ids = self._add_time_ids(width, height).repeat(2 * num_images, 1)
        uncond_hidden, uncond_pooled = negative.hidden.repeat(num_images, 1, 1), negative.pooled.repeat(num_images, 1)
        total = len(timesteps)
        if on_denoise_start is not None:
            on_denoise_start()
        for i, t in enumerate(timesteps):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(f"cancelled before step {i + 1}/{total}")
            cond = text_only if i <= merge_step else id_prompt
            hidden = torch.cat([uncond_hidden, cond.hidden.repeat(num_images, 1, 1)])
            pooled = torch.cat([uncond_pooled, cond.pooled.repeat(num_images, 1)])
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = self.sdxl.unet(
                model_input,
                t,
                encoder_hidden_states=hidden,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
                return_dict=False,
            )[0]
            noise_uncond, noise_cond = noise_pred.chunk(2)
            noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i + 1, total)
        timer.lap("denoise")

        # 6. Decode.
        images = self.decode(latents)
        timer.lap("decode")
        return PipelineOutput(images=images, timings=timer.laps, id_cache_hits=hits)

    # --- 2. text encoding -----------------------------------------------------------------------------------
    def encode_text(self, text: str) -> PromptEmbeddings:
        return self.encode_token_ids([tokenize_plain(tokenizer, text) for tokenizer in self.tokenizers])

    def encode_token_ids(self, input_ids: list[list[int]]) -> PromptEmbeddings:
        """Penultimate hidden states of both encoders, concatenated; pooled output of the second (SDXL's recipe)."""
        hidden_states = []
        pooled = None
        for ids, encoder in zip(input_ids, self.text_encoders):
            out = encoder(torch.tensor([ids], device=self.device), output_hidden_states=True)
            hidden_states.append(out.hidden_states[-2])
            pooled = out[0]
        return PromptEmbeddings(torch.cat(hidden_states, dim=-1).to(self.dtype), pooled.to(self.dtype))

    # --- 3. ID embeddings -----------------------------------------------------------------------------------
    def embed_id_images(
        self, images: Sequence[Image.Image], face_embeds: Sequence[np.ndarray] | None = None
    ) -> tuple[torch.Tensor, int]:
        """(N, D) embeddings (v1) or (N, tokens, D) (v2) in photo order; photos seen before come from the cache.

        Cache keys carry the encoder version: one photo has a v1 and a v2 embedding. A v2 embedding depends on the
        photo alone too (its face embedding is a function of its pixels for a given face model).
        """
        version = self.id_encoder.version
        keys = [f"{version}:{self.id_cache.key(image)}" for image in images]
        cached = {key: emb for key in keys if (emb := self.id_cache.get(key)) is not None}
        todo = [i for i, key in enumerate(keys) if key not in cached]
        if todo:
            pixels = self.id_processor([images[i] for i in todo]).to(self.device, self.id_encoder.dtype)
            faces = None
            if face_embeds is not None:
                faces = torch.from_numpy(np.stack([face_embeds[i] for i in todo])).to(self.device, self.id_encoder.dtype)
            fresh = self.id_encoder.embed_photos(pixels, faces)
            for i, embedding in zip(todo, fresh):
                cached[keys[i]] = embedding
                self.id_cache.put(keys[i], embedding)
        return torch.stack([cached[key] for key in keys]).to(self.dtype), len(images) - len(todo)

    # --- 4. latents -----------------------------------------------------------------------------------------
    def _latent_shape(self, width: int, height: int, batch: int) -> tuple[int, int, int, int]:
        factor = self.sdxl.vae_scale_factor
        return (batch, self.sdxl.unet.config.in_channels, height // factor, width // factor)

    def _noise_latents(self, width: int, height: int, batch: int, generator: torch.Generator) -> torch.Tensor:
        """One draw for the whole batch (image i is slice i), scaled to the scheduler's first sigma."""
        noise = randn_tensor(self._latent_shape(width, height, batch), generator=generator, device=self.device, dtype=self.dtype)
        return noise * self.sdxl.scheduler.init_noise_sigma

    def _img2img_timesteps(self, num_inference_steps: int, strength: float) -> torch.Tensor:
        """The tail of the schedule that a ``strength`` of the way from the image to noise leaves to run."""
        scheduler = self.sdxl.scheduler
        run = min(int(num_inference_steps * strength), num_inference_steps)
        start = (num_inference_steps - run) * scheduler.order
        scheduler.set_begin_index(start)
        return scheduler.timesteps[start:]

    def _noised_image_latents(
        self, image: Image.Image, width: int, height: int, batch: int, timesteps: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        fitted = ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        vae = self.sdxl.vae
        upcast = self._vae_needs_upcast()
        pixels = pixels.to(self.device, torch.float32 if upcast else vae.dtype)
        with _vae_in_fp32(vae, upcast):
            latents = vae.encode(pixels).latent_dist.sample(generator)
        latents = (latents.to(self.dtype) * vae.config.scaling_factor).repeat(batch, 1, 1, 1)
        if len(timesteps) == 0:  # strength too small for a single step: the image is kept as it is
            return latents
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=self.dtype)
        return self.sdxl.scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch))

    def _add_time_ids(self, width: int, height: int) -> torch.Tensor:
        """SDXL's size conditioning: original size, crop top-left (0, 0), target size."""
        return torch.tensor([[height, width, 0, 0, height, width]], device=self.device, dtype=self.dtype)

    # --- 6. decoding ----------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.sdxl.vae
        upcast = self._vae_needs_upcast()
        with _vae_in_fp32(vae, upcast):
            latents = latents.to(torch.float32 if upcast else vae.dtype)
            image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        # postprocess: (x / 2 + 0.5).clamp(0, 1) → round(x * 255) as uint8
        return self.sdxl.image_processor.postprocess(image, output_type="pil")

    def _vae_needs_upcast(self) -> bool:
        """The SDXL VAE overflows in float16 (not in bfloat16); diffusers' rule for when to run it in float32."""
        vae = self.sdxl.vae
        return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


class _vae_in_fp32:
    """Temporarily run the VAE in float32 (only when ``active``)."""

    def __init__(self, vae: torch.nn.Module, active: bool) -> None:
        self.vae, self.active = vae, active

    def __enter__(self) -> None:
        if self.active:
            self.dtype = self.vae.dtype
            self.vae.to(torch.float32)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.vae.to(self.dtype)


class _Timer:
    """Wall-clock laps that wait for queued GPU work, so each lap is charged to the stage that did it."""

    def __init__(self, device: torch.device) -> None:
        import time

        self._now = time.perf_counter
        self._device = device
        self._last = self._now()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        now = self._now()
        self.laps[name] = round(now - self._last, 4)
        self._last = now
