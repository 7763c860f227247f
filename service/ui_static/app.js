// The elbo-serve page: calls the service's own endpoints, shows what they answer.
// Plain JavaScript, no build step, nothing fetched from outside the service.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: {}, key: "" };

// HTTP ----------------------------------------------------------------------------------------

class ServiceError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The service's own message: {"error": ...} from ours, {"detail": ...} from BentoML's.
async function messageOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body.error) return body.error;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    if (body.detail) return String(body.detail);
  } catch (_) { /* not JSON: the text itself */ }
  return text || response.statusText;
}

async function call(path, { method = "GET", body } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw new ServiceError(response.status, `${response.status}: ${await messageOf(response)}`);
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.blob();
}

function showError(id, error) {
  const node = $(id);
  node.textContent = error ? error.message : "";
  node.hidden = !error;
  if (error && error.status === 401) askForKey();
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function askForKey() {
  setStatus("This service needs an API key: type it above and press Connect.", true);
  $("api-key").focus();
}

// Models --------------------------------------------------------------------------------------

const current = () => state.models[$("model").value];

function fillSelect(select, values) {
  select.replaceChildren(...values.map((v) => new Option(v, v)));
}

async function connect(event) {
  if (event) event.preventDefault();
  state.key = $("api-key").value.trim();
  try {
    state.models = (await call("/models")).models;
  } catch (error) {
    if (error.status === 401) askForKey();
    else setStatus(`Could not list the models: ${error.message}`, true);
    return;
  }
  const names = Object.keys(state.models);
  const chosen = $("model").value;
  fillSelect($("model"), names);
  if (names.includes(chosen)) $("model").value = chosen;
  setStatus(`Connected: ${names.length} model(s) served.`);
  modelChanged();
  renderCards();
}

function modelChanged() {
  const info = current();
  if (!info) return;
  const { channels, height, width, mode } = info.image;
  $("model-info").textContent = `${info.kind}, ${width}x${height} ${mode} (${channels} channel(s))`;
  fillSelect($("sampler"), info.samplers);
  $("sampler").value = info.default_sample.sampler;
  fillSelect($("method"), Object.keys(info.methods));
  samplerChanged();
}

function samplerChanged() {
  const info = current();
  const options = info.options.sample || {};
  const defaults = info.sampler_defaults[$("sampler").value] || {};
  for (const name of ["steps", "eta"]) {
    const input = $(name);
    input.disabled = !(name in options) || !(name in defaults);
    input.placeholder = name in defaults ? `default ${defaults[name]}` : "not used";
    if (input.disabled) input.value = "";
    const range = options[name] && options[name].range;
    if (range) { input.min = range[0]; input.max = range[1]; }
  }
}

// Sample --------------------------------------------------------------------------------------

function sampleRequest() {
  const body = { model: $("model").value, sampler: $("sampler").value, output: "grid" };
  for (const name of ["n", "seed", "steps", "eta"]) {
    const input = $(name);
    if (!input.disabled && input.value !== "") body[name] = Number(input.value);
  }
  return body;
}

function showGrid(answer) {
  $("sample-grid").src = `data:image/png;base64,${answer.grid}`;
  const steps = answer.steps ? `, ${answer.steps} steps` : "";
  $("sample-caption").textContent = `${answer.n} image(s) from ${answer.model}, ${answer.sampler}${steps}, seed ${answer.seed}`;
  $("sample-result").hidden = false;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Long work: submit, then poll progress and status until the result is there.
async function sampleAsTask(body) {
  const { task_id: id } = await call("/sample_task/submit", { method: "POST", body });
  $("sample-progress").hidden = false;
  $("progress").value = 0;
  $("progress-text").textContent = "submitted";
  for (;;) {
    await sleep(500);
    try {
      const p = await call("/task_progress", { method: "POST", body: { task_id: id } });
      $("progress").value = p.fraction;
      $("progress-text").textContent = `${p.done} of ${p.total} network calls`;
    } catch (error) {
      if (error.status !== 409) throw error; // 409: no progress recorded yet
    }
    const { status } = await call(`/sample_task/status?task_id=${encodeURIComponent(id)}`);
    if (status === "completed") break;
    if (status === "failed" || status === "canceled") throw new Error(`the task ${status}`);
  }
  $("progress").value = 1;
  $("progress-text").textContent = "done";
  return call(`/sample_task/get?task_id=${encodeURIComponent(id)}`);
}

async function sample(event) {
  event.preventDefault();
  const button = $("sample-button");
  button.disabled = true;
  showError("sample-error", null);
  $("sample-progress").hidden = true;
  const body = sampleRequest();
  try {
    if ($("as-task").checked) {
      showGrid(await sampleAsTask(body));
    } else {
      try {
        showGrid(await call("/sample", { method: "POST", body }));
      } catch (error) {
        if (error.status !== 413) throw error;
        // Past the synchronous cost ceiling: the same request as a background task.
        setStatus(`${error.message} (running it as a background task)`);
        showGrid(await sampleAsTask(body));
      }
    }
  } catch (error) {
    showError("sample-error", error);
  } finally {
    button.disabled = false;
  }
}

// Score ---------------------------------------------------------------------------------------

const asBase64 = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
  reader.onerror = () => reject(reader.error);
  reader.readAsDataURL(file);
});

