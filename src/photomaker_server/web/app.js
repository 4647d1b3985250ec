// PhotoMaker web page: uploads the photos, submits to the fal-style queue, follows the SSE status stream,
// shows the result. No framework and no build step on purpose: the server ships these three files as they are.
//
// Every server URL is relative to the page (the page lives at "/"), so the page also works behind a proxy
// that mounts the service under a path prefix.

const APP = "fal-ai/photomaker";
const KEY_STORE = "photomaker.apiKey";
const RECENT_STORE = "photomaker.recent";
const MAX_RECENT = 25;
const MAX_LOG_LINES = 1000;
const CANCEL_WAIT_MS = 30000;
const STEP_RE = /step\s+(\d+)\s*\/\s*(\d+)/i;
// Used only until /health answers (and if it never does): the 11 names of styles.json.
const FALLBACK_STYLES = [
  "(No style)", "Cinematic", "Disney Character", "Digital Art", "Photographic", "Fantasy art",
  "Neonpunk", "Enhance", "Comic book", "Lowpoly", "Line art",
];
const DEFAULT_STYLE = "Photographic";
const DEMO_TEXT =
  "This server runs a random-weight demo model: images are noise-like and do not resemble anyone. " +
  "Use a GPU machine with real weights for real results.";
// Server field names that have no input of their own, mapped to the input that shows their errors.
const FIELD_ALIASES = { image_urls: "image_archive_url" };

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

const state = {
  triggerWord: "img",
  maxImages: 4,
  localKey: null,
  photos: [], // [{file, url}] in the order chosen (the order matters to the model)
  zip: null, // a File; replaces `photos` when chosen
  initial: null, // {file, url}
  // File -> Promise<url>: a second "Generate" with the same photos does not upload them again.
  uploads: new WeakMap(),
  job: null, // the request being followed, see runJob()
  imageSizeTouched: false,
  quick: false, // the demo model: quick settings stay the default (its images are noise at any size)
};

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

function endpoint(path) {
  return new URL(path, document.baseURI).href;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

// localStorage throws in some privacy modes; the page must keep working without it.
const store = {
  get(key, fallback = null) {
    try {
      const raw = localStorage.getItem(key);
      return raw === null ? fallback : JSON.parse(raw);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      if (value === null || value === undefined) localStorage.removeItem(key);
      else localStorage.setItem(key, JSON.stringify(value));
    } catch {
      /* storage unavailable: nothing to keep */
    }
  },
};

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    }, { once: true });
  });
}

function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

const isAbort = (err) => err?.name === "AbortError";

// ---------------------------------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, body, fallback) {
    super(describeBody(body) || fallback || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

function describeBody(body) {
  if (!body) return "";
  if (typeof body === "string") return body;
  const { detail } = body;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d?.msg ?? JSON.stringify(d)).join("; ");
  if (detail) return JSON.stringify(detail);
  return "";
}

function authHeaders() {
  const key = $("#api-key").value.trim() || state.localKey;
  return key ? { Authorization: `Key ${key}` } : {};
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function api(path, { method = "GET", json, body, signal } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(endpoint(path), { method, headers, body, signal });
  const data = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, data, response.statusText);
  return data;
}

const requestPath = (id, suffix = "") => `${APP}/requests/${encodeURIComponent(id)}${suffix}`;

// ---------------------------------------------------------------------------------------------------------------
// Errors: one global area plus messages inline next to the field they are about

function clearErrors() {
  $$(".field-error").forEach((node) => node.remove());
  $$("[aria-invalid]").forEach((node) => node.removeAttribute("aria-invalid"));
  const box = $("#error");
  box.replaceChildren();
  box.hidden = true;
}

