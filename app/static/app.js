// The edgetune dashboard: vanilla JS over the public HTTP API, no build step.
// Every value from the server is set as text (never as HTML). The API key, when the server
// requires one, lives in localStorage and goes out as X-API-Key; plots are fetched with it and
// shown from blob URLs, since an <img src> cannot send headers.
"use strict";

const KEY_STORAGE = "edgetune.apiKey";
const POLL_MS = 2000;
const TERMINAL = ["succeeded", "failed", "cancelled"];
const PLOTS = ["order", "collapse", "growth", "trajectory"];
// The most jobs one compare plot takes (app/plots.py MAX_COMPARED).
const MAX_COMPARED = 10;
const EXAMPLE_SPEC = `# A seconds-long job: scikit-learn's 8×8 digits, a small tanh MLP, every knob free.
model: {type: mlp, hidden: [64], activation: tanh, init: {scheme: edge, J: 0.5}}
dataset: {name: digits}
optimizer: {type: sgd, learning_rate: null, momentum: null, batch_size: null, weight_decay: null}
budget: {epochs: 10, probe_fraction: 0.2}
seed: 0
`;

const $ = (selector) => document.querySelector(selector);
let timer = null;
let plotUrls = [];

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail ? `${problem.title}: ${problem.detail}` : problem.title);
    this.status = status;
    this.problem = problem;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (apiKey()) headers["X-API-Key"] = apiKey();
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    showKeyPanel(apiKey() ? "The stored API key was refused (revoked or mistyped)." : null);
  }
  if (!response.ok) {
    let problem = { title: `HTTP ${response.status}`, detail: "" };
    try {
      problem = await response.json();
    } catch (_) { /* not a problem document */ }
    throw new ApiError(response.status, problem);
  }
  return response;
}

function showError(error) {
  const box = $("#error");
  if (!error) {
    box.hidden = true;
    return;
  }
  let text = error.message || String(error);
  const fields = (error.problem && error.problem.errors) || [];
  if (fields.length) text += " — " + fields.map((f) => `${f.field}: ${f.message}`).join("; ");
  box.textContent = text;
  box.hidden = false;
}

function showKeyPanel(message) {
  $("#key-panel").hidden = false;
  if (message) $("#key-message").textContent = message;
  $("#key-input").focus();
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function adamwOf(hyper) {
  return hyper.optimizer === "adamw";
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") {
    if (Number.isInteger(value)) return String(value);
    return Number(value.toPrecision(4)).toString();
  }
  if (typeof value === "object" && typeof value.value === "number") {
    let text = fmt(value.value);
    if (typeof value.low === "number" && typeof value.high === "number") {
      text += `  [${fmt(value.low)}, ${fmt(value.high)}] 95%`;
    }
    return text;
  }
  return String(value);
}

