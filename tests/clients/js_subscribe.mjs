// One fal.subscribe with the UNMODIFIED official JS client (@fal-ai/client), for tests that break the server's
// database meanwhile (tests/cluster/test_faults.py):
//
//   PM_URL=http://127.0.0.1:8000 PM_KEY=... PM_INPUT='{"prompt": ...}' node js_subscribe.mjs
//
// Prints one JSON object: the request id, the seed and the image count of the result, or the error it ended with.
import { fal } from "@fal-ai/client";

const { PM_URL, PM_KEY, PM_INPUT } = process.env;
fal.config({ proxyUrl: { url: `${PM_URL}/api/fal/proxy`, when: "always" }, credentials: PM_KEY });

try {
  const { data, requestId } = await fal.subscribe("fal-ai/photomaker", { input: JSON.parse(PM_INPUT), logs: true });
  console.log(JSON.stringify({ requestId, seed: data.seed, images: data.images.length }));
} catch (error) {
  console.log(JSON.stringify({ error: { name: error?.name, message: String(error?.message ?? error), status: error?.status } }));
}
