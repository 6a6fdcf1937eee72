// cinetune web UI: plain JavaScript, no framework, no network beyond this server.
"use strict";
const $ = (sel, el = document) => el.querySelector(sel);
const h = (tag, attrs = {}, ...kids) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const kid of kids) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
};
const state = { meta: null, project: null, config: {}, datasets: [], events: null, metrics: [] };

async function api(path, opts = {}) {
  const res = await fetch(path, {
    headers: { "Content-Type": "application/json" }, credentials: "same-origin", ...opts,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok && res.status !== 422) throw new Error(data.error || data.detail || res.statusText);
  return data;
}
const pApi = (suffix, opts) => api(`/api/projects/${encodeURIComponent(state.project)}${suffix}`, opts);
const fileUrl = (path, download) =>
  `/api/projects/${encodeURIComponent(state.project)}/file?path=${encodeURIComponent(path)}${download ? "&download=1" : ""}`;

// ---------- tabs ----------
function show(page) {
  document.querySelectorAll(".tab").forEach((b) => b.classList.toggle("active", b.dataset.page === page));
  document.querySelectorAll(".page").forEach((s) => s.classList.toggle("hidden", s.id !== `page-${page}`));
  if (!state.project) return;
  if (page === "dataset") loadClips();
  if (page === "results") loadResults();
}
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => show(b.dataset.page)));

// ---------- projects ----------
async function loadProjects() {
  const list = await api("/api/projects");
  $("#projects").replaceChildren(...list.map((p) =>
    h("li", {}, h("button", { class: "open-project", "data-name": p.name, onclick: () => openProject(p.name) }, p.name),
      p.configured ? "" : " (no config)")));
}

async function openProject(name) {
  state.project = name;
  $("#current").textContent = `project: ${name}`;
  const data = await pApi("/config");
  state.config = data.config || {};
  state.datasets = data.datasets || [];
  $("#datasets").value = JSON.stringify(state.datasets, null, 2);
  renderForm();
  renderPlan(data.plan);
  connectEvents();
  refreshJobs();
}

function schemaProps() { return state.meta.schema.train.properties; }
function kindOf(prop) {
  const defs = state.meta.schema.train.$defs || {};
  const options = (prop.anyOf || [prop]).map((p) => (p.$ref ? defs[p.$ref.split("/").pop()] : p))
    .filter((p) => p && p.type !== "null");
  if (options.length === 1 && options[0].enum) return { kind: "enum", values: options[0].enum };
  if (options.length === 1 && ["integer", "number", "boolean", "string"].includes(options[0].type))
    return { kind: options[0].type };
  return { kind: "json" };
}