function eta(seconds) {
  if (typeof seconds !== "number") return "–";
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function statusBadge(status) {
  return el("span", status, `status ${status}`);
}

function specSummary(spec) {
  const model = spec.model || {};
  const shape = model.type === "torchvision" ? model.name
    : model.type === "cnn" ? `cnn ×${(model.blocks || []).length}`
      : `${model.type} [${(model.hidden || []).join(", ")}] ${model.activation || ""}`;
  const budget = spec.budget || {};
  return `${shape} · ${(spec.dataset || {}).name} · ${budget.epochs} epochs`;
}

function navigate(path) {
  history.pushState({}, "", path);
  route();
}

// --- the job list ------------------------------------------------------------------------

// The list shows this many pages of LIST_PAGE_SIZE jobs, newest first; "older jobs" adds one.
const LIST_PAGE_SIZE = 50;
let listPages = 1;
// Jobs picked for the compare view, by id: kept here because every refresh redraws the rows.
const picked = new Set();

// η, B and the verdict of a succeeded job (its `result` summary); empty cells otherwise.
function resultCells(job) {
  const result = job.result;
  if (!result) return [el("span", ""), el("span", ""), el("span", "")];
  const verdict = result.verdict || { action: "", message: "–" };
  return [
    el("span", fmt(result.learning_rate), "lr"),
    el("span", fmt(result.batch_size), "batch"),
    el("span", verdict.message, `verdict-line ${verdict.action}`),
  ];
}

function pickBox(job) {
  const box = el("input");
  box.type = "checkbox";
  box.className = "pick";
  box.checked = picked.has(job.id);
  box.title = "compare this job";
  box.addEventListener("change", () => {
    if (box.checked) picked.add(job.id);
    else picked.delete(job.id);
    showPicked();
  });
  return box;
}

function showPicked() {
  const n = picked.size;
  const button = $("#compare-button");
  button.disabled = n < 2 || n > MAX_COMPARED;
  button.textContent = n ? `Compare selected (${n})` : "Compare selected";
  $("#compare-hint").textContent = n > MAX_COMPARED ? `at most ${MAX_COMPARED} jobs at once`
    : n < 2 ? "pick two or more jobs to compare their order-parameter trajectories" : "";
}

async function refreshList() {
  const jobs = [];
  let token = null;
  for (let i = 0; i < listPages; i++) {
    const query = token ? `&page_token=${encodeURIComponent(token)}` : "";
    const page = await (await api(`/v1/jobs?page_size=${LIST_PAGE_SIZE}${query}`)).json();
    jobs.push(...page.jobs);
    token = page.next_page_token;
    if (!token) break;
  }
  const body = $("#jobs tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const row = el("tr");
    row.dataset.id = job.id;
    row.dataset.status = job.status;
    const link = el("a", job.id.slice(0, 12));
    link.href = `/jobs/${job.id}`;
    link.dataset.nav = "";
    link.title = job.id;
    const progress = job.progress || {};
    const bar = el("progress");
    bar.max = 1;
    bar.value = progress.fraction || 0;
    const cells = [
      pickBox(job),
      link,
      statusBadge(job.status),
      el("span", progress.phase || ""),
      bar,
      el("span", `${progress.probes_done || 0}/${progress.probes_total || 0}`),
      el("span", TERMINAL.includes(job.status) ? "" : eta(progress.eta_seconds)),
      ...resultCells(job),
      el("span", specSummary(job.spec || {})),
      el("span", new Date(job.created_at).toLocaleString()),
    ];
    for (const content of cells) {
      const cell = el("td");
      cell.append(content);
      row.append(cell);
    }
    body.append(row);
  }
  $("#jobs-empty").hidden = jobs.length > 0;
  $("#jobs-count").textContent = jobs.length ? `${jobs.length} jobs shown` : "";
  $("#jobs-more").hidden = !token;
  showPicked();
}

async function submitSpec(event) {
  event.preventDefault();
  const text = $("#spec").value;
  const json = text.trim().startsWith("{");
  $("#submit-result").textContent = "submitting…";
  try {
    const response = await api("/v1/recommendations", {
      method: "POST",
      headers: { "Content-Type": json ? "application/json" : "application/yaml" },
      body: text,
    });
    const job = await response.json();
    $("#submit-result").textContent = "";
    showSubmitError(null);
    navigate(`/jobs/${job.id}`);
  } catch (error) {
    $("#submit-result").textContent = "";
    showSubmitError(error);
  }
}

// Beside the button, and kept until the spec is submitted again (the list's refresh, which
// clears its own errors every 2 s, leaves it alone): each field once, with what is wrong.
function showSubmitError(error) {
  const box = $("#submit-error");
  box.hidden = !error;
  if (!error) return;
  const problem = error.problem || {};
  const fields = problem.errors || [];
  const title = el("strong", fields.length ? `${problem.title || "Rejected"}:` : error.message);
  box.replaceChildren(title);
  if (fields.length) {
    box.append(el("ul"));
    box.lastChild.append(...fields.map((f) => el("li", `${f.field}: ${f.message}`)));
  }
}

// --- one job -----------------------------------------------------------------------------

function factRows(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const [name, value] of rows) {
    const row = el("tr");
    row.append(el("td", name), el("td", fmt(value)));
    body.append(row);
  }
}