function showGlobalError(title, detail = "", errorType = "") {
  const box = $("#error");
  // replaceChildren() would print a null child as the text "null": filter the absent parts out.
  box.replaceChildren(...[
    el("strong", { text: title }),
    detail ? el("span", { class: "error-detail", text: ` ${detail}` }) : null,
    errorType ? el("code", { class: "error-type", text: errorType }) : null,
  ].filter(Boolean));
  box.hidden = false;
  box.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

let fieldErrorCounter = 0;

// Puts `message` inside the element with data-field=`field`; false when the page has no such field.
function addFieldError(field, message) {
  const container = $(`[data-field="${CSS.escape(FIELD_ALIASES[field] ?? field)}"]`);
  if (!container) return false;
  const id = `field-error-${++fieldErrorCounter}`;
  container.append(el("p", { class: "field-error", id, role: "alert", text: message }));
  const control = $("input:not([type=hidden]), textarea, select", container);
  if (control) {
    control.setAttribute("aria-invalid", "true");
    const described = (control.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
    control.setAttribute("aria-describedby", [...described.filter((d) => !d.startsWith("field-error-")), id].join(" "));
  }
  // An error inside the collapsed "Advanced settings" would be invisible.
  const details = container.closest("details");
  if (details) details.open = true;
  return true;
}

// FastAPI/pydantic 422 body: {"detail": [{"loc": ["body", "prompt"], "msg": "...", "type": "..."}]}
function showValidationErrors(detail) {
  const unplaced = [];
  let firstPlaced = null;
  for (const item of detail) {
    const loc = Array.isArray(item?.loc) ? item.loc : [];
    const msg = item?.msg ?? JSON.stringify(item);
    const field = loc[0] === "body" && loc.length > 1 ? String(loc[1]) : null;
    // Nested locations (image_size.width) keep their inner path so the message says which part is wrong.
    const inner = loc.slice(2).filter((part) => typeof part === "string").join(".");
    const text = inner ? `${inner}: ${msg}` : msg;
    if (field && addFieldError(field, text)) {
      firstPlaced ??= $(`[data-field="${CSS.escape(FIELD_ALIASES[field] ?? field)}"]`);
    } else {
      unplaced.push(field ? `${field}: ${text}` : text);
    }
  }
  const placed = detail.length - unplaced.length;
  showGlobalError(
    "The server did not accept the request.",
    [placed ? `${placed === 1 ? "One problem is" : `${placed} problems are`} shown next to the fields.` : "",
      ...unplaced].filter(Boolean).join(" "),
  );
  firstPlaced?.scrollIntoView({ block: "center", behavior: "smooth" });
}

function handleError(err) {
  if (err instanceof ApiError) {
    const detail = err.body?.detail;
    if (err.status === 422 && Array.isArray(detail)) {
      showValidationErrors(detail);
      return;
    }
    if (err.status === 401 || err.status === 403) {
      showGlobalError("The server refused the API key.", err.message, err.body?.error_type);
      addFieldError("api_key", "Check the key for this server.");
      return;
    }
    if (err.field) addFieldError(err.field, err.message);
    showGlobalError(err.title ?? `Request failed (HTTP ${err.status}).`, err.message, err.body?.error_type);
    return;
  }
  if (err instanceof TypeError) {
    // fetch() rejects with a TypeError when the server cannot be reached at all.
    showGlobalError("Cannot reach the server.", err.message);
    return;
  }
  if (err?.field) addFieldError(err.field, err.message);
  showGlobalError("Something went wrong.", err?.message ?? String(err));
}

// ---------------------------------------------------------------------------------------------------------------
// Server info (/health) and the API key

async function loadHealth() {
  let health;
  try {
    health = await api("health");
  } catch (err) {
    showGlobalError("Could not load the server’s settings (/health).", err.message);
    return;
  }
  if (typeof health?.trigger_word === "string" && health.trigger_word) state.triggerWord = health.trigger_word;
  if (Number.isInteger(health?.max_num_images) && health.max_num_images > 0) state.maxImages = health.max_num_images;
  if (Array.isArray(health?.styles) && health.styles.length) {
    fillStyles(health.styles.map((s) => (typeof s === "string" ? s : s?.name)).filter(Boolean));
  }

  const banner = $("#demo-banner");
  if (health?.demo_model) {
    banner.replaceChildren(
      el("strong", { text: "Demo model. " }),
      health.demo_warning || health.model?.demo_warning || DEMO_TEXT,
    );
    banner.hidden = false;
    // Quick defaults on the CPU demo model: full-size defaults would take minutes and still show only noise.
    state.quick = true;
    $("#steps").value = "20";
    $("#image-size").value = "square";
  } else {
    banner.hidden = true;
  }

  // PhotoMaker version: the server's default preselected; v2 offered only where the server enables it.
  const version = $("#photomaker-version");
  const v2 = health?.model?.photomaker_v2;
  version.querySelector('option[value="v2"]').disabled = v2?.enabled === false;
  if (health?.model?.default_version && !version.dataset.touched) version.value = health.model.default_version;
  if (version.selectedOptions[0]?.disabled) version.value = "v1";

  const pipelines = health?.model?.base_pipelines;
  if (pipelines && typeof pipelines === "object") {
    const parts = Object.entries(pipelines).map(([name, value]) =>
      `${name}: ${typeof value === "object" && value !== null ? JSON.stringify(value) : value}`);
    $("#model-info").textContent = parts.length ? `Models — ${parts.join(" · ")}` : "";
  }
  applyTriggerWord();
  $("#num-images").max = String(state.maxImages);
  $("#max-images").textContent = String(state.maxImages);
}

function fillStyles(names) {
  const select = $("#style");
  const previous = select.value;
  select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  select.value = names.includes(previous) ? previous : names.includes(DEFAULT_STYLE) ? DEFAULT_STYLE : names[0];
}

function applyTriggerWord() {
  const tw = state.triggerWord;
  $$(".trigger-word").forEach((node) => { node.textContent = tw; });
  $("#prompt").placeholder = `a photo of a man ${tw}, film grain, golden hour`;
  updatePromptHint();
}

// Exchanges the login link's one-time token for a session cookie, and takes the token out of the address bar
// (and so out of the history and of any bookmark) whatever the answer.
async function signInWithLink() {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (!token) return;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  try {
    await fetch(endpoint("api/login"), {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ token }),
    });
  } catch {
    /* no server: the key field stays as it is */
  }
}

