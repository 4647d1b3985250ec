"""Full-size PhotoMaker engine benchmark with random weights: our pipeline next to plain diffusers SDXL.

Builds the real architecture (SDXL UNet 2.57 B parameters, SDXL VAE, CLIP-L and OpenCLIP-bigG text encoders, the
PhotoMaker v1 ID encoder of 326 M parameters) with *random* weights, so nothing has to be downloaded; the compute per
step is exactly that of the published models. Every component exists once in memory and is shared by
``photomaker_server.engine.pipeline.PhotoMakerPipeline`` and a plain ``diffusers.StableDiffusionXLPipeline``; both are
timed on the same size, steps and seed in the same run, alternating which goes first.

No LoRA is loaded: in production PhotoMaker's LoRA is fused into the UNet weights at load time
(``Engine._load``: ``load_lora_weights`` → ``fuse_lora`` → ``unload_lora_weights``), so it costs nothing per step.

Examples::

    .venv/bin/python bench/engine_bench.py                        # CPU: 256x256, 2 steps, 3 repeats
    .venv/bin/python bench/engine_bench.py --device cuda          # GPU: bf16, 1024x1024, 50 steps
    .venv/bin/python bench/engine_bench.py --json-out bench/results/engine-cpu.json

Random weights give images of noise; only the timings and memory mean anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

EXPECTED_UNET_PARAMS = 2_567_463_684
PROMPT = "a photo of a man img, looking at the camera, natural light"
SEED = 42
GUIDANCE = 5.0
STYLE_STRENGTH = 20


# --------------------------------------------------------------------------------------------------------------
# Memory and machine facts
def _proc_status_kb(pid: int | str, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_gib() -> float | None:
    kb = _proc_status_kb("self", "VmRSS")
    return None if kb is None else kb / 2**20


def peak_rss_gib() -> float | None:
    """VmHWM: the process's peak resident set since start or since the last ``reset_peak_rss``."""
    kb = _proc_status_kb("self", "VmHWM")
    return None if kb is None else kb / 2**20


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        import diffusers
        import transformers

        info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["mem_total_gib"] = round(_meminfo_kb("MemTotal") / 2**20, 1)
    except (OSError, KeyError):
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_mem_gib"] = round(props.total_memory / 2**30, 1)
    return info


def _meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# --------------------------------------------------------------------------------------------------------------
# Building the full-size models with random weights
def unet_config() -> dict:
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )


def text_configs():
    from transformers import CLIPTextConfig

    common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            hidden_act="quick_gelu", projection_dim=768, **common)
    bigg = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                          hidden_act="gelu", projection_dim=1280, **common)
    return clip_l, bigg


@torch.no_grad()
def fill_random(module: nn.Module, generator: torch.Generator) -> None:
    """Initialise a module materialised with ``to_empty``: variance-preserving normal weights, unit norms, zero biases.

    Weights get N(0, 1/fan_in) (activations stay O(1) through the deep stacks: no inf/NaN, no denormals),
    embeddings N(0, 0.02²), norm scales 1, biases 0. Buffers are rebuilt (only CLIP's ``position_ids`` exist).
    """
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if isinstance(sub, nn.Embedding):
                param.normal_(0.0, 0.02, generator=generator)
            elif isinstance(sub, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(sub).__name__.lower():
                param.fill_(1.0 if name == "weight" else 0.0)
            elif name == "bias":
                param.zero_()
            elif param.dim() < 2:  # e.g. CLIP's class_embedding
                param.normal_(0.0, 0.02, generator=generator)
            else:
                fan_in = param[0].numel()
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        for name, buf in list(sub.named_buffers(recurse=False)):
            if name == "position_ids":
                buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))
            else:
                raise RuntimeError(f"don't know how to initialise buffer {name} of {type(sub).__name__}")