function edgeEpoch(epoch, runEpochs) {
  if (typeof epoch !== "number") return "not within reach";
  const text = fmt(epoch);
  // Within 1 % of the end is "at the end": the engine aims the edge at the last epoch.
  if (epoch > runEpochs * 1.01) return `${text} (after this ${fmt(runEpochs)}-epoch run ends)`;
  return epoch >= runEpochs * 0.99 ? `${text} (at the end of the run)` : text;
}

function showRecommendation(result) {
  $("#recommendation").hidden = false;
  const hyper = result.hyperparameters;
  const edge = result.edge || {};
  const validity = result.validity || {};
  const verdict = result.verdict || { action: validity.ok ? "use" : "care", message: "" };
  $("#verdict").textContent = verdict.message;
  $("#verdict").className = `verdict ${verdict.action}`;
  // Every caution in plain words; the fits' technical warnings are one click away below.
  $("#verdict-reasons").replaceChildren(...(verdict.reasons || []).map((r) => el("li", r)));
  if (hyper) {
    factRows($("#hyperparameters"), [
      ["learning rate η", hyper.learning_rate],
      ...(adamwOf(hyper) ? [["optimizer", "AdamW (β 0.9, 0.999)"]] : [["momentum α", hyper.momentum]]),
      ["batch size B", hyper.batch_size],
      ["weight decay (PyTorch)", hyper.weight_decay],
      ["epochs", hyper.epochs],
      ...(hyper.schedule && hyper.schedule.name !== "constant"
        ? [["schedule (η is its peak)", hyper.schedule.name]] : []),
    ]);
    const adamw = Boolean(hyper.torch_adamw_kwargs);
    const kwargs = (adamw ? hyper.torch_adamw_kwargs : hyper.torch_sgd_kwargs) || {};
    const number = (v) => Number(v.toPrecision(6));
    // Six significant digits: what a person copies (0.04, not 0.039999999999999994).
    // Booleans (nesterov) as Python writes them; nesterov=False is PyTorch's default, left out.
    const args = Object.entries(kwargs)
      .filter(([k, v]) => !(k === "nesterov" && v === false))
      .map(([k, v]) => `${k}=${Array.isArray(v) ? `(${v.map(number).join(", ")})`
        : typeof v === "number" ? number(v) : v ? "True" : "False"}`)
      .join(", ");
    const name = adamw ? "AdamW" : "SGD";
    $("#sgd-snippet").textContent = `torch.optim.${name}(model.parameters(), ${args})`;
  } else {
    factRows($("#hyperparameters"), [["no recommendation", validity.reason || "see warnings"]]);
    $("#sgd-snippet").textContent = "";
  }
  const order = edge.order_parameter || {};
  const rows = [["order parameter", order.name === "J2" ? "J²" : order.name === "chi" ? "χ" : order.name]];
  if (hyper) {
    rows.push(
      ["at initialisation", edge.initial],
      ["reaches the edge at (epoch)", edgeEpoch(edge.predicted_edge_epoch, hyper.epochs)],
      ["at the end of the run", edge.predicted_final],
      ["growth rate A (per epoch)", edge.growth_rate_per_epoch],
      ["decay rate D (per epoch)", edge.decay_rate_per_epoch],
      ["k in A = k·η/((1−α)B)", edge.k],
    );
  }
  factRows($("#edge"), rows);
  $("#edge").title = order.description || "";
  const flagged = $("#validity-verdict");
  flagged.textContent = validity.ok ? "ok" : "check the warnings";
  flagged.className = `status ${validity.ok ? "ok" : "warn"}`;
  const flags = Object.entries(validity.flags || {}).filter(([, on]) => on).map(([name]) => name);
  const count = (validity.warnings || []).length;
  $("#validity-flags").textContent = (flags.length ? `flags: ${flags.join(", ")}` : "no flags raised")
    + (count ? ` · technical detail: ${count} warning${count > 1 ? "s" : ""}` : "");
  const list = $("#warnings");
  list.replaceChildren(...(validity.warnings || []).map((w) => el("li", w)));
}

