// Steady load from the UNMODIFIED official fal JS client (@fal-ai/client): subscribe (submit, then poll to the
// end), download every image, again, until a stop file exists. Used by tests/cluster/test_rolling_restart.py.
//
//   PM_URL=http://127.0.0.1:8000 PM_KEY=... PM_FACE=face.png PM_STOP=/tmp/stop PM_LOOPS=2 node fal_load.mjs
//
// Whatever the client throws is recorded, not retried: the point is to count what a user's program would see.
// Prints one JSON object: {"submitted": [ids], "completed": {id: [urls]}, "errors": [{request_id, error}]}.
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fal } from "@fal-ai/client";

const { PM_URL, PM_KEY, PM_FACE, PM_STOP, PM_LOOPS } = process.env;
const APP = "fal-ai/photomaker";
const PNG = [0x89, 0x50, 0x4e, 0x47];

fal.config({ proxyUrl: { url: `${PM_URL}/api/fal/proxy`, when: "always" }, credentials: PM_KEY });

const face = await readFile(PM_FACE);
const photo = `data:image/png;base64,${face.toString("base64")}`;
const out = { submitted: [], completed: {}, errors: [] };

async function download(url) {
  const answer = await fetch(url);
  const bytes = new Uint8Array(await answer.arrayBuffer());
  if (answer.status !== 200 || !PNG.every((b, i) => bytes[i] === b)) {
    throw new Error(`image ${url}: HTTP ${answer.status}`);
  }
}

async function loop(index) {
  let seed = 500000 + index * 100000;
  while (!existsSync(PM_STOP)) {
    seed += 1;
    let requestId = null;
    try {
      const result = await fal.subscribe(APP, {
        input: { prompt: "a photo of a man img", image_archive_url: photo, num_inference_steps: 3,
                 image_size: { width: 64, height: 64 }, seed },
        pollInterval: 250,
        onEnqueue: (id) => { requestId = id; out.submitted.push(id); },
      });
      const urls = result.data.images.map((image) => image.url);
      for (const url of urls) await download(url);
      out.completed[result.requestId] = urls;
    } catch (error) {
      out.errors.push({ request_id: requestId, error: `${error?.name}: ${error?.message ?? error}`.slice(0, 500),
                        status: error?.status, body: error?.body });
    }
  }
}

await Promise.all(Array.from({ length: Number(PM_LOOPS ?? 1) }, (_, i) => loop(i)));
console.log(JSON.stringify(out));