async function initApiKey() {
  const input = $("#api-key");
  const note = $("#api-key-note");
  const saved = store.get(KEY_STORE);
  if (saved) input.value = saved;
  // The console's login link (?token=...) signs this browser in once; the session cookie (HttpOnly) then gets the
  // local key on every visit. Without it the user types the key.
  await signInWithLink();
  try {
    const response = await fetch(endpoint("api/session"), { headers: { Accept: "application/json" },
                                                           credentials: "same-origin" });
    if (response.ok) {
      const data = await response.json();
      if (data?.key) {
        state.localKey = data.key;
        if (!input.value) input.value = data.key;
      }
    }
  } catch {
    /* not local, or no server: the input stays */
  }
  const describe = () => {
    const value = input.value.trim();
    if (!value) note.textContent = "Needed for generating; kept in this browser.";
    else if (value === state.localKey) note.textContent = "Provided by this server (signed in with its login link).";
    else note.textContent = "Saved in this browser.";
  };
  input.addEventListener("change", () => {
    const value = input.value.trim();
    // The local key is fetched afresh on every visit (the session cookie), so only a typed key is worth keeping.
    store.set(KEY_STORE, value && value !== state.localKey ? value : null);
    describe();
    showKeyInfo();
  });
  describe();
  showKeyInfo();
}

