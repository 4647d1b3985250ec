"""Independent implementations of PhotoMaker's ID math for the fidelity tests.

Written from the algorithm's description (``docs/engine.md``; the reference's structure for v2: token projection,
LayerNorm, a perceiver resampler whose latents attend to the CLIP patch features and to themselves, residual), as
plain functional torch over the checkpoint's tensors by name. Nothing here uses the engine's modules, so a mistake
in those (a wrong residual, head split, scale, token order or GELU) shows up as a pixel difference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], weight, bias)


def reference_fuse(fuse, c: torch.Tensor, e: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """``ln(mlp2(mlp1([c, e]) + c))`` where ``mlp(x) = fc2(gelu(fc1(ln(x))))`` (+ x for mlp2)."""
    def mlp(m, x, residual):  # noqa: ANN001
        out = m.fc2(F.gelu(m.fc1(_ln(x, m.layernorm.weight, m.layernorm.bias))))
        return out + x if residual else out

    x = mlp(fuse.mlp1, torch.cat([c, e], -1), False) + c
    x = mlp(fuse.mlp2, x, True)
    return _ln(x, fuse.layer_norm.weight, fuse.layer_norm.bias)


def reference_v2_tokens(state: dict[str, torch.Tensor], face_embeds: torch.Tensor, patches: torch.Tensor,
                        num_tokens: int = 2, head_dim: int = 128) -> torch.Tensor:
    """(N, 512) raw face embeddings and (N, P, hidden) CLIP patch features → (N, num_tokens, width) ID tokens."""
    q = "qformer_perceiver."
    width = state[q + "token_norm.weight"].shape[0]
    x = F.linear(face_embeds, state[q + "token_proj.0.weight"], state[q + "token_proj.0.bias"])
    x = F.linear(F.gelu(x), state[q + "token_proj.2.weight"], state[q + "token_proj.2.bias"])
    tokens = _ln(x.reshape(face_embeds.shape[0], num_tokens, width), state[q + "token_norm.weight"],
                 state[q + "token_norm.bias"])

    r = q + "perceiver_resampler."
    features = F.linear(patches, state[r + "proj_in.weight"], state[r + "proj_in.bias"])
    latents = tokens
    depth = 1 + max(int(k[len(r) + 7:].split(".")[0]) for k in state if k.startswith(r + "layers."))
    for i in range(depth):
        p = f"{r}layers.{i}."
        f_n = _ln(features, state[p + "0.norm1.weight"], state[p + "0.norm1.bias"])
        l_n = _ln(latents, state[p + "0.norm2.weight"], state[p + "0.norm2.bias"])
        query = F.linear(l_n, state[p + "0.to_q.weight"])
        key, value = F.linear(torch.cat([f_n, l_n], dim=1), state[p + "0.to_kv.weight"]).chunk(2, dim=-1)
        heads = query.shape[-1] // head_dim

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], heads, head_dim).permute(0, 2, 1, 3)

        scores = split(query) @ split(key).transpose(-1, -2) / math.sqrt(head_dim)
        attended = (scores.softmax(dim=-1) @ split(value)).permute(0, 2, 1, 3).reshape(query.shape)
        latents = latents + F.linear(attended, state[p + "0.to_out.weight"])
        hidden = _ln(latents, state[p + "1.0.weight"], state[p + "1.0.bias"])
        latents = latents + F.linear(F.gelu(F.linear(hidden, state[p + "1.1.weight"])), state[p + "1.3.weight"])
    out = _ln(F.linear(latents, state[r + "proj_out.weight"], state[r + "proj_out.bias"]),
              state[r + "norm_out.weight"], state[r + "norm_out.bias"])
    return tokens + out


def sdxl_switching_to_id(sdxl, *, text, negative, id_prompt, merge: int, steps: int, guidance: float, size: int,  # noqa: ANN001
                         seed: int, num_images: int = 1) -> list:
    """diffusers' own ``StableDiffusionXLPipeline`` run on prepared embeddings: ``text`` (hidden, pooled) up to and
    including step ``merge``, ``id_prompt`` after it (its step-end callback swaps them); ``negative`` throughout."""
    (neg_hidden, neg_pooled), (id_hidden, id_pooled) = negative, id_prompt

    def switch_to_id(pipeline, i, t, kwargs):  # noqa: ANN001
        if i == merge:
            kwargs["prompt_embeds"] = torch.cat([neg_hidden, id_hidden]).repeat_interleave(num_images, dim=0)
            kwargs["add_text_embeds"] = torch.cat([neg_pooled, id_pooled]).repeat_interleave(num_images, dim=0)
        return kwargs

    return sdxl(prompt_embeds=text[0], negative_prompt_embeds=neg_hidden, pooled_prompt_embeds=text[1],
                negative_pooled_prompt_embeds=neg_pooled, num_inference_steps=steps, guidance_scale=guidance,
                width=size, height=size, num_images_per_prompt=num_images, generator=torch.Generator().manual_seed(seed),
                callback_on_step_end=switch_to_id,
                callback_on_step_end_tensor_inputs=["prompt_embeds", "add_text_embeds"]).images