def materialise(factory, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """Build on the meta device (no memory, no init), then allocate once on ``device`` in ``dtype`` and fill."""
    with torch.device("meta"):
        module = factory()
    module = module.to(dtype=dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    fill_random(module, generator)
    return module.eval().requires_grad_(False)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build(device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from photomaker_server.engine.id_encoder import IDEncoderConfig, PhotoMakerIDEncoder
    from photomaker_server.engine.pipeline import PhotoMakerPipeline
    from photomaker_server.engine.tiny import SDXL_SCHEDULER, _tokenizer

    clip_l, bigg = text_configs()
    timings, params = {}, {}
    parts = {}
    for name, factory, seed in (
        ("unet", lambda: UNet2DConditionModel(**unet_config()), 1),
        ("vae", lambda: AutoencoderKL(**vae_config()), 2),
        ("text_encoder", lambda: CLIPTextModel(clip_l), 3),
        ("text_encoder_2", lambda: CLIPTextModelWithProjection(bigg), 4),
        ("id_encoder", lambda: PhotoMakerIDEncoder(IDEncoderConfig()), 5),
    ):
        started = time.perf_counter()
        parts[name] = materialise(factory, device, dtype, seed)
        timings[name] = round(time.perf_counter() - started, 2)
        params[name] = n_params(parts[name])
        print(f"  built {name}: {params[name]:,} parameters in {timings[name]} s (RSS {rss_gib():.2f} GiB)", flush=True)
    if params["unet"] != EXPECTED_UNET_PARAMS:
        raise SystemExit(f"UNet has {params['unet']:,} parameters, expected {EXPECTED_UNET_PARAMS:,}")

    sdxl = StableDiffusionXLPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        text_encoder_2=parts["text_encoder_2"],
        tokenizer=_tokenizer("<|endoftext|>"),
        tokenizer_2=_tokenizer("!"),
        unet=parts["unet"],
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
        add_watermarker=False,
    )
    sdxl.set_progress_bar_config(disable=True)
    # Our pipeline wraps the very same modules (it adds the trigger word to the shared tokenizers, which the
    # plain pipeline never sees because its prompt has no trigger word). ID cache off: every run embeds the photos.
    ours = PhotoMakerPipeline(sdxl, parts["id_encoder"])
    return sdxl, ours, parts, params, timings


@torch.no_grad()
def count_flops(height: int, width: int, id_images: int) -> dict[str, float]:
    """FLOPs of each component for one generation at this size, counted on the meta device (no memory, no compute).

    ``unet_step``: one UNet forward on the guidance batch of 2; ``text_encoders_per_prompt``: CLIP-L + bigG on one
    77-token prompt; ``vae_decode``: one latent; ``id_encoder``: ``id_images`` photos at 224 px.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from photomaker_server.engine.id_encoder import IDEncoderConfig, PhotoMakerIDEncoder

    clip_l, bigg = text_configs()
    h, w = height // 8, width // 8

    def flops(fn) -> float:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return float(counter.get_total_flops())

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config())
        vae = AutoencoderKL(**vae_config())
        te1, te2 = CLIPTextModel(clip_l), CLIPTextModelWithProjection(bigg)
        id_encoder = PhotoMakerIDEncoder(IDEncoderConfig())
        ids = torch.zeros(1, 77, dtype=torch.long)
        return {
            "unet_step": flops(lambda: unet(torch.randn(2, 4, h, w), torch.tensor(999.0),
                                            encoder_hidden_states=torch.randn(2, 77, 2048),
                                            added_cond_kwargs={"text_embeds": torch.randn(2, 1280),
                                                               "time_ids": torch.randn(2, 6)})),
            "vae_decode": flops(lambda: vae.decode(torch.randn(1, 4, h, w))),
            "text_encoders_per_prompt": flops(lambda: te1(ids, output_hidden_states=True))
            + flops(lambda: te2(ids, output_hidden_states=True)),
            "id_encoder": flops(lambda: id_encoder.embed_photos(torch.randn(id_images, 3, 224, 224))),
        }


# --------------------------------------------------------------------------------------------------------------
# Timing probes shared by both pipelines
@dataclass
class Probe:
    device: torch.device
    spans: dict[str, list[float]] = field(default_factory=dict)
    step_ends: list[float] = field(default_factory=list)
    first_unet_start: float | None = None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        self.spans, self.step_ends, self.first_unet_start = {}, [], None

    def attach(self, module: nn.Module, name: str) -> None:
        starts: list[float] = []

        def pre(_module, _args, _kwargs=None):
            self.sync()
            now = time.perf_counter()
            starts.append(now)
            if name == "unet" and self.first_unet_start is None:
                self.first_unet_start = now

        def post(_module, _args, _output):
            self.sync()
            self.spans.setdefault(name, []).append(time.perf_counter() - starts.pop())

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def wrap_method(self, obj: object, method: str, name: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            self.sync()
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.sync()
                self.spans.setdefault(name, []).append(time.perf_counter() - started)

        setattr(obj, method, timed)

    def step_done(self) -> None:
        self.sync()
        self.step_ends.append(time.perf_counter())

    def step_times(self) -> list[float]:
        if not self.step_ends or self.first_unet_start is None:
            return []
        marks = [self.first_unet_start, *self.step_ends]
        return [b - a for a, b in zip(marks, marks[1:])]


def id_photos(n: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(n)]


def run_ours(ours, probe: Probe, args, prompt: str, negative: str, photos, steps: int) -> dict:
    probe.reset()
    probe.sync()
    started = time.perf_counter()
    output = ours(
        prompt,
        photos,
        negative,
        width=args.width,
        height=args.height,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        style_strength=STYLE_STRENGTH,
        num_images=1,
        generator=torch.Generator(device=probe.device).manual_seed(SEED),
        on_step=lambda i, total: probe.step_done(),
    )
    probe.sync()
    total = time.perf_counter() - started
    return {"total_s": total, "laps_s": output.timings, "images": output.images}


def run_diffusers(sdxl, probe: Probe, args, prompt: str, negative: str, steps: int) -> dict:
    probe.reset()

    def on_step_end(_pipe, _i, _t, kwargs):
        probe.step_done()
        return kwargs

    probe.sync()
    started = time.perf_counter()
    output = sdxl(
        prompt=prompt,
        negative_prompt=negative,
        width=args.width,
        height=args.height,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        generator=torch.Generator(device=probe.device).manual_seed(SEED),
        callback_on_step_end=on_step_end,
    )
    probe.sync()
    total = time.perf_counter() - started
    return {"total_s": total, "images": output.images}


def measure(name: str, fn, probe: Probe, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_alloc = torch.cuda.memory_allocated(device)
    rss_before = rss_gib()
    reset_peak_rss()
    load_before = loadavg()
    cpu_before = time.process_time()
    result = fn()
    result["cpu_s"] = time.process_time() - cpu_before  # all threads of this process: contention shows as cpu/wall < threads
    result["load_before"], result["load_after"] = load_before, loadavg()
    result["rss_before_gib"], result["peak_rss_gib"] = rss_before, peak_rss_gib()
    if device.type == "cuda":
        result["cuda_peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["cuda_peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        result["cuda_weights_allocated_gib"] = base_alloc / 2**30
    result["spans_s"] = {k: list(v) for k, v in probe.spans.items()}
    result["step_s"] = probe.step_times()
    result.pop("images", None)
    unet = probe.spans.get("unet", [])
    print(
        f"  {name:9s} total {result['total_s']:8.3f} s | unet/step {statistics.median(unet) if unet else float('nan'):7.3f} s"
        f" | step {statistics.median(result['step_s']) if result['step_s'] else float('nan'):7.3f} s"
        f" | cpu/wall {result['cpu_s'] / result['total_s']:.2f} | peak RSS {result['peak_rss_gib'] or float('nan'):.2f} GiB"
        f" | load {result['load_after']}",
        flush=True,
    )
    return result


def summarise(runs: list[dict]) -> dict:
    def med(values):
        return round(statistics.median(values), 4) if values else None

    spans = lambda key: [sum(r["spans_s"].get(key, [])) for r in runs]  # noqa: E731
    per_call = lambda key: [x for r in runs for x in r["spans_s"].get(key, [])]  # noqa: E731
    out = {
        "runs": len(runs),
        "total_s_median": med([r["total_s"] for r in runs]),
        "total_s_all": [round(r["total_s"], 4) for r in runs],
        "cpu_s_median": med([r["cpu_s"] for r in runs]),
        "cpu_per_wall_median": med([r["cpu_s"] / r["total_s"] for r in runs]),
        "unet_forward_s_median": med(per_call("unet")),
        "unet_forward_calls_per_run": len(runs[0]["spans_s"].get("unet", [])),
        "step_s_median": med([x for r in runs for x in r["step_s"]]),
        "text_encoders_s_median": med([a + b for a, b in zip(spans("text_encoder"), spans("text_encoder_2"))]),
        "text_encoder_calls_per_run": len(runs[0]["spans_s"].get("text_encoder", []))
        + len(runs[0]["spans_s"].get("text_encoder_2", [])),
        "vae_decode_s_median": med(spans("vae_decode")),
        "id_vision_s_median": med(spans("id_vision")),
        "peak_rss_gib_max": round(max(r["peak_rss_gib"] or 0 for r in runs), 3),
    }
    if "laps_s" in runs[0]:
        out["laps_s_median"] = {k: med([r["laps_s"][k] for r in runs]) for k in runs[0]["laps_s"]}
    if "cuda_peak_allocated_gib" in runs[0]:
        out["cuda_peak_allocated_gib_max"] = round(max(r["cuda_peak_allocated_gib"] for r in runs), 3)
        out["cuda_peak_reserved_gib_max"] = round(max(r["cuda_peak_reserved_gib"] for r in runs), 3)
        out["cuda_weights_allocated_gib"] = round(runs[0]["cuda_weights_allocated_gib"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 …")
    parser.add_argument("--height", type=int, default=None, help="default: 1024 on CUDA, 256 on CPU")
    parser.add_argument("--width", type=int, default=None, help="default: 1024 on CUDA, 256 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 50 on CUDA, 2 on CPU")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each pipeline (median reported)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="steps of the untimed warm-up run (0: none)")
    parser.add_argument("--id-images", type=int, default=1, help="ID photos per request (ID cache off)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="auto: bf16 on CUDA (fp16 if bf16 unsupported), fp32 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--flops-only", action="store_true",
                        help="only count FLOPs (meta device: no weights, seconds) at 256, 512, 1024 and the given size")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.flops_only:
        sizes = sorted({256, 512, 1024, *([args.height] if args.height else [])})
        table = {f"{n}x{n}": count_flops(n, n, args.id_images) for n in sizes}
        big = table["1024x1024"]
        total = 50 * big["unet_step"] + big["vae_decode"] + 3 * big["text_encoders_per_prompt"] + big["id_encoder"]
        out = {"benchmark": "engine_flops", "id_images": args.id_images, "tflop": {
            size: {k: round(v / 1e12, 4) for k, v in row.items()} for size, row in table.items()},
            "pflop_photomaker_1024_50_steps": round(total / 1e15, 4),
            "h100_sxm_floor_s_at_989_tflops": round(total / 989e12, 3)}
        print(json.dumps(out, indent=2))
        if args.json_out:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(out, indent=2))
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    if args.dtype == "auto":
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if gpu else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    args.height = args.height or (1024 if gpu else 256)
    args.width = args.width or (1024 if gpu else 256)
    args.steps = args.steps or (50 if gpu else 2)
    if device.type == "cpu":
        torch.set_flush_denormal(True)

    from photomaker_server.engine.prompts import text_only_prompt
    from photomaker_server.contract.styles import default_style, get_style

    flops = count_flops(args.height, args.width, args.id_images)
    flops_1024 = count_flops(1024, 1024, args.id_images)
    print("TFLOP at this size: " + ", ".join(f"{k} {v / 1e12:.3f}" for k, v in flops.items()), flush=True)
    print(f"device {device} dtype {dtype} size {args.width}x{args.height} steps {args.steps} repeats {args.repeats} "
          f"id_images {args.id_images} threads {torch.get_num_threads()} load {loadavg()}", flush=True)
    started = time.perf_counter()
    sdxl, ours, parts, params, build_s = build(device, dtype)
    build_total = time.perf_counter() - started
    weights_rss = rss_gib()
    print(f"built in {build_total:.1f} s; RSS with all weights {weights_rss:.2f} GiB", flush=True)

    probe = Probe(device)
    probe.attach(parts["unet"], "unet")
    probe.attach(parts["text_encoder"], "text_encoder")
    probe.attach(parts["text_encoder_2"], "text_encoder_2")
    probe.attach(parts["id_encoder"].vision_model, "id_vision")
    probe.wrap_method(parts["vae"], "decode", "vae_decode")

    prompt, negative = get_style(default_style()).apply(PROMPT, "")
    plain_prompt = text_only_prompt(sdxl.tokenizer, prompt, ours.trigger_word)
    photos = id_photos(args.id_images)
    print(f"prompt (ours):      {prompt!r}\nprompt (diffusers): {plain_prompt!r}\nnegative:           {negative!r}")

    if args.warmup_steps:
        print(f"warm-up ({args.warmup_steps} step) …", flush=True)
        run_ours(ours, probe, args, prompt, negative, photos, args.warmup_steps)
        run_diffusers(sdxl, probe, args, plain_prompt, negative, args.warmup_steps)

    results: dict[str, list[dict]] = {"ours": [], "diffusers": []}
    load_start = loadavg()
    for r in range(args.repeats):
        order = ["ours", "diffusers"] if r % 2 == 0 else ["diffusers", "ours"]
        print(f"repeat {r + 1}/{args.repeats}", flush=True)
        for name in order:
            if name == "ours":
                fn = lambda: run_ours(ours, probe, args, prompt, negative, photos, args.steps)  # noqa: E731
            else:
                fn = lambda: run_diffusers(sdxl, probe, args, plain_prompt, negative, args.steps)  # noqa: E731
            results[name].append(measure(name, fn, probe, device))
    load_end = loadavg()

    summary = {name: summarise(runs) for name, runs in results.items()}
    o, d = summary["ours"], summary["diffusers"]
    paired = [a["total_s"] / b["total_s"] for a, b in zip(results["ours"], results["diffusers"])]
    ratios = {
        "total_ours_over_diffusers": round(o["total_s_median"] / d["total_s_median"], 4),
        "total_ours_over_diffusers_paired_median": round(statistics.median(paired), 4),
        "total_ours_over_diffusers_paired_all": [round(x, 4) for x in paired],
        "step_ours_over_diffusers_paired_median": round(statistics.median(
            statistics.median(a["step_s"]) / statistics.median(b["step_s"])
            for a, b in zip(results["ours"], results["diffusers"])), 4),
        "step_ours_over_diffusers": round(o["step_s_median"] / d["step_s_median"], 4),
        "unet_forward_ours_over_diffusers": round(o["unet_forward_s_median"] / d["unet_forward_s_median"], 4),
        "extra_s_total": round(o["total_s_median"] - d["total_s_median"], 4),
    }
    achieved = {}
    for name, stats in summary.items():
        achieved[name] = {
            "unet_step": flops["unet_step"] / stats["unet_forward_s_median"] / 1e12,
            "vae_decode": flops["vae_decode"] / stats["vae_decode_s_median"] / 1e12,
            "text_encoders": flops["text_encoders_per_prompt"] * stats["text_encoder_calls_per_run"] / 2
            / stats["text_encoders_s_median"] / 1e12,
        }
        if stats["id_vision_s_median"]:
            achieved[name]["id_encoder"] = flops["id_encoder"] / stats["id_vision_s_median"] / 1e12
        achieved[name] = {k: round(v, 4) for k, v in achieved[name].items()}
    total_1024_50 = 50 * flops_1024["unet_step"] + flops_1024["vae_decode"] + 3 * flops_1024["text_encoders_per_prompt"] \
        + flops_1024["id_encoder"]
    report = {
        "benchmark": "engine_bench",
        "flops": flops,
        "flops_1024": flops_1024,
        "pflop_photomaker_1024_50_steps": round(total_1024_50 / 1e15, 4),
        "achieved_tflops": achieved,
        "config": {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "width": args.width,
                   "height": args.height, "steps": args.steps, "repeats": args.repeats,
                   "warmup_steps": args.warmup_steps, "id_images": args.id_images, "guidance_scale": GUIDANCE,
                   "style_strength": STYLE_STRENGTH, "seed": SEED, "prompt": prompt, "plain_prompt": plain_prompt,
                   "negative_prompt": negative, "lora": "not loaded (fused into the UNet in production: no per-step cost)"},
        "machine": machine_info(device),
        "load_avg_start": load_start,
        "load_avg_end": load_end,
        "params": params,
        "params_total": sum(params.values()),
        "build_s": {**build_s, "total": round(build_total, 2)},
        "rss_with_weights_gib": round(weights_rss, 3) if weights_rss else None,
        "summary": summary,
        "ratios": ratios,
        "runs": results,
        "argv": sys.argv,
    }
    print(json.dumps({"summary": summary, "ratios": ratios, "achieved_tflops": achieved,
                      "load_avg": [load_start, load_end]}, indent=2))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
