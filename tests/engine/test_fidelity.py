"""Fidelity to the reference algorithm, checked against an independent implementation: diffusers' own
``StableDiffusionXLPipeline`` fed embeddings prepared the way ``docs/photomaker.md`` describes, switching from the
text-only to the ID embeddings after ``start_merge_step`` via its step-end callback."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.clip import CLIPImageProcessorPil


def reference_fuse(fuse, c, e):
    def mlp(m, x, residual):
        out = m.fc2(F.gelu(m.fc1(F.layer_norm(x, x.shape[-1:], m.layernorm.weight, m.layernorm.bias))))
        return out + x if residual else out

    x = mlp(fuse.mlp1, torch.cat([c, e], -1), False) + c
    x = mlp(fuse.mlp2, x, True)
    return F.layer_norm(x, x.shape[-1:], fuse.layer_norm.weight, fuse.layer_norm.bias)


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

    merge = 3

    def switch_to_id(pipeline, i, t, kwargs):
        if i == merge:
            kwargs["prompt_embeds"] = torch.cat([neg_hidden, id_hidden])
            kwargs["add_text_embeds"] = torch.cat([neg_pooled, id_pooled])
        return kwargs

    reference = sdxl(prompt_embeds=text_hidden, negative_prompt_embeds=neg_hidden, pooled_prompt_embeds=text_pooled,
                     negative_pooled_prompt_embeds=neg_pooled, num_inference_steps=steps, guidance_scale=5.0, width=64,
                     height=64, generator=torch.Generator().manual_seed(seed), callback_on_step_end=switch_to_id,
                     callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"]).images[0]
    diff = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(reference, dtype=np.int16))
    assert diff.max() <= 1, f"max pixel difference {diff.max()}"