// The key's name and limits (GET /api/key), so a user of a shared deployment sees what their key may do.
async function showKeyInfo() {
  const info = $("#key-info");
  if (!info) return;
  info.textContent = "";
  const key = $("#api-key").value.trim() || state.localKey;
  if (!key) return;
  try {
    const response = await fetch(endpoint("api/key"), { headers: { ...authHeaders(), Accept: "application/json" } });
    if (response.status === 401) {
      info.textContent = "This key is not accepted by the server (unknown or revoked).";
      return;
    }
    if (!response.ok) return;
    const data = await response.json();
    const names = { max_concurrent: "running at once", max_queued: "waiting", requests_per_minute: "per minute",
                    storage_quota_bytes: "bytes stored", storage_quota_files: "files stored" };
    const limits = Object.entries(data.limits || {})
      .filter(([, value]) => value !== null && value !== undefined)
      .map(([name, value]) => `${value} ${names[name] || name}`);
    info.textContent = `Key “${data.name || "unnamed"}”${data.admin ? " (admin)" : ""}: ` +
      (limits.length ? `limits ${limits.join(", ")}.` : "no limits.");
  } catch {
    /* no server: nothing to show */
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Photos, zip and initial image

const isZip = (file) => /\.zip$/i.test(file.name) || /zip/.test(file.type);
const isImage = (file) =>
  file.type.startsWith("image/") || /\.(jpe?g|png|webp|gif|bmp|tiff?|avif|heic)$/i.test(file.name);
const sameFile = (a, b) => a.name === b.name && a.size === b.size && a.lastModified === b.lastModified;

function clearPhotos() {
  state.photos.forEach((p) => URL.revokeObjectURL(p.url));
  state.photos = [];
}

function addFiles(fileList) {
  const files = [...fileList];
  const skipped = [];
  const zip = files.filter(isZip).pop();
  if (zip) {
    // One archive holds the whole set; mixing it with loose photos would be ambiguous.
    clearPhotos();
    state.zip = zip;
  } else {
    for (const file of files) {
      if (!isImage(file)) {
        skipped.push(file.name);
        continue;
      }
      state.zip = null;
      if (!state.photos.some((p) => sameFile(p.file, file))) {
        state.photos.push({ file, url: URL.createObjectURL(file) });
      }
    }
  }
  $("#photos-hint").textContent = skipped.length
    ? `Skipped ${skipped.join(", ")}: not an image or a .zip.`
    : "";
  renderThumbs();
}

function renderThumbs() {
  const list = $("#thumbs");
  const items = [];
  if (state.zip) {
    items.push(el("li", { class: "thumb zip" },
      el("span", { class: "zip-badge", "aria-hidden": "true", text: "ZIP" }),
      el("span", { class: "zip-name", text: `${state.zip.name} · ${formatBytes(state.zip.size)}` }),
      el("button", {
        type: "button", class: "icon-button remove", "aria-label": `Remove ${state.zip.name}`, text: "✕",
        onclick: () => { state.zip = null; renderThumbs(); },
      })));
  }
  state.photos.forEach((photo, index) => {
    items.push(el("li", { class: "thumb" },
      el("img", { src: photo.url, alt: photo.file.name, title: photo.file.name }),
      el("button", {
        type: "button", class: "icon-button remove", "aria-label": `Remove ${photo.file.name}`, text: "✕",
        onclick: () => {
          URL.revokeObjectURL(photo.url);
          state.photos.splice(index, 1);
          renderThumbs();
        },
      })));
  });
  list.replaceChildren(...items);
  const count = state.zip ? "1 archive" : `${state.photos.length} photo${state.photos.length === 1 ? "" : "s"}`;
  list.setAttribute("aria-label", `Chosen: ${count}`);
  $("#dropzone").classList.toggle("has-files", items.length > 0);
}

function setInitialImage(file) {
  if (state.initial) URL.revokeObjectURL(state.initial.url);
  state.initial = file ? { file, url: URL.createObjectURL(file) } : null;
  const preview = $("#initial-preview");
  preview.hidden = !state.initial;
  $("img", preview).src = state.initial ? state.initial.url : "";
  if (!file) $("#initial-image").value = "";
  // With an initial image the server keeps its shape when no size is sent ("Auto"); switch to that unless
  // the user picked a size on purpose, or the demo model's quick size is the default.
  if (!state.imageSizeTouched && !state.quick) $("#image-size").value = file ? "" : "square_hd";
  $("[data-field=initial_image_strength]").classList.toggle("inactive", !state.initial);
}

function setupFileInputs() {
  const input = $("#photos");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // lets the same file be chosen again after removing it
  });

  const zone = $("#dropzone");
  zone.addEventListener("dragenter", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(e.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    if (e.dataTransfer?.files?.length) addFiles(e.dataTransfer.files);
  });
  // A file dropped next to the zone would otherwise make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  const initial = $("#initial-image");
  initial.addEventListener("change", () => setInitialImage(initial.files?.[0] ?? null));
  $("#initial-remove").addEventListener("click", () => setInitialImage(null));
  $("#image-size").addEventListener("change", () => { state.imageSizeTouched = true; });
  $("#photomaker-version").addEventListener("change", (event) => { event.target.dataset.touched = "1"; });

  const strength = $("#strength");
  const showStrength = () => { $("#strength-value").textContent = Number(strength.value).toFixed(2); };
  strength.addEventListener("input", showStrength);
  showStrength();
  $("[data-field=initial_image_strength]").classList.add("inactive");
}

// ---------------------------------------------------------------------------------------------------------------
// Prompt check while typing. It only warns: the server is the authority and its 422 shows inline too.