// A JPEG becomes integer arrays at its own size (the service reads PNGs or arrays); the
// service still judges its size. Grayscale models get luminance (ITU-R 601-2, as PIL's "L").
async function jpegAsArray(file, mode) {
  const bitmap = await createImageBitmap(file);
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const { data, width, height } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  const plane = (f) => Array.from({ length: height }, (_, y) =>
    Array.from({ length: width }, (_, x) => f(4 * (y * width + x))));
  if (mode === "L") {
    return plane((i) => Math.round((299 * data[i] + 587 * data[i + 1] + 114 * data[i + 2]) / 1000));
  }
  return [0, 1, 2].map((c) => plane((i) => data[i + c]));
}

async function imagePayload(file) {
  if (file.type === "image/jpeg") return jpegAsArray(file, current().image.mode);
  return asBase64(file); // PNGs, and anything else, as they are: the service says what is wrong
}

const TERMS = [
  ["reconstruction_nats", "reconstruction"],
  ["kl_nats", "KL"],
  ["prior_nats", "L_T"],
  ["denoising_nats", "denoising"],
];

function termsChart(bound, dims) {
  const chart = document.createElement("div");
  chart.className = "terms";
  chart.innerHTML = `<strong>Terms of the bound (bits/dim)</strong>`;
  const terms = TERMS.filter(([key]) => bound[key] !== null && bound[key] !== undefined)
    .map(([key, label]) => [label, bound[key] / (dims * Math.LN2)]);
  const largest = Math.max(...terms.map(([, v]) => Math.abs(v)), 1e-9);
  for (const [label, value] of terms) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.innerHTML = `<span style="width:6rem">${label}</span><span class="fill" style="width:${(10 * Math.abs(value)) / largest}rem"></span><span>${value.toFixed(3)}</span>`;
    chart.append(bar);
  }
  if (!terms.length) chart.append("(this method reports no terms)");
  return chart;
}

function scoreCard(file, answer, result, bound) {
  const card = document.createElement("article");
  card.className = "score-card";
  card.setAttribute("aria-label", `Score of ${file.name}`);
  const overlay = document.createElement("div");
  overlay.className = "overlay";
  const image = new Image();
  image.alt = file.name;
  image.src = URL.createObjectURL(file);
  const heat = new Image();
  heat.alt = `Heat map of ${file.name}`;
  heat.className = "heatmap";
  heat.src = `data:image/png;base64,${result.heatmap_png}`;
  heat.style.opacity = $("opacity").value;
  overlay.append(image, heat);
  const verdict = result.is_anomaly ? "anomaly" : "normal";
  const facts = document.createElement("dl");
  facts.innerHTML = `
    <dt>file</dt><dd>${file.name.replace(/[<>&]/g, "")}</dd>
    <dt>verdict</dt><dd class="verdict ${verdict}">${verdict}</dd>
    <dt>score</dt><dd class="score">${result.score.toFixed(3)}</dd>
    <dt>threshold</dt><dd>${answer.threshold.toFixed(3)} (fpr ${answer.fpr})</dd>
    <dt>percentile</dt><dd>${result.percentile.toFixed(1)}% of normal images score lower</dd>
    <dt>bound</dt><dd>${result.bits_per_dim.toFixed(3)} bits/dim (${answer.method}${answer.k ? `, k = ${answer.k}` : ""})</dd>
    <dt>PNG</dt><dd>${result.png_bits_per_dim.toFixed(3)} bits/dim</dd>`;
  const { channels, height, width } = current().image;
  card.append(overlay, facts, termsChart(bound, channels * height * width));
  return card;
}

async function scoreFile(file) {
  const images = [await imagePayload(file)];
  const model = $("model").value;
  const method = $("method").value;
  const answer = await call("/score", {
    method: "POST",
    body: { model, images, method, correction: $("correction").value, fpr: Number($("fpr").value), maps: true },
  });
  const bound = await call("/likelihood", {
    method: "POST", body: { model, images, method, ...(answer.k ? { k: answer.k } : {}) },
  });
  return scoreCard(file, answer, answer.results[0], bound.results[0]);
}

