"""Fidelity to the reference algorithm, checked against an independent implementation: diffusers' own
``StableDiffusionXLPipeline`` fed embeddings prepared the way ``docs/photomaker.md`` describes, switching from the
text-only to the ID embeddings after ``start_merge_step`` via its step-end callback."""

from __future__ import annotations

import numpy as np
import torch
from transformers.models.clip import CLIPImageProcessorPil

from reference_impl import reference_fuse, sdxl_switching_to_id


def test_text_encoding_is_sdxls(engine):
    pipe = engine.pipeline("photomaker")
    ours = pipe.encode_text("cinematic photo of a woman, bokeh")
    hidden, _, pooled, _ = pipe.sdxl.encode_prompt("cinematic photo of a woman, bokeh", device="cpu",
                                                   do_classifier_free_guidance=False)
    assert torch.equal(ours.hidden, hidden) and torch.equal(ours.pooled, pooled)


def test_image_matches_reference_algorithm_on_diffusers(engine, faces):
    pipe = engine.pipeline("photomaker")
    sdxl, encoder = pipe.sdxl, pipe.id_encoder
    photos = faces[:2]
    steps, style_strength, seed = 6, 50, 7  # start_merge_step = int(0.5 * 6) = 3
    ours = pipe("a photo of a man img, film grain", photos, "blurry", width=64, height=64, num_inference_steps=steps,
                guidance_scale=5.0, style_strength=style_strength, num_images=1,
                generator=torch.Generator().manual_seed(seed)).images[0]

    # Independent preparation. Text-only prompt: the trigger word deleted. ID prompt: class word once per photo.
    kw = dict(device="cpu", do_classifier_free_guidance=True, negative_prompt="blurry")
    text_hidden, neg_hidden, text_pooled, neg_pooled = sdxl.encode_prompt("a photo of a man, film grain", **kw)
    id_hidden, _, id_pooled, _ = sdxl.encode_prompt("a photo of a man man, film grain", **kw)
    ids = sdxl.tokenizer_2("a photo of a man man, film grain").input_ids
    man = sdxl.tokenizer_2.convert_tokens_to_ids("man</w>")
    positions = [i for i, t in enumerate(ids) if t == man]
    pixels = CLIPImageProcessorPil()(photos, return_tensors="pt").pixel_values
    with torch.no_grad():
        pooled = encoder.vision_model(pixel_values=pixels).pooler_output
        photo_embeds = torch.cat([encoder.visual_projection(pooled), encoder.visual_projection_2(pooled)], -1)
        id_hidden = id_hidden.clone()
        id_hidden[0, positions] = reference_fuse(encoder.fuse_module, id_hidden[0, positions], photo_embeds)

    reference = sdxl_switching_to_id(sdxl, text=(text_hidden, text_pooled), negative=(neg_hidden, neg_pooled),
                                     id_prompt=(id_hidden, id_pooled), merge=3, steps=steps, guidance=5.0, size=64,
                                     seed=seed)[0]
    diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    assert diff.max() <= 1, f"max pixel difference {diff.max()}"