function updatePromptHint() {
  const hint = $("#prompt-hint");
  const prompt = $("#prompt").value;
  const tw = state.triggerWord;
  // The server counts plain (case-sensitive) substrings, so a word like "imgur" counts too; do the same.
  const positions = [];
  for (let i = prompt.indexOf(tw); i !== -1; i = prompt.indexOf(tw, i + tw.length)) positions.push(i);
  const wordChar = /[\p{L}\p{N}_]/u;
  const insideWord = positions.filter((i) =>
    wordChar.test(prompt[i - 1] ?? "") || wordChar.test(prompt[i + tw.length] ?? ""));

  let level = "warn";
  let text;
  if (!prompt.trim()) {
    level = "info";
    text = `Put “${tw}” right after the word for the person, e.g. “a man ${tw}”.`;
  } else if (positions.length === 0) {
    text = `No trigger word yet: add “${tw}” right after the class word, e.g. “a photo of a man ${tw}”.`;
  } else if (positions.length > 1) {
    text = `“${tw}” appears ${positions.length} times; it must appear exactly once.`;
  } else if (!wordChar.test(prompt.slice(0, positions[0]))) {
    text = `Put a class word (man, woman, boy, girl, person…) before “${tw}”.`;
  } else {
    const classWord = prompt.slice(0, positions[0]).match(/([\p{L}\p{N}_'-]+)\s*$/u)?.[1];
    level = "ok";
    text = classWord
      ? `Trigger word found; the class word is “${classWord}”.`
      : `Trigger word found; make sure the word right before it names the person.`;
  }
  if (insideWord.length && level !== "info") {
    level = "warn";
    text += ` Note: “${tw}” inside another word counts as a trigger word too.`;
  }
  hint.textContent = text;
  hint.dataset.level = level;
}

function setupPrompt() {
  const prompt = $("#prompt");
  prompt.addEventListener("input", updatePromptHint);
  $$(".example").forEach((button) => button.addEventListener("click", () => {
    prompt.value = button.dataset.example.replaceAll("{trigger}", state.triggerWord);
    prompt.dispatchEvent(new Event("input", { bubbles: true }));
    prompt.focus();
  }));
  updatePromptHint();
}

// An edited field's old server message is stale; drop it.
function setupErrorClearing() {
  $("#form").addEventListener("input", (e) => {
    const container = e.target.closest?.("[data-field]");
    if (!container) return;
    $$(".field-error", container).forEach((node) => node.remove());
    e.target.removeAttribute?.("aria-invalid");
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Building the request

// Empty → undefined (the server's default). Unparseable text is sent as it is so that the server's message
// about it appears next to the field, like every other validation error.
function numberValue(input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw;
}

// <input type=number> reports typed garbage as an empty value; catch that here or it would silently become
// "use the default".
function checkNumberInputs() {
  let ok = true;
  for (const input of $$("#form input[type=number]")) {
    if (input.validity.badInput) {
      addFieldError(input.closest("[data-field]")?.dataset.field, "Enter a number.");
      ok = false;
    }
  }
  if (!ok) showGlobalError("Some numbers could not be read.", "See the marked fields.");
  return ok;
}

function uploadFile(file, signal) {
  let pending = state.uploads.get(file);
  if (!pending) {
    const form = new FormData();
    form.append("file", file, file.name);
    pending = api("storage/upload/multipart", { method: "POST", body: form, signal }).then((data) => {
      if (!data?.url) throw new Error(`the upload of ${file.name} answered without a URL`);
      return data.url;
    });
    // A failed or aborted upload must be retried next time, not remembered.
    pending.catch(() => state.uploads.delete(file));
    state.uploads.set(file, pending);
  }
  return pending;
}

async function uploadInputs(job) {
  const idFiles = state.zip ? [state.zip] : state.photos.map((p) => p.file);
  const total = idFiles.length + (state.initial ? 1 : 0);
  let done = 0;
  const tick = () => setProgress(total ? `Uploading ${done}/${total}…` : "Submitting…", total ? done / total : null);
  tick();
  const track = (field, title) => (promise) => promise.then(
    (url) => { done += 1; tick(); return url; },
    (err) => {
      if (!isAbort(err)) {
        err.field = field;
        err.title = title;
      }
      throw err;
    },
  );
  const [idUrls, initialUrl] = await Promise.all([
    Promise.all(idFiles.map((f) => track("image_archive_url", `Uploading ${f.name} failed.`)(uploadFile(f, job.abort.signal)))),
    state.initial
      ? track("initial_image_url", "Uploading the initial image failed.")(uploadFile(state.initial.file, job.abort.signal))
      : Promise.resolve(null),
  ]);
  return { idUrls, initialUrl };
}

function buildBody({ idUrls, initialUrl }) {
  const body = {
    prompt: $("#prompt").value,
    // fal's field; with several loose photos it carries the first and `image_urls` (an extension of this
    // server) carries all of them, so fal's own clients and this page both work.
    image_archive_url: idUrls[0],
    base_pipeline: $("#base-pipeline").value,
    photomaker_version: $("#photomaker-version").value,
    style: $("#style").value,
    negative_prompt: $("#negative-prompt").value,
    num_inference_steps: numberValue($("#steps")),
    style_strength: numberValue($("#style-strength")),
    num_images: numberValue($("#num-images")),
    guidance_scale: numberValue($("#guidance")),
    seed: numberValue($("#seed")),
    image_size: $("#image-size").value || undefined,
  };
  if (idUrls.length > 1) body.image_urls = idUrls;
  if (initialUrl) {
    body.initial_image_url = initialUrl;
    body.initial_image_strength = Number($("#strength").value);
  }
  // JSON.stringify drops undefined values: absent fields take the server's defaults.
  return body;
}

// ---------------------------------------------------------------------------------------------------------------
// Progress, logs and the running request

function setProgress(text, fraction = null) {
  const box = $("#progress");
  box.hidden = false;
  $("#progress-text").textContent = text;
  const bar = $("#progress-bar");
  // A <progress> without a value is the indeterminate (animated) kind.
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = Math.max(0, Math.min(1, fraction));
}

function resetLogs() {
  $("#logs").replaceChildren();
  $("#logs-count").textContent = "";
  $("#logs-box").hidden = true;
}

function appendLogs(job, logs) {
  if (!Array.isArray(logs) || !logs.length) return;
  const list = $("#logs");
  const box = $("#logs-box");
  // Follow the tail only when the user has not scrolled up to read something.
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
  for (const entry of logs) {
    job.logCount += 1;
    const message = String(entry?.message ?? "");
    const level = String(entry?.level ?? "INFO").toUpperCase();
    const time = entry?.timestamp ? new Date(entry.timestamp) : null;
    list.append(el("li", { class: `log level-${level.toLowerCase()}` },
      el("time", { datetime: entry?.timestamp, text: time && !Number.isNaN(time.getTime()) ? time.toLocaleTimeString() : "" }),
      el("span", { class: "log-level", text: level }),
      el("span", { class: "log-message", text: message })));
    const step = STEP_RE.exec(message);
    if (step) job.step = { i: Number(step[1]), n: Number(step[2]) };
  }
  while (list.childElementCount > MAX_LOG_LINES) list.firstElementChild.remove();
  box.hidden = false;
  $("#logs-count").textContent = `(${job.logCount})`;
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function onStatus(job, status) {
  if (!status || typeof status !== "object") return;
  appendLogs(job, status.logs);
  if (job.cancelled && status.status !== "COMPLETED") {
    setProgress("Cancelling…", null);
    return;
  }
  if (status.status === "IN_QUEUE") {
    setProgress(`In queue, position ${status.queue_position ?? "?"}`, null);
    markRecent(job.id, "IN_QUEUE");
  } else if (status.status === "IN_PROGRESS") {
    if (job.step) setProgress(`Step ${job.step.i}/${job.step.n}`, job.step.n ? job.step.i / job.step.n : null);
    else setProgress("Running…", null);
    markRecent(job.id, "IN_PROGRESS");
  }
}

// Parses the Server-Sent Events of the status stream by hand: EventSource cannot send an Authorization header.
// Returns the COMPLETED status, or null when the stream is unavailable or ended early (the caller then polls).
async function streamStatus(job) {
  const response = await fetch(endpoint(requestPath(job.id, "/status/stream?logs=1")), {
    headers: { Accept: "text/event-stream", ...authHeaders() },
    signal: job.abort.signal,
  });
  if (!response.ok || !response.body) {
    if ([401, 403, 404].includes(response.status)) {
      throw new ApiError(response.status, await readBody(response), response.statusText);
    }
    return null;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += value;
      // Events end with a blank line; a chunk may hold several events or half of one.
      let boundary;
      while ((boundary = /\r?\n\r?\n/.exec(buffer))) {
        const block = buffer.slice(0, boundary.index);
        buffer = buffer.slice(boundary.index + boundary[0].length);
        const data = block.split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue; // comments (": keep-alive") and events without data
        let status;
        try {
          status = JSON.parse(data);
        } catch {
          continue;
        }
        onStatus(job, status);
        if (status.status === "COMPLETED") return status;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Fallback when streaming fails: polling returns the whole log list each time, so only the unseen tail is shown.
async function pollStatus(job) {
  for (;;) {
    const status = await api(requestPath(job.id, "/status?logs=1"), { signal: job.abort.signal });
    const logs = Array.isArray(status?.logs) ? status.logs.slice(job.logCount) : [];
    onStatus(job, { ...status, logs });
    if (status?.status === "COMPLETED") return status;
    await sleep(1000, job.abort.signal);
  }
}

async function follow(job) {
  let final = null;
  try {
    final = await streamStatus(job);
  } catch (err) {
    if (isAbort(err) || err instanceof ApiError) throw err;
    // network hiccup during the stream: polling picks up from here
  }
  return final ?? pollStatus(job);
}

function updateElapsed(job) {
  const seconds = (performance.now() - job.started) / 1000;
  $("#progress-elapsed").textContent = `${seconds.toFixed(1)} s`;
}

// Wraps one followed request: running UI state on, work, running UI state off.
async function runJob(work) {
  const job = {
    id: null,
    abort: new AbortController(),
    cancelled: false,
    logCount: 0,
    step: null,
    started: performance.now(),
    timer: null,
  };
  state.job = job;
  setRunning(true);
  resetLogs();
  $("#request-id").textContent = "";
  job.timer = setInterval(() => updateElapsed(job), 200);
  try {
    await work(job);
  } catch (err) {
    if (isAbort(err) && job.cancelled) {
      setProgress("Cancelled", 0);
    } else {
      handleError(err);
      if (err instanceof ApiError && err.status === 422) $("#progress").hidden = true;
      else setProgress("Failed", 0);
      if (job.id) markRecent(job.id, "FAILED");
    }
  } finally {
    clearInterval(job.timer);
    updateElapsed(job);
    state.job = null;
    setRunning(false);
  }
}

function setRunning(running) {
  const generate = $("#generate");
  generate.disabled = running;
  generate.textContent = running ? "Generating…" : "Generate";
  generate.setAttribute("aria-busy", String(running));
  $("#cancel").hidden = !running;
  $("#cancel").disabled = false;
}

async function requestCancel(id) {
  try {
    await api(requestPath(id, "/cancel"), { method: "PUT" });
  } catch (err) {
    // 400 ALREADY_COMPLETED: the stream's COMPLETED event arrives anyway.
    if (!(err instanceof ApiError && err.status === 400)) handleError(err);
  }
}

// Keeps following the stream afterwards: the server ends the request with a COMPLETED "cancelled" status.
function cancelOnServer(job) {
  requestCancel(job.id);
  // If that never comes (server gone), stop waiting rather than leave the page stuck on "Cancelling…".
  setTimeout(() => { if (state.job === job) job.abort.abort(); }, CANCEL_WAIT_MS);
}

function cancel() {
  const job = state.job;
  if (!job || job.cancelled) return;
  job.cancelled = true;
  $("#cancel").disabled = true;
  setProgress("Cancelling…", null);
  if (job.id) {
    cancelOnServer(job);
  } else if (!job.submitting) {
    job.abort.abort(); // still uploading: nothing exists on the server yet
  }
  // While the submit call is in flight the request id is not known yet; generate() cancels right after it.
}

async function generate(event) {
  event.preventDefault();
  if (state.job) return;
  clearErrors();
  if (!checkNumberInputs()) return;
  const prompt = $("#prompt").value;
  await runJob(async (job) => {
    const uploaded = await uploadInputs(job);
    if (job.cancelled) throw new DOMException("Aborted", "AbortError");
    setProgress("Submitting…", null);
    job.submitting = true;
    const submitted = await api(APP, { method: "POST", json: buildBody(uploaded), signal: job.abort.signal });
    job.submitting = false;
    job.id = submitted.request_id;
    $("#request-id").textContent = job.id;
    addRecent({ id: job.id, prompt, time: Date.now(), status: "IN_QUEUE" });
    if (job.cancelled) cancelOnServer(job);
    else setProgress(`In queue, position ${submitted.queue_position ?? "?"}`, null);
    const final = await follow(job);
    await showFinal(job.id, final, { live: true, job });
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Results

async function showFinal(id, status, { live = false, job = null } = {}) {
  let result = null;
  let failure = null;
  try {
    result = await api(requestPath(id), { signal: job?.abort.signal });
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    failure = err;
  }
  if (status?.error || failure) {
    const errorType = failure?.body?.error_type ?? status?.error_type ?? "";
    const cancelled = errorType === "client_cancelled" || (job?.cancelled && !result);
    markRecent(id, cancelled ? "CANCELLED" : "FAILED");
    if (cancelled) {
      if (live) setProgress("Cancelled", 0);
      else showGlobalError("This request was cancelled.");
      return;
    }
    if (live) setProgress("Failed", 0);
    if (failure?.status === 422 && Array.isArray(failure.body?.detail)) {
      showValidationErrors(failure.body.detail);
      return;
    }
    const detail = failure ? failure.message : String(status.error);
    showGlobalError("Generation failed.", detail, errorType);
    return;
  }
  markRecent(id, "COMPLETED");
  renderResult(result, id);
  if (live) {
    const seconds = status?.metrics?.inference_time ?? result?.timings?.inference;
    setProgress(Number.isFinite(seconds) ? `Done in ${Number(seconds).toFixed(1)} s` : "Done", 1);
  }
}

function renderResult(result, id) {
  const images = Array.isArray(result?.images) ? result.images : [];
  const seed = result?.seed;
  const gallery = $("#gallery");
  gallery.replaceChildren(...images.map((image, index) => {
    const name = image.file_name || `photomaker-${id}-${index + 1}.${(image.content_type || "image/png").split("/")[1] || "png"}`;
    const size = image.width && image.height ? `${image.width}×${image.height}` : "";
    return el("figure", { class: "result" },
      el("a", { href: image.url, target: "_blank", rel: "noopener", class: "result-link" },
        el("img", {
          class: "result-image",
          src: image.url,
          alt: `Generated image ${index + 1} of ${images.length}${result?.prompt ? `: ${result.prompt}` : ""}`,
          width: image.width || undefined,
          height: image.height || undefined,
          decoding: "async",
        })),
      el("figcaption", {},
        el("span", { class: "meta", text: [size, seed !== undefined ? `seed ${seed}` : "",
          images.length > 1 ? `batch image ${index + 1}` : ""].filter(Boolean).join(" · ") }),
        el("a", { href: image.url, download: name, class: "download", text: "Download" })));
  }));
  if (!images.length) gallery.append(el("p", { class: "empty", text: "The request finished without images." }));

  const seedLine = $("#result-seed");
  if (seed !== undefined && seed !== null) {
    seedLine.replaceChildren(
      "Seed ", el("strong", { class: "mono", text: String(seed) }),
      images.length > 1 ? " (shared by the batch)" : "", " ",
      el("button", {
        type: "button", class: "link-button", text: "Use this seed",
        onclick: () => {
          $("#seed").value = String(seed);
          $("#advanced").open = true;
          $("#seed").focus();
        },
      }));
    seedLine.hidden = false;
  } else {
    seedLine.hidden = true;
  }
  $("#request-id").textContent = id;
  // Bring the images themselves into view: on a narrow screen the result panel sits below the long form and
  // its heading may already be on screen while the images are not. (width/height reserve their space already.)
  (images.length ? gallery : $("#output-title")).scrollIntoView({ block: "nearest", behavior: "smooth" });
}

// ---------------------------------------------------------------------------------------------------------------
// Recent requests of this browser

const loadRecent = () => {
  const list = store.get(RECENT_STORE, []);
  return Array.isArray(list) ? list.filter((r) => r && typeof r.id === "string") : [];
};

function addRecent(entry) {
  const list = [entry, ...loadRecent().filter((r) => r.id !== entry.id)].slice(0, MAX_RECENT);
  store.set(RECENT_STORE, list);
  renderRecent();
}

function markRecent(id, status) {
  if (!id) return;
  const list = loadRecent();
  const entry = list.find((r) => r.id === id);
  if (!entry || entry.status === status) return;
  entry.status = status;
  store.set(RECENT_STORE, list);
  renderRecent();
}

function renderRecent() {
  const list = loadRecent();
  const recent = $("#recent");
  if (!list.length) {
    recent.replaceChildren(el("li", { class: "empty", text: "No requests from this browser yet." }));
    $("#recent-clear").hidden = true;
    return;
  }
  $("#recent-clear").hidden = false;
  recent.replaceChildren(...list.map((entry) => el("li", {},
    el("button", {
      type: "button",
      class: "recent-item",
      "data-id": entry.id,
      title: `Show request ${entry.id}`,
      onclick: () => openRecent(entry.id),
    },
    el("span", { class: "recent-prompt", text: entry.prompt || "(no prompt)" }),
    el("span", { class: "recent-meta" },
      recentTime(entry.time),
      el("span", { class: `badge status-${String(entry.status).toLowerCase()}`, text: statusLabel(entry.status) }))))));
}

function recentTime(time) {
  const date = new Date(time);
  if (Number.isNaN(date.getTime())) return el("time", { text: "" });
  return el("time", { datetime: date.toISOString(), text: date.toLocaleString() });
}

function statusLabel(status) {
  return {
    IN_QUEUE: "queued", IN_PROGRESS: "running", COMPLETED: "done", FAILED: "failed",
    CANCELLED: "cancelled", EXPIRED: "gone",
  }[status] ?? String(status).toLowerCase();
}

async function openRecent(id) {
  if (state.job?.id === id) return;
  clearErrors();
  let status;
  try {
    status = await api(requestPath(id, "/status?logs=0"));
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      markRecent(id, "EXPIRED");
      showGlobalError("This request is no longer on the server.", "It may have expired or the server restarted.");
    } else {
      handleError(err);
    }
    return;
  }
  if (status?.status === "COMPLETED") {
    try {
      await showFinal(id, status);
    } catch (err) {
      handleError(err);
    }
    return;
  }
  if (state.job) {
    showGlobalError("That request is still running.", "Open it again when the current one has finished.");
    return;
  }
  // Still queued or running (e.g. after a page reload): follow it like a fresh one.
  await runJob(async (job) => {
    job.id = id;
    $("#request-id").textContent = id;
    onStatus(job, status);
    const final = await follow(job);
    await showFinal(id, final, { live: true, job });
  });
}

// ---------------------------------------------------------------------------------------------------------------

function init() {
  fillStyles(FALLBACK_STYLES);
  setupFileInputs();
  setupPrompt();
  setupErrorClearing();
  renderThumbs();
  renderRecent();
  $("#form").addEventListener("submit", generate);
  $("#cancel").addEventListener("click", cancel);
  $("#recent-clear").addEventListener("click", () => {
    store.set(RECENT_STORE, null);
    renderRecent();
  });
  initApiKey();
  loadHealth();
}

init();