async function loadPlot(jobId, name) {
  const img = document.querySelector(`img.plot[data-name="${name}"]`);
  const figure = img.parentElement;
  figure.querySelector(".plot-missing")?.remove();
  try {
    const blob = await (await api(`/v1/jobs/${jobId}/plots/${name}?format=png`)).blob();
    const url = URL.createObjectURL(blob);
    plotUrls.push(url);
    img.src = url;
    img.hidden = false;
    img.title = "open full size";
    img.onclick = () => window.open(url, "_blank");
  } catch (error) {
    img.hidden = true;
    img.removeAttribute("src");
    const note = el("div", error.problem ? error.problem.detail : String(error), "plot-missing");
    figure.prepend(note);
  }
  downloadLinks(figure.querySelector(".links"), `/v1/jobs/${jobId}/plots/${name}`,
    `${jobId}-${name}`);
}

// PNG and SVG links for the plot at `path` (?format= added), saved as `stem`.png / .svg.
function downloadLinks(links, path, stem) {
  links.replaceChildren();
  const sep = path.includes("?") ? "&" : "?";
  for (const format of ["png", "svg"]) {
    // Downloaded through fetch too (the key is a header), then saved from a blob.
    const link = el("a", format.toUpperCase());
    link.href = "#";
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      try {
        const blob = await (await api(`${path}${sep}format=${format}`)).blob();
        const save = el("a");
        save.href = URL.createObjectURL(blob);
        save.download = `${stem}.${format}`;
        save.click();
      } catch (error) {
        showError(error);
      }
    });
    links.append(link, document.createTextNode(" "));
  }
}

function refreshPlots(jobId) {
  for (const url of plotUrls) URL.revokeObjectURL(url);
  plotUrls = [];
  return Promise.all(PLOTS.map((name) => loadPlot(jobId, name)));
}

let shownJob = { id: null, status: null, probes: -1 };

async function refreshJob(jobId) {
  const job = await (await api(`/v1/jobs/${jobId}`)).json();
  const progress = job.progress || {};
  $("#job-id").textContent = job.id;
  const status = $("#job-status");
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  const ended = TERMINAL.includes(job.status);
  const stopped = ended && job.status !== "succeeded";
  // A job that was cancelled or failed is not "probing 13 %": say where it stopped, and what it
  // kept.
  $("#job-phase").textContent = stopped ? `stopped while ${progress.phase || "queued"}`
    : progress.phase || "";
  $("#job-progress").value = progress.fraction || 0;
  $("#job-progress").hidden = stopped;
  const probes = `probes ${progress.probes_done || 0}/${progress.probes_total || 0}`;
  $("#job-progress-text").textContent = stopped ? `${probes} stored`
    : `${Math.round((progress.fraction || 0) * 100)}% · ${probes}`
      + (ended ? "" : ` · ETA ${eta(progress.eta_seconds)}`);
  // Why a queued job waits beyond its turn (no live worker advertises its plugin): said, not
  // left as a bar at 0 %.
  $("#job-waiting").hidden = ended || !progress.message;
  $("#job-waiting").textContent = ended ? "" : progress.message || "";
  $("#job-cancel").hidden = TERMINAL.includes(job.status);
  $("#job-error").hidden = !job.error;
  $("#job-error").textContent = job.error || "";
  $("#job-spec").textContent = specSummary(job.spec || {});
  // Plots are redrawn only when something they show has changed.
  const changed = shownJob.id !== job.id || shownJob.status !== job.status
    || shownJob.probes !== progress.probes_done;
  shownJob = { id: job.id, status: job.status, probes: progress.probes_done };
  if (changed) {
    if (job.status === "succeeded") {
      showRecommendation(await (await api(`/v1/jobs/${jobId}/recommendation`)).json());
    } else {
      $("#recommendation").hidden = true;
    }
    await refreshPlots(jobId);
  }
  return job;
}

// --- several jobs compared ----------------------------------------------------------------

let compareUrl = null;
let shownCompare = null;

function comparedIds() {
  const ids = new URLSearchParams(location.search).get("jobs") || "";
  return ids.split(",").filter(Boolean);
}