function fieldInput(key, value) {
  const { kind, values } = kindOf(schemaProps()[key] || {});
  let input;
  if (kind === "enum") {
    input = h("select", {}, ...values.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
    input.value = JSON.stringify(value);
  } else if (kind === "boolean") {
    input = h("input", { type: "checkbox" });
    input.checked = !!value;
  } else {
    input = h("input", { type: kind === "integer" || kind === "number" ? "number" : "text",
      step: kind === "number" ? "any" : undefined });
    input.value = kind === "json" && typeof value !== "string" ? JSON.stringify(value) : value ?? "";
  }
  input.dataset.key = key;
  input.addEventListener("change", () => { state.config[key] = readInput(input, kind); validate(); });
  return input;
}

function readInput(input, kind) {
  if (kind === "enum") return JSON.parse(input.value);
  if (kind === "boolean") return input.checked;
  if (kind === "integer") return input.value === "" ? null : parseInt(input.value, 10);
  if (kind === "number") return input.value === "" ? null : Number(input.value);
  if (kind === "json") { try { return JSON.parse(input.value); } catch { return input.value; } }
  return input.value;
}

function renderForm() {
  const props = schemaProps();
  const rows = Object.keys(state.config).map((key) => h("div", { class: "field" },
    h("label", { for: `f-${key}` }, key),
    fieldInput(key, state.config[key]),
    h("div", {}, h("div", { class: "desc" }, (props[key] || {}).description || ""),
      h("div", { class: "field-error", "data-for": key })),
    h("button", { class: "remove", title: "remove the key", onclick: () => {
      delete state.config[key]; renderForm(); validate(); } }, "×")));
  $("#config-form").replaceChildren(...rows);
  const unused = Object.keys(props).filter((k) => !(k in state.config)).sort();
  $("#add-key").replaceChildren(h("option", { value: "" }, "…"), ...unused.map((k) => h("option", { value: k }, k)));
  renderPickers();
}

$("#add-key").addEventListener("change", (ev) => {
  const key = ev.target.value;
  if (!key) return;
  const prop = schemaProps()[key];
  state.config[key] = prop.default ?? "";
  renderForm();
  validate();
});

function familyInfo() { return state.meta.families[state.config.model_family] || null; }
function videoEntries() { return state.datasets.filter((d) => d && (d.dataset_type || "video") === "video"); }

function renderPickers() {
  const fam = familyInfo();
  const res = $("#resolution"), fr = $("#frames");
  if (!fam) { res.replaceChildren(); fr.replaceChildren(); return; }
  const current = state.config.validation_resolution;
  res.replaceChildren(h("option", { value: "" }, current ? `${current} (current)` : "…"),
    ...fam.resolutions.map((r) => h("option", { value: r.value }, r.label)));
  const frames = videoEntries()[0]?.video?.num_frames;
  fr.replaceChildren(h("option", { value: "" }, frames ? `${frames} (current)` : "…"),
    ...fam.frames.map((f) => h("option", { value: f }, `${f} frames`)));
}

$("#resolution").addEventListener("change", (ev) => {
  const r = familyInfo()?.resolutions.find((x) => x.value === ev.target.value);
  if (!r) return;
  state.config.validation_resolution = r.value;
  for (const d of videoEntries()) { d.resolution = r.area; d.resolution_type = "pixel_area"; }
  $("#datasets").value = JSON.stringify(state.datasets, null, 2);
  renderForm(); validate();
});
$("#frames").addEventListener("change", (ev) => {
  const n = parseInt(ev.target.value, 10);
  if (!n) return;
  state.config.validation_num_video_frames = n;
  for (const d of videoEntries()) { d.video = { ...(d.video || {}), num_frames: n, min_frames: n }; }
  $("#datasets").value = JSON.stringify(state.datasets, null, 2);
  renderForm(); validate();
});
$("#datasets").addEventListener("change", () => {
  try { state.datasets = JSON.parse($("#datasets").value); $("#general-errors").textContent = ""; renderPickers(); validate(); }
  catch (e) { $("#general-errors").textContent = `multidatabackend.json: ${e.message}`; }
});

function showErrors(errors) {
  document.querySelectorAll(".field-error").forEach((el) => { el.textContent = ""; });
  for (const [key, msg] of Object.entries(errors.config || {})) {
    const el = $(`.field-error[data-for="${CSS.escape(key)}"]`);
    if (el) el.textContent = msg; else $("#general-errors").textContent += `${key}: ${msg}\n`;
  }
  $("#dataset-errors").textContent = (errors.datasets || []).join("\n");
  $("#general-errors").textContent = (errors.general || []).join("\n");
}

async function validate() {
  const data = await pApi("/validate", { method: "POST", body: { config: state.config, datasets: state.datasets } });
  showErrors(data.errors);
  return data.errors;
}

function renderPlan(plan) {
  if (!plan) { $("#plan").replaceChildren(); return; }
  $("#plan").replaceChildren(plan.ok
    ? h("div", { class: "ok" }, "Run plan: the saved config resolves (same checks as cinetune check).")
    : h("div", { class: "error" }, `Run plan: ${plan.error}`),
    ...plan.warnings.map((w) => h("div", { class: "warn" }, `warning: ${w}`)));
}

$("#save").addEventListener("click", async () => {
  const data = await pApi("/config", { method: "PUT", body: { config: state.config, datasets: state.datasets } });
  showErrors(data.errors);
  $("#save-state").textContent = data.saved ? "saved" : "not saved: fix the fields marked in red";
  renderPlan(data.plan);
});

$("#mem-run").addEventListener("click", async () => {
  const q = new URLSearchParams();
  for (const [key, id] of [["vram", "#mem-vram"], ["size", "#mem-size"], ["frames", "#mem-frames"]]) {
    if ($(id).value) q.set(key, $(id).value);
  }
  $("#mem-out").textContent = "predicting...";
  const data = await pApi(`/memory?${q}`);
  if (!data.ok) { $("#mem-out").textContent = data.error; return; }
  const out = [`at ${data.shape} (predicted):`, ...data.lines.map((l) => `  ${l}`)];
  if (data.vram_gib !== undefined) {
    if (data.fits) out.push(`fits ${data.vram_gib} GiB as it is`);
    else if (data.proposal) {
      out.push(`does not fit ${data.vram_gib} GiB; the cheapest settings that do (config keys):`,
        JSON.stringify(data.proposal.keys, null, 2), ...data.proposal.lines.map((l) => `  ${l}`));
    } else out.push(`nothing cinetune builds fits ${data.vram_gib} GiB: lower the resolution, frames or batch`);
  }
  $("#mem-out").textContent = out.join("\n");
});

$("#create").addEventListener("click", async () => {
  $("#create-error").textContent = "";
  try {
    const data = await api("/api/projects", { method: "POST",
      body: { name: $("#project-name").value.trim(), template: $("#template").value } });
    await loadProjects();
    await openProject(data.name);
  } catch (e) { $("#create-error").textContent = e.message; }
});

// ---------- dataset ----------
async function loadClips() {
  const data = await pApi("/clips");
  $("#clip-count").textContent = `(${data.clips.length})`;
  performance.mark("clips-fetched");
  const base = `/api/projects/${encodeURIComponent(state.project)}`;
  $("#clips").replaceChildren(...data.clips.map((c) => {
    const poster = h("img", { loading: "lazy", alt: c.path, src: `${base}/poster?path=${encodeURIComponent(c.path)}` });
    const box = h("div", { class: "media" }, poster);
    box.addEventListener("mouseenter", () => {
      const v = h("video", { src: fileUrl(c.path), muted: "", loop: "", playsinline: "" });
      v.muted = true; box.replaceChildren(v); v.play().catch(() => {});
    });
    box.addEventListener("mouseleave", () => box.replaceChildren(poster));
    const facts = c.error ? `unreadable: ${c.error}` :
      `${c.width}x${c.height} · ${c.fps} fps · ${c.frames} frames · ${c.audio ? "audio" : "no audio"}`;
    const caption = h("textarea", { class: "caption", rows: 3, "data-path": c.path }, c.caption ?? "");
    if (!c.caption_editable) caption.setAttribute("readonly", "");
    const status = h("span", { class: "caption-state" });
    const save = h("button", { class: "save-caption", onclick: async () => {
      try { await pApi("/caption", { method: "PUT", body: { path: c.path, text: caption.value } }); status.textContent = "saved"; }
      catch (e) { status.textContent = e.message; } } }, "Save caption");
    return h("div", { class: "clip" }, box, h("div", { class: "name" }, c.path), h("div", { class: "facts" }, facts),
      caption, save, status);
  }));
  performance.mark("clips-rendered");
  const report = data.report;
  if (report) {
    $("#report").replaceChildren(h("div", {}, `kept: ${JSON.stringify(report.kept)}`),
      report.skipped.length ? h("ul", {}, ...report.skipped.map((s) => h("li", {}, `[${s.dataset}] ${s.path}: ${s.reason}`)))
        : h("div", {}, "no file skipped"));
  }
}

async function startJob(kind, body = {}) {
  try { await pApi(`/jobs/${kind}`, { method: "POST", body }); connectEvents(); }
  catch (e) { alert(e.message); }
}
$("#prep-start").addEventListener("click", () => startJob("prep",
  { raw: $("#prep-raw").value, backend: $("#prep-backend").value, model: $("#prep-model").value }));
$("#cache-start").addEventListener("click", () => startJob("cache"));

// ---------- training ----------
$("#train-start").addEventListener("click", () => { state.metrics = []; startJob("train"); });
$("#train-resume").addEventListener("click", () => startJob("train", { resume: true }));
$("#train-stop").addEventListener("click", async () => {
  try { await pApi("/jobs/train/stop", { method: "POST" }); } catch (e) { alert(e.message); }
});

async function refreshJobs() {
  const jobs = await pApi("/jobs");
  $("#train-state").textContent = jobs.train.state;
  $("#prep-state").textContent = `prep: ${jobs.prep.state} · cache: ${jobs.cache.state}`;
}

function connectEvents() {
  if (state.events) state.events.close();
  state.metrics = [];
  $("#log").textContent = "";
  const es = new EventSource(`/api/projects/${encodeURIComponent(state.project)}/events?kind=train`);
  es.addEventListener("update", (ev) => {
    const d = JSON.parse(ev.data);
    state.metrics.push(...d.metrics);
    if (d.log) { const log = $("#log"); log.textContent += d.log; log.scrollTop = log.scrollHeight; }
    $("#train-state").textContent = d.state;
    const last = state.metrics[state.metrics.length - 1];
    const step = last ? last.step : 0;
    const total = d.total || step || 1;
    $("#train-progress").max = total; $("#train-progress").value = step;
    $("#train-step").textContent = `${step} / ${d.total ?? "?"}`;
    if (last && last.loss != null) $("#train-loss").textContent = `loss ${last.loss.toFixed(4)} · lr ${last.lr.toExponential(2)}`;
    drawChart();
  });
  state.events = es;
  if (state.prepTimer) clearInterval(state.prepTimer);
  state.prepTimer = setInterval(async () => {
    if (!state.project) return;
    await refreshJobs().catch(() => {});
    const kind = $("#prep-state").textContent.includes("cache: running") ? "cache" : "prep";
    const log = await pApi(`/log/${kind}`).catch(() => null);
    if (log) $("#prep-log").textContent = log.text;
  }, 3000);
}

function drawChart() {
  const c = $("#chart"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const pts = state.metrics.filter((m) => m.loss != null);
  if (pts.length < 1) return;
  const maxStep = Math.max(...pts.map((m) => m.step), 1);
  const line = (key, color) => {
    const vals = pts.map((m) => m[key]);
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    pts.forEach((m, i) => {
      const x = 40 + (m.step / maxStep) * (c.width - 60);
      const y = c.height - 25 - ((m[key] - lo) / span) * (c.height - 45);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      g.fillStyle = color; g.fillRect(x - 2, y - 2, 4, 4);
    });
    g.stroke();
    return [lo, hi];
  };
  const [llo, lhi] = line("loss", "#d9480f");
  const [rlo, rhi] = line("lr", "#1c7ed6");
  g.fillStyle = "#333"; g.font = "11px sans-serif";
  g.fillText(`loss ${llo.toFixed(3)}–${lhi.toFixed(3)}`, 4, 12);
  g.fillText(`lr ${rlo.toExponential(1)}–${rhi.toExponential(1)}`, c.width - 140, 12);
  g.fillText(`step ${maxStep}`, c.width - 60, c.height - 6);
}

// ---------- results ----------
async function loadResults() {
  const r = await pApi("/results");
  $("#results").replaceChildren(...(r.steps.length ? r.steps.map((s) => h("div", { class: "step" },
    h("h3", {}, `step ${s.step}`),
    ...s.videos.map((v) => h("div", {}, h("video", { controls: "", src: fileUrl(v.path), "data-step": s.step }),
      h("div", { class: "prompt" }, v.prompt ? `prompt: ${v.prompt}` : v.name))))) : ["No validation video yet."]));
  $("#checkpoints").replaceChildren(...r.checkpoints.map((c) => h("tr", {}, h("td", {}, c.name),
    h("td", {}, h("a", { href: fileUrl(c.lora, true) }, "download lora.safetensors")))));
  const files = Object.entries(r.lora).filter(([, p]) => p);
  $("#export-result").replaceChildren(...files.map(([label, p]) =>
    h("div", {}, h("a", { href: fileUrl(p, true), class: `download-${label}` }, `download ${label}: ${p}`))));
}
async function exportAs(fmt) {
  try { const d = await pApi("/export", { method: "POST", body: { format: fmt } }); await loadResults();
    $("#export-result").prepend(h("div", { class: "ok", id: `exported-${fmt}` }, `${fmt} written: ${d.path}`)); }
  catch (e) { $("#export-result").replaceChildren(h("div", { class: "error" }, e.message)); }
}
$("#export-diffusers").addEventListener("click", () => exportAs("diffusers"));
$("#export-comfyui").addEventListener("click", () => exportAs("comfyui"));

// ---------- start ----------
(async () => {
  const params = new URLSearchParams(location.search);
  if (params.get("project")) {  // a linked page: its data loads while the rest of the UI is set up
    state.project = params.get("project");
    if (params.get("page")) show(params.get("page"));
  }
  state.meta = await api("/api/meta");
  $("#template").replaceChildren(...state.meta.templates.map((t) =>
    h("option", { value: t.name }, `${t.name} (${t.family}, ${t.flavour})`)));
  await loadProjects();
  if (params.get("project")) await openProject(params.get("project"));
})();
