"""Generation behaviour on the tiny model: the ID path, merge step, seeds, image-to-image, styles, batches,
the ID cache, cancellation and base-model residency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from photomaker_server.contract.request import GenerationOptions, PhotoMakerInput
from photomaker_server.engine.errors import GenerationCancelled, InvalidRequest
from photomaker_server.engine.service import Engine, EngineConfig, GenerationRequest
from photomaker_server.contract.styles import get_style, style_names

from helpers import make_face

SMALL = {"width": 64, "height": 64}


def run(engine, photos, initial=None, on_step=None, should_cancel=None, **fields):
    fields.setdefault("prompt", "a photo of a man img, film grain")
    fields.setdefault("num_inference_steps", 4)
    fields.setdefault("image_size", SMALL)
    fields.setdefault("seed", 1)
    fields.setdefault("style", "(No style)")
    request = GenerationRequest(GenerationOptions(**fields), list(photos), initial)
    return engine.generate(request, on_step=on_step, should_cancel=should_cancel)


def pixels(result, index=0):
    return np.asarray(result.images[index], dtype=np.int16)


def test_the_whole_request_runs_as_its_options(engine, faces):
    """The worker hands the engine the request it parsed (file URLs and delivery options included): same image."""
    fields = {"prompt": "a photo of a man img", "num_inference_steps": 3, "image_size": SMALL, "seed": 9,
              "style": "(No style)"}
    whole = PhotoMakerInput(**fields, image_archive_url="https://example.com/a.zip", output_format="webp",
                            sync_mode=True, image_urls=["https://example.com/b.png"])
    from_request = engine.generate(GenerationRequest(whole, list(faces[:1])))
    from_options = engine.generate(GenerationRequest(GenerationOptions(**fields), list(faces[:1])))
    assert np.array_equal(pixels(from_request), pixels(from_options))


def test_same_seed_same_image_other_seed_other_image(engine, faces):
    a, b, c = run(engine, faces[:2], seed=5), run(engine, faces[:2], seed=5), run(engine, faces[:2], seed=6)
    assert np.array_equal(pixels(a), pixels(b))
    assert not np.array_equal(pixels(a), pixels(c))
    assert a.seed == 5 and a.images[0].size == (64, 64) and a.demo_model


def test_the_full_submit_time_request_is_accepted_as_options(engine, faces):
    # The worker hands over the whole PhotoMakerInput (file and delivery fields too), not a bare GenerationOptions.
    from photomaker_server.contract.request import PhotoMakerInput

    options = PhotoMakerInput(prompt="a photo of a man img", image_archive_url="https://example.com/a.zip",
                              num_inference_steps=2, image_size=SMALL, seed=3, style="(No style)")
    result = engine.generate(GenerationRequest(options, list(faces[:1])))
    assert result.seed == 3 and result.images[0].size == (64, 64)


def test_random_seed_is_reported_and_reproduces(engine, faces):
    first = run(engine, faces[:1], seed=None)
    assert 0 <= first.seed <= 2**31 - 1
    again = run(engine, faces[:1], seed=first.seed)
    assert np.array_equal(pixels(first), pixels(again))


def test_the_id_path_is_live(engine, faces):
    base = run(engine, faces[:2])
    assert not np.array_equal(pixels(base), pixels(run(engine, [faces[0], faces[2]]))), "other person, same image"
    assert not np.array_equal(pixels(base), pixels(run(engine, faces[:2][::-1]))), "photo order must matter"
    assert not np.array_equal(pixels(base), pixels(run(engine, faces[:1]))), "photo count must matter"


def test_without_id_steps_the_photos_do_not_matter(engine, faces):
    """style_strength 50 of 2 steps: merge step 1 → both steps run on the text alone."""
    text_only_a = run(engine, faces[:1], num_inference_steps=2, style_strength=50)
    text_only_b = run(engine, faces[1:2], num_inference_steps=2, style_strength=50)
    assert np.array_equal(pixels(text_only_a), pixels(text_only_b))
    with_id = run(engine, faces[:1], num_inference_steps=2, style_strength=15)  # merge step 0 → step 1 uses the ID
    assert not np.array_equal(pixels(with_id), pixels(text_only_a))


def test_merge_step_and_negative_side(engine, faces):
    """Steps 0..merge see the text-only embeddings, later steps the ID embeddings; the unconditional half is always
    the plain negative prompt."""
    pipe = engine.pipeline("photomaker")
    seen = []
    hook = pipe.sdxl.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True
    )
    try:
        run(engine, faces[:2], num_inference_steps=10, style_strength=30, negative_prompt="blurry")  # merge = 3
    finally:
        hook.remove()
    assert len(seen) == 10
    text_only = pipe.encode_text("a photo of a man, film grain").hidden
    negative = pipe.encode_text(" blurry").hidden
    for i, hidden in enumerate(seen):
        uncond, cond = hidden.chunk(2)
        assert torch.equal(uncond, negative), f"step {i}: negative side changed"
        if i <= 3:
            assert torch.equal(cond, text_only), f"step {i} should be text-only"
        else:
            assert torch.equal(cond, seen[4].chunk(2)[1]) and not torch.equal(cond, text_only), f"step {i} should use the ID"


def test_img2img_strength_one_ignores_the_image(engine, faces):
    plain = run(engine, faces[:1])
    assert np.array_equal(pixels(plain), pixels(run(engine, faces[:1], make_face(9, (96, 96)), initial_image_strength=1.0, image_size=SMALL)))


def test_img2img_strength_zero_keeps_the_image(engine, faces):
    initial = make_face(9, (64, 64))
    steps = []
    a = run(engine, faces[:1], initial, initial_image_strength=0.0, on_step=lambda i, n: steps.append(i))
    b = run(engine, faces[1:2], initial, initial_image_strength=0.0, prompt="a woman img in a garden")
    assert steps == [], "strength 0 must run no denoising step"
    assert np.array_equal(pixels(a), pixels(b)), "with strength 0 neither prompt nor photos may change the image"


def test_img2img_partial_strength_runs_the_tail_of_the_schedule(engine, faces):
    steps = []
    half = run(engine, faces[:1], make_face(9, (64, 64)), initial_image_strength=0.5, num_inference_steps=8,
               on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(i, 4) for i in range(1, 5)]
    other_image = run(engine, faces[:1], make_face(10, (64, 64)), initial_image_strength=0.5, num_inference_steps=8)
    assert not np.array_equal(pixels(half), pixels(other_image))
    assert not np.array_equal(pixels(half), pixels(run(engine, faces[:1], num_inference_steps=8)))


def test_img2img_default_size_follows_the_initial_image(engine, faces):
    result = run(engine, faces[:1], make_face(9, (200, 100)), image_size=None, num_inference_steps=1,
                 initial_image_strength=1.0)
    width, height = result.images[0].size
    assert abs(width / height - 2) < 0.02 and abs(width * height - 1024**2) < 0.03 * 1024**2


@pytest.mark.parametrize("style", style_names())
def test_each_style_is_applied(engine, faces, style):
    result = run(engine, faces[:1], style=style, num_inference_steps=1, negative_prompt="low quality")
    template = get_style(style)
    assert result.prompt == template.prompt.replace("{prompt}", "a photo of a man img, film grain")
    assert result.negative_prompt == f"{template.negative_prompt} low quality"
    if style != "(No style)":
        unstyled = run(engine, faces[:1], style="(No style)", num_inference_steps=1, negative_prompt="low quality")
        assert not np.array_equal(pixels(result), pixels(unstyled))


def test_num_images_is_one_batch_sharing_the_seed(engine, faces):
    single = run(engine, faces[:2], seed=3)
    batch = run(engine, faces[:2], seed=3, num_images=3)
    assert len(batch.images) == 3
    assert np.abs(pixels(batch, 0) - pixels(single)).max() <= 2, "image 0 of a batch is the 1-image call"
    assert not np.array_equal(pixels(batch, 0), pixels(batch, 1))


def test_id_cache_skips_the_image_encoder(engine, faces):
    pipe = engine.pipeline("photomaker")
    engine.id_cache.clear()
    batches = []
    hook = pipe.id_encoder.vision_model.register_forward_hook(
        lambda m, args, kwargs, out: batches.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    try:
        first = run(engine, faces[:2])
        second = run(engine, faces[:2])
        run(engine, [faces[0], faces[2]])
    finally:
        hook.remove()
    assert batches == [2, 1], "second request must not encode at all; third only the new photo"
    assert np.array_equal(pixels(first), pixels(second))
    assert len(engine.id_cache) == 3


def test_id_cache_is_bounded():
    from photomaker_server.engine.id_cache import IDEmbeddingCache

    cache = IDEmbeddingCache(2)
    for i in range(3):
        cache.put(str(i), torch.zeros(1))
    assert len(cache) == 2 and cache.get("0") is None and cache.get("2") is not None


def test_cancellation_stops_between_steps(engine, faces):
    done = []
    with pytest.raises(GenerationCancelled):
        run(engine, faces[:1], num_inference_steps=10, on_step=lambda i, n: done.append(i), should_cancel=lambda: len(done) >= 2)
    assert done == [1, 2]


def test_base_pipelines_are_different_models(engine, faces):
    assert not np.array_equal(pixels(run(engine, faces[:1])), pixels(run(engine, faces[:1], base_pipeline="photomaker-style")))


def test_on_demand_loading_keeps_at_most_the_budget(tiny_locations, faces):
    engine = Engine(EngineConfig(
        base_models={k: str(tiny_locations[k]) for k in ("photomaker", "photomaker-style")},
        checkpoint=str(tiny_locations["checkpoint"]), device="cpu", demo=True, max_resident_bases=1))
    run(engine, faces[:1], num_inference_steps=1)
    assert engine.loaded_bases() == ["photomaker"]
    run(engine, faces[:1], num_inference_steps=1, base_pipeline="photomaker-style")
    assert engine.loaded_bases() == ["photomaker-style"]


def test_memory_budget_decides_what_stays_resident(tiny_locations, faces):
    def engine_with(budget_gb: float) -> Engine:
        return Engine(EngineConfig(
            base_models={k: str(tiny_locations[k]) for k in ("photomaker", "photomaker-style")},
            checkpoint=str(tiny_locations["checkpoint"]), device="cpu", demo=True, memory_budget_gb=budget_gb))

    one_base = engine_with(1.0)
    size = one_base._estimated_bytes(str(tiny_locations["photomaker"]))
    run(one_base, faces[:1], num_inference_steps=1)
    assert one_base._sizes[(str(tiny_locations["photomaker"]), "v1")] == size, "header estimate must match the loaded size"

    tight = engine_with(1.5 * size / 2**30)  # room for one base, not two
    run(tight, faces[:1], num_inference_steps=1)
    run(tight, faces[:1], num_inference_steps=1, base_pipeline="photomaker-style")
    assert tight.loaded_bases() == ["photomaker-style"]

    roomy = engine_with(3 * size / 2**30)
    run(roomy, faces[:1], num_inference_steps=1)
    run(roomy, faces[:1], num_inference_steps=1, base_pipeline="photomaker-style")
    assert sorted(roomy.loaded_bases()) == ["photomaker", "photomaker-style"]


def test_no_photos_is_a_clear_error(engine):
    with pytest.raises(InvalidRequest, match="at least one photo"):
        run(engine, [])


def test_lora_is_loaded_and_fused(engine, tiny_locations):
    """The checkpoint's LoRA changes the UNet (old naming converted by diffusers), and fusing keeps its effect."""
    from diffusers import StableDiffusionXLPipeline

    from photomaker_server.engine.checkpoint import read_checkpoint

    fused_unet = engine.pipeline("photomaker").sdxl.unet
    assert not any("lora" in name for name, _ in fused_unet.named_modules()), "adapter layers must be gone"
    sdxl = StableDiffusionXLPipeline.from_pretrained(tiny_locations["photomaker"])
    torch.manual_seed(0)
    sample, hidden = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 128)
    cond = {"text_embeds": torch.randn(1, 64), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}

    def forward(unet):
        with torch.no_grad():
            return unet(sample, 10, encoder_hidden_states=hidden, added_cond_kwargs=cond).sample

    without = forward(sdxl.unet)
    sdxl.load_lora_weights(dict(read_checkpoint(tiny_locations["checkpoint"]).lora_weights), adapter_name="photomaker")
    with_adapter = forward(sdxl.unet)
    assert (with_adapter - without).abs().max() > 1e-3, "the LoRA had no effect"
    assert torch.allclose(forward(fused_unet), with_adapter, atol=1e-4)


def test_denoising_is_announced_after_the_prompt_and_id_encoding(engine, faces, monkeypatch):
    """``on_denoise_start`` comes once, after every encoder ran and before step 1: whoever times steps from it
    does not charge prompt or ID encoding to the first step."""
    from photomaker_server.engine.pipeline import PhotoMakerPipeline

    events: list[str] = []
    for name in ("encode_token_ids", "embed_id_images"):
        original = getattr(PhotoMakerPipeline, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            events.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(PhotoMakerPipeline, name, spy)
    request = GenerationRequest(GenerationOptions(prompt="a photo of a man img", num_inference_steps=3,
                                                  image_size=SMALL, seed=1, style="(No style)"), list(faces[:1]))
    engine.generate(request, on_step=lambda i, n: events.append(f"step {i}"),
                    on_denoise_start=lambda: events.append("denoise"))
    assert events.count("denoise") == 1 and events[-4:] == ["denoise", "step 1", "step 2", "step 3"], events
    assert {"encode_token_ids", "embed_id_images"} <= set(events[:-4]), events
