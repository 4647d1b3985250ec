"""PhotoMaker v2 next to v1 on the CPU: per-image cost, face analysis per photo, memory.

What differs between the versions is only the ID stage (v1: CLIP tower + projections; v2: InsightFace face analysis,
then the CLIP tower's patch features read by a perceiver) and the number of class-word copies in a prompt that is 77
tokens either way; the text encoders, the UNet steps and the VAE are the same computation. So:

* **tiny** — the whole request through ``Engine.generate`` on the tiny demo model, v1 and v2 alternating in the same
  run (per-image cost, stage laps);
* **full-size** — the published architectures' ID encoders with random weights (v1: 326 M parameters, v2: the same
  tower + a 2048-wide perceiver), v1 and v2 alternating in the same run, on 1 and 4 photos; the shared stages'
  full-size cost is section 1 of docs/benchmarks.md (``bench/engine_bench.py``), which this run does not repeat
  (the whole full-size pipeline needs ~15 GiB of RAM);
* **faces** — face analysis per photo with the tiny face pack (a photo with a face: one detection at 640; a photo
  without: all seven sizes). InsightFace's real ``buffalo_l`` cannot be downloaded here, so its cost is not measured.

    .venv/bin/python bench/v2_bench.py --json-out bench/results/v2-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from engine_bench import loadavg, materialise, n_params, peak_rss_gib, reset_peak_rss  # noqa: E402
from helpers import make_face  # noqa: E402


def median_laps(results: list[dict]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in results), 4) for k in results[0]}


def bench_tiny(repeats: int, size: int, steps: int) -> dict:
    from photomaker_server.contract.request import GenerationOptions
    from photomaker_server.engine.service import Engine, EngineConfig, GenerationRequest
    from photomaker_server.engine.tiny import ensure_tiny_model

    root = Path(os.environ.get("PHOTOMAKER_TEST_MODELS") or tempfile.mkdtemp()) / "tiny"
    loc = ensure_tiny_model(root)
    engine = Engine(EngineConfig(base_models={k: str(loc[k]) for k in ("photomaker", "photomaker-style")},
                                 checkpoint=str(loc["checkpoint"]), checkpoint_v2=str(loc["checkpoint_v2"]),
                                 face_model=str(loc["face_model"]), device="cpu", demo=True, id_cache_size=0))
    out: dict = {}
    for photos in (1, 4):
        faces = [make_face(i, (512, 640)) for i in range(photos)]
        laps: dict[str, list[dict]] = {"v1": [], "v2": []}
        for r in range(repeats + 1):  # the first round warms up (loading), not counted
            for version in (("v1", "v2") if r % 2 else ("v2", "v1")):
                options = GenerationOptions(prompt="a photo of a man img", photomaker_version=version, seed=r,
                                            num_inference_steps=steps, image_size={"width": size, "height": size},
                                            style="(No style)")
                cpu = time.process_time()
                result = engine.generate(GenerationRequest(options, faces))
                if r:
                    laps[version].append({**{k: v for k, v in result.timings.items() if k != "load"},
                                          "cpu_total": time.process_time() - cpu})
        out[f"{photos}_photos"] = {v: median_laps(runs) for v, runs in laps.items()}
        for key in ("total", "cpu_total"):
            ratios = [b[key] / a[key] for a, b in zip(laps["v1"], laps["v2"])]
            out[f"{photos}_photos"][f"v2_over_v1_paired_{key}"] = round(statistics.median(ratios), 3)
    return out


def bench_full_size_id(repeats: int) -> dict:
    from photomaker_server.engine.id_encoder import IDEncoderConfig, PhotoMakerIDEncoder
    from photomaker_server.engine.id_encoder_v2 import IDEncoderV2Config, PhotoMakerIDEncoderV2

    cpu = torch.device("cpu")
    reset_peak_rss()
    v1 = materialise(lambda: PhotoMakerIDEncoder(IDEncoderConfig()), cpu, torch.float32, 1)
    v2 = materialise(lambda: PhotoMakerIDEncoderV2(IDEncoderV2Config()), cpu, torch.float32, 2)
    out: dict = {"params": {"v1_id_encoder": n_params(v1), "v2_id_encoder": n_params(v2),
                            "v2_perceiver": n_params(v2.qformer_perceiver)}}
    prompt = torch.randn(1, 77, 2048)
    for photos in (1, 4):
        pixels, faces = torch.randn(photos, 3, 224, 224), torch.randn(photos, 512) * 20
        times: dict[str, list[float]] = {"v1": [], "v2": [], "v1_cpu": [], "v2_cpu": []}

        def v1_stage() -> None:
            mask = torch.zeros(1, 77, dtype=torch.bool)
            mask[0, 5:5 + photos] = True
            v1.fuse_into_prompt(prompt, v1.embed_photos(pixels), mask)

        def v2_stage() -> None:
            mask = torch.zeros(1, 77, dtype=torch.bool)
            mask[0, 5:5 + 2 * photos] = True
            v2.fuse_into_prompt(prompt, v2.embed_photos(pixels, faces), mask)

        for r in range(repeats + 1):
            for name, fn in ((("v1", v1_stage), ("v2", v2_stage)) if r % 2 else (("v2", v2_stage), ("v1", v1_stage))):
                started, cpu = time.perf_counter(), time.process_time()
                fn()
                if r:
                    times[name].append(time.perf_counter() - started)
                    times[f"{name}_cpu"].append(time.process_time() - cpu)
        out[f"{photos}_photos"] = {k: round(statistics.median(v), 4) for k, v in times.items()}
        for suffix in ("", "_cpu"):
            out[f"{photos}_photos"][f"v2_over_v1_paired{suffix}"] = round(
                statistics.median(b / a for a, b in zip(times["v1" + suffix], times["v2" + suffix])), 3)
    out["peak_rss_gib"] = round(peak_rss_gib() or 0.0, 2)
    return out


def bench_faces(repeats: int) -> dict:
    from photomaker_server.engine.faces import FaceAnalyzer
    from photomaker_server.engine.tiny_faces import save_face_pack

    pack = save_face_pack(Path(tempfile.mkdtemp()) / "faces")
    analyzer = FaceAnalyzer(str(pack))  # no cache: every call analyses
    out: dict = {}
    for label, image in (("face_1024x1024", make_face(3, (1024, 1024))), ("face_512x640", make_face(4, (512, 640))),
                         ("no_face_512x640", Image.new("RGB", (512, 640), (128, 128, 128)))):
        analyzer.embedding(image)
        runs, cpu_runs = [], []
        for _ in range(repeats):
            started, cpu = time.perf_counter(), time.process_time()
            analyzer.embedding(image)
            runs.append(time.perf_counter() - started)
            cpu_runs.append(time.process_time() - cpu)
        out[label] = {"wall": round(statistics.median(runs), 4), "cpu": round(statistics.median(cpu_runs), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256, help="tiny-model output size")
    parser.add_argument("--steps", type=int, default=4, help="tiny-model steps")
    parser.add_argument("--threads", type=int, help="torch threads (1 is steadier on a shared machine)")
    parser.add_argument("--only", nargs="+", choices=["faces", "tiny", "full"], default=["faces", "tiny", "full"])
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    # CPU seconds (process_time) are recorded beside wall seconds: on a shared machine the wall clock measures the
    # neighbours as much as this process; the paired v2/v1 ratio of CPU seconds is the steadier figure.
    report = {"torch_threads": torch.get_num_threads(), "loadavg_start": loadavg()}
    if "faces" in args.only:
        report["faces"] = bench_faces(args.repeats * 3)
    if "tiny" in args.only:
        report["tiny"] = bench_tiny(args.repeats, args.size, args.steps)
    if "full" in args.only:
        report["full_size_id_stage"] = bench_full_size_id(args.repeats)
    report["loadavg_end"] = loadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
