// The page of `clip serve`: images are kept in the browser and posted to /v1/classify (multipart) whenever
// the images or the labels change; the service caches label embeddings, so a new label list costs one text
// encoding and the images' scores.  Every label, path and message is put in the page as text (textContent),
// never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { images: [], records: [], header: null, config: null, seq: 0, urls: new Map() };

function setStatus(text, isError) {
  const el = $("status");
  el.textContent = text || "";
  el.classList.toggle("error", Boolean(isError));
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

function parseLabels(text) {
  const lines = text.split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
  const parts = lines.length === 1 ? lines[0].split(/[,，]/) : lines;
  return [...new Set(parts.map((s) => s.trim()).filter(Boolean))];
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function urlOf(file) {
  if (!state.urls.has(file)) state.urls.set(file, URL.createObjectURL(file));
  return state.urls.get(file);
}

function render() {
  const box = $("results");
  box.replaceChildren();
  state.images.forEach((file, index) => {
    const record = state.records[index];
    const card = el("article", "record");
    const img = el("img");
    img.src = urlOf(file);
    img.alt = file.name;
    card.append(img);
    const body = el("div");
    if (!record) {
      body.append(el("p", "muted", "…"));
    } else if (record.error) {
      body.append(el("p", "error", record.error.message));
    } else {
      const list = el("ol", "bars");
      for (const p of record.predictions) {
        const item = el("li", p.label === otherLabel() && state.header && state.header.other ? "is-other" : "");
        const text = el("div", "text");
        text.append(el("span", "label", p.label), el("span", "score", (100 * p.score).toFixed(1) + "%"));
        const track = el("div", "track");
        const fill = el("div", "fill");
        fill.style.width = Math.max(0, Math.min(100, 100 * p.score)).toFixed(2) + "%";
        track.append(fill);
        item.append(text, track);
        list.append(item);
      }
      body.append(list);
    }
    card.append(body, el("p", "name", file.name));
    box.append(card);
  });
  const ready = state.records.some(Boolean);
  $("export-json").disabled = !ready;
  $("export-csv").disabled = !ready;
}

function otherLabel() {
  return state.header && state.header.other ? state.header.other.label : "other";
}

async function classify() {
  const labels = parseLabels($("labels").value);
  if (!state.images.length) { setStatus(labels.length ? "Add an image to classify." : ""); return; }
  if (!labels.length) { setStatus("Type at least one label."); return; }
  const seq = ++state.seq;
  setStatus("Classifying…");
  const chunk = (state.config && state.config.max_images) || 64;
  const records = [];
  let header = null;
  try {
    for (let start = 0; start < state.images.length; start += chunk) {
      const form = new FormData();
      for (const file of state.images.slice(start, start + chunk)) form.append("image", file, file.name);
      form.append("labels", labels.map((l) => (/[",]/.test(l) ? `"${l.replace(/"/g, '""')}"` : l)).join(","));
      form.append("templates", $("templates").value);
      form.append("top_k", $("topk").value || "5");
      form.append("other", $("other").checked ? "true" : "false");
      if ($("threshold").value) form.append("other_threshold", $("threshold").value);
      const response = await fetch("/v1/classify", { method: "POST", body: form });
      if (seq !== state.seq) return;  // a newer request took over
      if (!response.ok) { setStatus(await errorText(response), true); return; }
      const body = await response.json();
      header = body;
      records.push(...body.results);
    }
  } catch (err) {
    if (seq === state.seq) setStatus(`The service did not answer (${err.message}).`, true);
    return;
  }
  if (seq !== state.seq) return;
  state.records = records;
  state.header = header;
  const failed = records.filter((r) => r.error).length;
  setStatus(`${records.length} image(s) classified` + (failed ? `, ${failed} unreadable` : "") + ".");
  render();
}

let timer = null;
function classifySoon(delay) {
  clearTimeout(timer);
  timer = setTimeout(classify, delay === undefined ? 350 : delay);
}

function addFiles(files) {
  const images = [...files].filter((f) => f.type.startsWith("image/") || /\.(jpe?g|png|webp|gif|bmp|tiff?|heic)$/i.test(f.name));
  if (!images.length) return;
  state.images.push(...images);
  state.records = [];
  render();
  classifySoon(0);
}

function download(name, type, text) {
  const link = el("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
}

function csvCell(value) {
  const text = String(value === undefined || value === null ? "" : value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function exportCsv() {
  const rows = [["path", "rank", "label", "score", "error_type", "error_message"]];
  for (const r of state.records) {
    if (r.error) rows.push([r.path, "", "", "", r.error.type, r.error.message]);
    else r.predictions.forEach((p, i) => rows.push([r.path, i + 1, p.label, p.score, "", ""]));
  }
  download("clip-results.csv", "text/csv", rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n");
}

function exportJson() {
  const doc = { ...(state.header || {}), results: state.records };
  download("clip-results.json", "application/json", JSON.stringify(doc, null, 2) + "\n");
}

async function search(event) {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text) return;
  const grid = $("grid");
  setStatus("Searching…");
  const response = await fetch("/v1/search", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text, k: Number($("search-k").value) || 24 }),
  });
  if (!response.ok) { setStatus(await errorText(response), true); return; }
  const body = await response.json();
  grid.replaceChildren();
  for (const hit of body.results) {
    const figure = el("figure");
    const img = el("img");
    img.loading = "lazy";
    // a video's moment: its best frame, a stored row (`video#t=seconds`), and its times
    const moment = hit.best !== undefined;
    const shown = moment ? `${hit.path}#t=${hit.best.toFixed(3)}` : hit.path;
    img.src = "/v1/thumbnail?path=" + encodeURIComponent(shown);
    img.alt = hit.path;
    const times = moment ? `  ${clock(hit.start)}-${clock(hit.end)}` : "";
    figure.append(img, el("figcaption", "", `${hit.score.toFixed(3)}  ${hit.path}${times}`));
    grid.append(figure);
  }
  setStatus(`${body.results.length} of ${body.searched} stored images and videos.`);
}

function clock(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

async function start() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.items : [])].filter((i) => i.kind === "file").map((i) => i.getAsFile());
    if (files.length) addFiles(files);
  });
  $("files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("labels").addEventListener("input", () => classifySoon());
  for (const id of ["templates", "topk", "other", "threshold"]) $(id).addEventListener("change", () => classifySoon(0));
  $("labelfile").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const lines = (await file.text()).split(/\r?\n/).map((s) => s.trim()).filter((s) => s && !s.startsWith("#"));
    $("labels").value = lines.join("\n");
    e.target.value = "";
    classifySoon(0);
  });
  $("export-json").addEventListener("click", exportJson);
  $("export-csv").addEventListener("click", exportCsv);
  $("clear").addEventListener("click", () => {
    state.urls.forEach((url) => URL.revokeObjectURL(url));
    state.urls.clear();
    state.images = []; state.records = []; state.seq++;
    render(); setStatus("");
  });
  $("search-form").addEventListener("submit", (e) => search(e).catch((err) => setStatus(err.message, true)));
  try {
    const response = await fetch("/v1/config");
    if (!response.ok) { setStatus(await errorText(response), true); return; }
    state.config = await response.json();
  } catch (err) {
    setStatus(`The service did not answer (${err.message}).`, true);
    return;
  }
  const select = $("templates");
  for (const name of state.config.templates) {
    const option = el("option", "", name);
    option.value = name;
    option.selected = name === state.config.default_templates;
    select.append(option);
  }
  const m = state.config.model;
  $("model").textContent = `${m.name}${m.pretrained ? ":" + m.pretrained : ""} (${m.backend}, ${m.precision})`;
  $("search").hidden = !state.config.store;
  document.body.dataset.ready = "true";
}

start();
