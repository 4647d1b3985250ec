"""Markdown tables from the JSON files that engine_bench.py / service_bench.py / profile_api.py write.

    .venv/bin/python bench/report.py bench/results/engine-cpu-256-2steps.json bench/results/service-cpu.json

Each file is recognised by its ``benchmark`` field; the tables go to stdout (pasted into docs/benchmarks.md).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def engine(report: dict) -> str:
    cfg, s = report["config"], report["summary"]
    o, d = s["ours"], s["diffusers"]
    out = [f"### Engine, {cfg['device']} {cfg['dtype']}, {cfg['width']}x{cfg['height']}, {cfg['steps']} steps, "
           f"{cfg['id_images']} ID photo, {cfg['repeats']} repeats (medians)", ""]
    out.append(table(["parameters", "count"], [[k, v] for k, v in report["params"].items()]
                     + [["total", report["params_total"]]]))
    out.append("")

    def paired_step() -> float:
        return statistics.median(statistics.median(a["step_s"]) / statistics.median(b["step_s"])
                                 for a, b in zip(report["runs"]["ours"], report["runs"]["diffusers"]))

    def paired_total() -> float:
        return statistics.median(a["total_s"] / b["total_s"] for a, b in zip(report["runs"]["ours"], report["runs"]["diffusers"]))

    rows = [
        ["total (s)", o["total_s_median"], d["total_s_median"], o["total_s_median"] / d["total_s_median"]],
        ["one denoising step, CFG batch 2 (s)", o["step_s_median"], d["step_s_median"], o["step_s_median"] / d["step_s_median"]],
        ["UNet forward (s)", o["unet_forward_s_median"], d["unet_forward_s_median"],
         o["unet_forward_s_median"] / d["unet_forward_s_median"]],
        [f"text encoders ({o['text_encoder_calls_per_run'] // 2} vs {d['text_encoder_calls_per_run'] // 2} prompts) (s)",
         o["text_encoders_s_median"], d["text_encoders_s_median"], o["text_encoders_s_median"] / d["text_encoders_s_median"]],
        ["ID encoder vision tower (s)", o["id_vision_s_median"], None, None],
        ["VAE decode (s)", o["vae_decode_s_median"], d["vae_decode_s_median"], o["vae_decode_s_median"] / d["vae_decode_s_median"]],
        ["process CPU time (s)", o.get("cpu_s_median"), d.get("cpu_s_median"), None],
        ["CPU time / wall time", o.get("cpu_per_wall_median"), d.get("cpu_per_wall_median"), None],
        ["peak RSS (GiB)", o["peak_rss_gib_max"], d["peak_rss_gib_max"], None],
    ]
    if "cuda_peak_allocated_gib_max" in o:
        rows.append(["peak CUDA allocated (GiB)", o["cuda_peak_allocated_gib_max"], d["cuda_peak_allocated_gib_max"], None])
    out.append(table(["", "ours (PhotoMaker)", "diffusers SDXL", "ours / diffusers"], rows))
    out.append("")
    out.append(f"Paired ratios (median over repeats of ours/diffusers in the same repeat): total {paired_total():.3f}, "
               f"per step {paired_step():.3f}. Totals per repeat: ours {o['total_s_all']}, diffusers {d['total_s_all']}. "
               f"Our stage laps (median): {o.get('laps_s_median')}. RSS with all weights: {report['rss_with_weights_gib']} GiB; "
               f"build {report['build_s']['total']} s. Load average at start / end: {report['load_avg_start']} / "
               f"{report['load_avg_end']}.")
    if "flops" in report:
        f = report["flops"]
        out += ["", table(["TFLOP (counted)", "this size", "1024x1024"],
                          [[k, f[k] / 1e12, report["flops_1024"][k] / 1e12] for k in f]),
                "", f"Achieved TFLOP/s: {report['achieved_tflops']}"]
    return "\n".join(out)


def service(report: dict) -> str:
    out = ["### Service (live `photomaker serve --tiny`, 127.0.0.1)", ""]
    rows = []
    for mode, res in report["overhead"].items():
        label = "SSE stream" if mode == "sse" else f"status poll every {res.get('poll_interval_s', 0.02) * 1000:.0f} ms"
        for key, name in (("end_to_end_s", "submit → COMPLETED seen"), ("inference_time_s", "metrics.inference_time"),
                          ("overhead_s", "**overhead** (difference)"), ("submit_http_s", "submit request"),
                          ("submit_to_claim_s", "submit → worker claimed (queue wait)"),
                          ("job_run_minus_inference_s", "job run outside inference (inputs, save)"),
                          ("completed_log_to_seen_s", "completed → client sees it")):
            dist = res.get(key, {})
            rows.append([label, name, dist.get("p50"), dist.get("p90"), dist.get("n")])
    out.append(table(["client", "ms", "p50", "p90", "n"], rows))
    out.append("")
    rows = []
    for section, name in (("status_polling_finished", "status, finished job"), ("status_polling_queued", "status, queued job"),
                          ("submit", "submit")):
        for kind, res in (report.get(section) or {}).items():
            lat = res["latency_ms"]
            extra = f" (queue {res['queue_length']})" if "queue_length" in res else ""
            rows.append([name + extra, kind, res["concurrency"], res["requests"], res["requests_per_s"], lat.get("p50"),
                         lat.get("p90"), lat.get("p99"), res["error_count"], res.get("api_cpu_ms_per_request"),
                         res["cpu"]["cpu_s"].get("load_generator")])
    if "submit_worker_running" in report:
        res = report["submit_worker_running"]
        lat = res["latency_ms"]
        rows.append(["submit, worker running", "raw", res["concurrency"], res["requests"], res["requests_per_s"],
                     lat.get("p50"), lat.get("p90"), lat.get("p99"), res["error_count"], res.get("api_cpu_ms_per_request"),
                     res["cpu"]["cpu_s"].get("load_generator")])
    out.append(table(["load", "client", "concurrency", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors",
                      "API CPU ms/req", "client CPU s"], rows))
    out.append("")
    rows = [["idle (worker paused)", report.get("write_probe_idle_ms")]]
    for kind, res in (report.get("submit") or {}).items():
        rows.append([f"during submit load ({kind}, worker paused)", res.get("write_probe_ms")])
    if "submit_worker_running" in report:
        rows.append(["during submit load (raw, worker running)", report["submit_worker_running"].get("write_probe_ms")])
    def cells(dist: dict | None) -> list:
        return [dist.get(k) for k in ("p50", "p90", "p99", "max")] if dist and dist.get("n") else ["–"] * 4

    out.append(table(["worker-like log write (one per denoising step)", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                     [[r[0], *cells(r[1])] for r in rows]))
    out.append("")
    rows = []
    for label, res in (report.get("idle_streams") or {}).items():
        rows.append([label, res["streams"], res["queue_length"], res.get("api_cpu_fraction_of_one_core"),
                     res.get("api_cpu_ms_per_stream_per_s")])
    if rows:
        out.append(table(["SSE streams on waiting jobs", "streams", "queue length", "API CPU (cores)", "API CPU ms per stream per s"], rows))
        out.append("")
    mem = [["API (--tiny)", report["memory_idle"]["api"]["rss_mib"], report["memory_after_load"]["api"]["rss_mib"],
            report["memory_after_load"]["api"]["peak_rss_mib"]],
           ["worker (--tiny)", report["memory_idle"].get("worker", {}).get("rss_mib"),
            report["memory_after_load"].get("worker", {}).get("rss_mib"),
            report["memory_after_load"].get("worker", {}).get("peak_rss_mib")]]
    plain = report.get("plain_api")
    if plain:
        mem.append(["API (without --tiny)", plain["memory_idle"]["api"]["rss_mib"],
                    plain["memory_after_polling"]["api"]["rss_mib"], plain["memory_after_polling"]["api"]["peak_rss_mib"]])
    out.append(table(["RSS (MiB)", "idle", "after load", "peak"], mem))
    out.append("")
    out.append(f"Startup to ready: {report['startup_to_ready_s']} s. Idle CPU over 5 s: {report['idle_cpu_5s']['cpu_s']}. "
               f"Load average at start / end: {report['load_start']} / {report['load_end']}.")
    if plain:
        st = plain["status_polling_finished"]
        out.append(f"Without --tiny: API has libtorch mapped: {plain['api_has_libtorch']}; status [raw, {st['concurrency']} clients]"
                   f" {st['requests_per_s']} req/s, p50 {st['latency_ms'].get('p50')} ms, API CPU "
                   f"{st.get('api_cpu_ms_per_request')} ms/req.")
    return "\n".join(out)


def profile(report: dict) -> str:
    rows = []
    for name in report["asgi_threadpool"]:
        inline = report.get("asgi_inline", {}).get(name, {})
        rows.append([name, report["asgi_threadpool"][name]["cpu_ms"], inline.get("cpu_ms")])
    out = ["### API in-process (ASGI, sequential, no sockets)", "",
           table(["request", "CPU ms (as deployed: thread-pool hops)", "CPU ms (hops inlined)"], rows), "",
           table(["job-store call", "CPU ms"], [[k, v] for k, v in report["store_ms"].items()]), "",
           f"Queue length for the *_long_queue rows: {report.get('queue_length')}."]
    return "\n".join(out)


def flops(report: dict) -> str:
    sizes = list(report["tflop"])
    names = list(report["tflop"][sizes[0]])
    return "\n".join([table(["TFLOP", *sizes], [[n, *[report["tflop"][z][n] for z in sizes]] for n in names]), "",
                      f"PhotoMaker at 1024x1024, 50 steps: {report['pflop_photomaker_1024_50_steps']} PFLOP; at 989 "
                      f"TFLOP/s: {report['h100_sxm_floor_s_at_989_tflops']} s."])


def main(paths: list[str]) -> int:
    for path in paths:
        report = json.loads(Path(path).read_text())
        kind = report.get("benchmark")
        print({"engine_bench": engine, "engine_flops": flops, "service_bench": service, "profile_api": profile}[kind](report))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
