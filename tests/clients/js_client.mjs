// Drives the UNMODIFIED official fal JS client (@fal-ai/client) against a photomaker server.
//
//   PM_URL=http://127.0.0.1:8000 PM_KEY=... PM_FACE=face.png node js_client.mjs
//
// The client's only configuration is the documented always-on proxy (config.d.ts, `ProxyUrlConfig`):
//   fal.config({ proxyUrl: { url: `${PM_URL}/api/fal/proxy`, when: "always" }, credentials: PM_KEY })
// Prints one JSON object: the outcome of each scenario (or its error), for tests/clients/test_js_client.py.
import { readFile } from "node:fs/promises";
import { ApiError, ValidationError, fal } from "@fal-ai/client";

const { PM_URL, PM_KEY, PM_FACE } = process.env;
const APP = "fal-ai/photomaker";

fal.config({ proxyUrl: { url: `${PM_URL}/api/fal/proxy`, when: "always" }, credentials: PM_KEY });

const small = (imageUrl, extra = {}) => ({
  prompt: "a photo of a man img, film grain",
  image_archive_url: imageUrl,
  num_inference_steps: 4,
  image_size: { width: 64, height: 64 },
  seed: 1,
  ...extra,
});

const describe = (error) => ({
  name: error?.name,
  message: String(error?.message ?? error),
  status: error?.status,
  body: error?.body,
  requestId: error?.requestId,
  fieldErrors: error instanceof ValidationError ? error.fieldErrors : undefined,
  isApiError: error instanceof ApiError,
});

async function attempt(fn) {
  try {
    return await fn();
  } catch (error) {
    return { error: describe(error) };
  }
}

async function waitCompleted(requestId) {
  return fal.queue.subscribeToStatus(APP, { requestId, logs: true, pollInterval: 100 });
}

const face = await readFile(PM_FACE);
const out = {};

// Storage: initiate through the proxy (rest.fal.ai), then PUT straight to the returned upload_url.
out.upload_blob = await attempt(async () => ({
  url: await fal.storage.upload(new Blob([face], { type: "image/png" })),
}));
out.upload_file = await attempt(async () => ({
  url: await fal.storage.upload(new File([face], "face.png", { type: "image/png" })),
}));
const photoUrl = out.upload_blob.url;

// subscribe, polling (the default mode), with logs.
out.subscribe_polling = await attempt(async () => {
  const updates = [];
  let enqueued = null;
  const result = await fal.subscribe(APP, {
    input: small(photoUrl, { seed: 42 }),
    logs: true,
    pollInterval: 100,
    onEnqueue: (id) => { enqueued = id; },
    onQueueUpdate: (u) => updates.push({ status: u.status, queue_position: u.queue_position,
                                         logs: (u.logs ?? []).map((l) => l.message) }),
  });
  return { requestId: result.requestId, enqueued, data: result.data, updates };
});

// subscribe over the SSE status stream; the client accumulates the streamed log lines itself.
out.subscribe_streaming = await attempt(async () => {
  const updates = [];
  const dataUri = `data:image/png;base64,${face.toString("base64")}`;
  const result = await fal.subscribe(APP, {
    // 60 steps (~1 s): long enough that the stream reports IN_PROGRESS between polls, even on an idle machine.
    input: small(dataUri, { seed: 7, num_inference_steps: 60 }),
    logs: true,
    mode: "streaming",
    onQueueUpdate: (u) => updates.push({ status: u.status, logs: (u.logs ?? []).map((l) => l.message) }),
  });
  return { requestId: result.requestId, data: result.data, updates };
});

// The queue API step by step: submit, status, result.
out.queue = await attempt(async () => {
  const submitted = await fal.queue.submit(APP, { input: small(photoUrl, { seed: 5 }) });
  const first = await fal.queue.status(APP, { requestId: submitted.request_id, logs: false });
  const done = await waitCompleted(submitted.request_id);
  const again = await fal.queue.status(APP, { requestId: submitted.request_id, logs: true });
  const result = await fal.queue.result(APP, { requestId: submitted.request_id });
  return {
    submitted,
    first_status: first.status,
    done: { status: done.status, metrics: done.metrics, error: done.error },
    again: { status: again.status, logs: again.logs.map((l) => l.message), levels: again.logs.map((l) => l.level) },
    result,
  };
});

// Cancel: a long request (the blocker) and one queued behind it; cancel the queued one at once, the blocker once
// it is running (it stops at its next step).
out.cancel = await attempt(async () => {
  const long = small(photoUrl, { num_inference_steps: 100, image_size: { width: 512, height: 512 } }); // seconds, even on an idle machine
  const blocker = await fal.queue.submit(APP, { input: long });
  const queued = await fal.queue.submit(APP, { input: long });
  const queuedBefore = await fal.queue.status(APP, { requestId: queued.request_id });
  const cancelQueued = await attempt(() => fal.queue.cancel(APP, { requestId: queued.request_id }));
  let running;
  for (let i = 0; i < 600 && !running; i++) {
    const s = await fal.queue.status(APP, { requestId: blocker.request_id, logs: true });
    if (s.status === "IN_PROGRESS" && s.logs.some((l) => l.message.startsWith("Step"))) running = s;
    else await new Promise((r) => setTimeout(r, 50));
  }
  const cancelBlocker = await attempt(() => fal.queue.cancel(APP, { requestId: blocker.request_id }));
  const queuedDone = await waitCompleted(queued.request_id);
  const blockerDone = await waitCompleted(blocker.request_id);
  return {
    queued_before: queuedBefore.status,
    cancel_queued: cancelQueued ?? "ok",
    running: running?.status,
    cancel_blocker: cancelBlocker ?? "ok",
    queued_done: { status: queuedDone.status, error: queuedDone.error, error_type: queuedDone.error_type },
    blocker_done: { status: blockerDone.status, error: blockerDone.error, error_type: blockerDone.error_type,
                    logs: (blockerDone.logs ?? []).map((l) => l.message) },
    queued_result: await attempt(() => fal.queue.result(APP, { requestId: queued.request_id })),
    cancel_again: await attempt(() => fal.queue.cancel(APP, { requestId: queued.request_id })),
  };
});

// fal.run: the synchronous endpoint (fal.run host → /run/fal-ai/photomaker).
out.run = await attempt(async () => {
  const result = await fal.run(APP, { input: small(photoUrl, { seed: 9, num_images: 2 }) });
  return { requestId: result.requestId, data: result.data };
});

// A Blob in the input is uploaded by the client itself (storage.transformInput) before submitting.
out.run_blob_input = await attempt(async () => {
  const result = await fal.run(APP, { input: small(new Blob([face], { type: "image/png" }), { seed: 3 }) });
  return { requestId: result.requestId, data: result.data };
});

// PhotoMaker v2 is one more input field; the client passes it through unmodified.
out.run_v2 = await attempt(async () => {
  const result = await fal.run(APP, { input: small(photoUrl, { seed: 4, photomaker_version: "v2" }) });
  return { requestId: result.requestId, data: result.data };
});

// Validation errors surface as the client's ValidationError with fieldErrors.
out.invalid = await attempt(() => fal.queue.submit(APP, { input: small(photoUrl, { num_inference_steps: 1000 }) }));

process.stdout.write(JSON.stringify(out));