// The jobs' rows and the plot; the plot is fetched again only when a job's status changed
// (it shows results, which only a finished job adds). True while a job has not ended.
async function refreshCompare() {
  const ids = comparedIds();
  const jobs = await Promise.all(
    ids.map(async (id) => (await api(`/v1/jobs/${encodeURIComponent(id)}`)).json()));
  const body = $("#compare-jobs tbody");
  body.replaceChildren();
  for (const job of jobs) {
    const link = el("a", job.id.slice(0, 12));
    link.href = `/jobs/${job.id}`;
    link.dataset.nav = "";
    const row = el("tr");
    row.dataset.id = job.id;
    for (const content of [link, statusBadge(job.status), ...resultCells(job),
      el("span", specSummary(job.spec || {}))]) {
      const cell = el("td");
      cell.append(content);
      row.append(cell);
    }
    body.append(row);
  }
  const statuses = jobs.map((job) => job.status).join(",");
  if (statuses !== shownCompare) {
    shownCompare = statuses;
    await loadComparePlot(ids.join(","));
  }
  return jobs.some((job) => !TERMINAL.includes(job.status));
}

async function loadComparePlot(ids) {
  const img = $("#compare-plot");
  const figure = img.parentElement;
  figure.querySelector(".plot-missing")?.remove();
  const path = `/v1/plots/order?jobs=${encodeURIComponent(ids)}`;
  try {
    const blob = await (await api(`${path}&format=png`)).blob();
    if (compareUrl) URL.revokeObjectURL(compareUrl);
    compareUrl = URL.createObjectURL(blob);
    img.src = compareUrl;
    img.hidden = false;
    img.onclick = () => window.open(compareUrl, "_blank");
  } catch (error) {
    img.hidden = true;
    img.removeAttribute("src");
    figure.prepend(el("div", error.problem ? error.problem.detail : String(error), "plot-missing"));
  }
  downloadLinks($("#compare-links"), path, "compare");
}

// --- routing and polling -----------------------------------------------------------------

async function tick() {
  clearTimeout(timer);
  const match = location.pathname.match(/^\/jobs\/([^/]+)$/);
  let again = true;
  try {
    if (match) {
      const job = await refreshJob(decodeURIComponent(match[1]));
      again = !TERMINAL.includes(job.status);
    } else if (location.pathname === "/compare") {
      again = await refreshCompare();
    } else {
      await refreshList();
    }
    showError(null);
  } catch (error) {
    showError(error);
    again = !(error instanceof ApiError && error.status === 401);
  }
  if (again) timer = setTimeout(tick, POLL_MS);
}

function route() {
  const onJob = /^\/jobs\/[^/]+$/.test(location.pathname);
  const onCompare = location.pathname === "/compare";
  $("#list-view").hidden = onJob || onCompare;
  $("#job-view").hidden = !onJob;
  $("#compare-view").hidden = !onCompare;
  shownJob = { id: null, status: null, probes: -1 };
  shownCompare = null;
  tick();
}

function init() {
  $("#spec").value = EXAMPLE_SPEC;
  $("#key-button").hidden = !apiKey();
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-nav]");
    if (link && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      navigate(link.getAttribute("href"));
    }
  });
  window.addEventListener("popstate", route);
  $("#submit-form").addEventListener("submit", submitSpec);
  $("#compare-button").addEventListener("click", () => {
    navigate(`/compare?jobs=${[...picked].join(",")}`);
  });
  $("#jobs-more").addEventListener("click", async () => {
    listPages += 1;
    await refreshList();
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, $("#key-input").value.trim());
    $("#key-input").value = "";
    $("#key-panel").hidden = true;
    $("#key-button").hidden = !apiKey();
    route();
  });
  $("#key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    $("#key-button").hidden = true;
    showKeyPanel(null);
  });
  $("#key-button").addEventListener("click", () => showKeyPanel(null));
  $("#job-cancel").addEventListener("click", async () => {
    const id = $("#job-id").textContent;
    try {
      await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
      tick();
    } catch (error) {
      showError(error);
    }
  });
  route();
}

document.addEventListener("DOMContentLoaded", init);