async function score(event) {
  event.preventDefault();
  const files = Array.from($("files").files);
  showError("score-error", files.length ? null : new Error("Pick one or more PNG or JPEG files first."));
  if (!files.length) return;
  $("score-button").disabled = true;
  $("score-results").replaceChildren();
  const problems = [];
  for (const file of files) {
    try {
      $("score-results").append(await scoreFile(file));
      $("opacity-control").hidden = false;
    } catch (error) {
      problems.push(`${file.name}: ${error.message}`);
      if (error.status === 401) askForKey();
    }
  }
  const node = $("score-error");
  node.textContent = problems.join("\n");
  node.hidden = !problems.length;
  $("score-button").disabled = false;
}

// Model cards ---------------------------------------------------------------------------------

function table(header, rows) {
  const t = document.createElement("table");
  const head = t.createTHead().insertRow();
  for (const h of header) head.append(Object.assign(document.createElement("th"), { textContent: h }));
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const cell of row) tr.insertCell().textContent = cell;
  }
  return t;
}

const pm = (e) => `${e.mean.toFixed(3)} ± ${e.stderr.toFixed(3)}`;

async function renderCards() {
  const holder = $("model-cards");
  holder.replaceChildren();
  for (const [name, info] of Object.entries(state.models)) {
    const card = info.card || {};
    const section = document.createElement("section");
    section.innerHTML = `<h2>${name}</h2><p>${info.kind}, ${info.image.width}x${info.image.height} ${info.image.mode}, on ${info.device}</p>`;
    const likelihood = card.likelihood;
    if (likelihood) {
      const bounds = [likelihood.headline, ...(likelihood.others || [])];
      section.append(table(["bound", "test images", "bits/dim"],
        bounds.map((b) => [b.k ? `${b.label}, k = ${b.k}` : b.label, b.test_images, pm(b.bits_per_dim)])));
    }
    const samplers = (card.sample_quality || {}).samplers || {};
    if (Object.keys(samplers).length) {
      section.append(table(["sampler", "samples", "Fréchet distance", "real-data floor", "ratio"],
        Object.entries(samplers).map(([s, f]) => [s, f.num_samples, f.frechet_distance.toFixed(2),
          f.real_data_floor.toFixed(2), `${f.ratio_to_floor.toFixed(1)}x`])));
    }
    const methods = (card.anomaly || {}).methods || {};
    const rows = [];
    for (const [method, m] of Object.entries(methods)) {
      for (const [set, d] of Object.entries(m.sets)) {
        rows.push([method, set, d.raw.auroc.toFixed(3), d.minus_png.auroc.toFixed(3)]);
      }
    }
    if (rows.length) section.append(table(["score", "outlier set", "AUROC", "AUROC minus PNG"], rows));
    const grids = document.createElement("div");
    grids.className = "grids";
    section.append(grids);
    holder.append(section);
    for (const [sampler, f] of Object.entries(samplers)) {
      if (!f.grid) continue;
      try {
        const blob = await call(`/ui/grids/${encodeURIComponent(name)}/${encodeURIComponent(f.grid)}`);
        const figure = document.createElement("figure");
        const image = Object.assign(new Image(), { src: URL.createObjectURL(blob), alt: `${name}: ${sampler} samples` });
        figure.append(image, Object.assign(document.createElement("figcaption"), { textContent: sampler }));
        grids.append(figure);
      } catch (error) {
        grids.append(`${sampler}: ${error.message}`);
      }
    }
  }
}

// Tabs (arrow keys move between them, as the WAI-ARIA tabs pattern does) ------------------------

const tabs = Array.from(document.querySelectorAll('[role="tab"]'));

function select(tab) {
  for (const t of tabs) {
    const chosen = t === tab;
    t.setAttribute("aria-selected", String(chosen));
    t.tabIndex = chosen ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !chosen;
  }
  tab.focus();
}

for (const tab of tabs) {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (step) select(tabs[(tabs.indexOf(tab) + step + tabs.length) % tabs.length]);
  });
}

// Wiring --------------------------------------------------------------------------------------

$("connection").addEventListener("submit", connect);
$("model").addEventListener("change", modelChanged);
$("sampler").addEventListener("change", samplerChanged);
$("sample-form").addEventListener("submit", sample);
$("score-form").addEventListener("submit", score);
$("opacity").addEventListener("input", () => {
  for (const heat of document.querySelectorAll(".heatmap")) heat.style.opacity = $("opacity").value;
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  $("files").files = event.dataTransfer.files;
});
connect();
