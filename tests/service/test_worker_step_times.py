"""The worker's step-time counters (``/metrics``: ``photomaker_denoise_step_seconds``) measure denoising steps only:
prompt and ID encoding happen before the first step and are not counted into it."""

from __future__ import annotations

import time

from photomaker_server.engine.pipeline import PhotoMakerPipeline
from photomaker_server.settings import APP_ID, Settings
from photomaker_server.worker.process import Worker
from service.svc import small_stored

SLOW_ENCODING_S = 0.6


def test_prompt_encoding_is_not_counted_into_the_first_step(engine, tmp_path, monkeypatch):
    encode = PhotoMakerPipeline.encode_token_ids

    def slow_encode(self, input_ids):  # noqa: ANN001, ANN202
        time.sleep(SLOW_ENCODING_S / 3)  # three prompts: ID, text-only, negative
        return encode(self, input_ids)

    monkeypatch.setattr(PhotoMakerPipeline, "encode_token_ids", slow_encode)
    worker = Worker(Settings(data_dir=tmp_path, api_keys=["k"]), engine=engine)
    try:
        worker.load()
        job = worker.store.submit("owner", APP_ID, small_stored(num_inference_steps=2, seed=4))
        claimed = worker.store.claim(worker.worker_id, 30)
        assert claimed is not None and claimed.id == job.id
        worker.process(claimed)
        done = worker.store.get(job.id)
        assert done.succeeded, done.error
        counters, timings = worker.counters, done.result.timings
        assert counters.steps_total == 2
        # Steps are timed from the start of denoising: their sum fits in the engine's denoise stage, which the
        # encoders' SLOW_ENCODING_S is not part of (a loaded machine makes the steps slow, never this false).
        assert timings["encode_prompt"] >= SLOW_ENCODING_S * 0.9, timings
        assert counters.step_seconds_sum <= timings["denoise"] + 0.05, (counters, timings)
    finally:
        worker.deployment.close()
