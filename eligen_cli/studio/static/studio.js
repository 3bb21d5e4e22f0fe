// eligen studio: the page. Plain JavaScript, no build step, no network beyond the studio's own server.
// The page holds the layout being drawn; the server validates it, computes the token cells and renders it
// with the same functions as the eligen CLI.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const DISPLAY = 640; // px: the longer canvas side on screen
const HANDLE = 7; // px on screen: grab distance of corners and vertices
const MAX_UNDO = 60;

const S = {
  info: null,
  mode: "generate",
  docs: { generate: newDoc(), inpaint: newDoc() },
  size: [1024, 1024],
  image: null, // inpaint source: {id, name, size, img}
  tool: "box",
  check: null, // {grid, cells, warnings} of the last valid check
  error: null, // the last check's error
  checkSeq: 0,
  checking: false, // a check is scheduled or on its way
  draft: null, // a box or polygon being drawn, a drag in progress
  jobs: new Set(),
  uid: 1,
  pointer: null,
  sequenceLength: undefined, // max_sequence_length of a restored layout
};

function newDoc() {
  return { entities: [], selected: -1, undo: [], redo: [] };
}

const doc = () => S.docs[S.mode];
const entities = () => doc().entities;

// ---------- server ----------

async function api(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data;
  try {
    data = await response.json();
  } catch {
    data = { error: "request", message: `${response.status} ${response.statusText}` };
  }
  return response.ok ? data : { ...data, failed: true, status: response.status };
}

function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({ name: file.name, data: String(reader.result).split(",", 2)[1] || "" });
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// ---------- entities and masks ----------

// The outline of an entity whose prompt names a colour is drawn in that colour, so that it cannot be mistaken
// for another entity's ("a blue square" outlined blue); other entities take a palette colour whose name no
// prompt uses. The entity's number is drawn on the canvas beside its region as well.
const COLOUR_WORDS = {
  red: "#d62020", orange: "#f07f10", yellow: "#d8b400", green: "#1f9a3a", blue: "#1f5fd6", purple: "#8a2fc2",
  violet: "#8a2fc2", pink: "#e8559e", brown: "#8b5a2b", black: "#202020", white: "#b8b8b8", gray: "#7a7a7a",
  grey: "#7a7a7a", cyan: "#00a8b8", magenta: "#c81ec8",
};

function colourWord(prompt) {
  const words = String(prompt).toLowerCase().match(/[a-z]+/g) || [];
  return words.find((w) => w in COLOUR_WORDS) || null;
}

function nearestWord(hex) {
  const [r, g, b] = rgb(hex);
  let best = null, distance = Infinity;
  for (const [word, value] of Object.entries(COLOUR_WORDS)) {
    const [wr, wg, wb] = rgb(value);
    const d = (r - wr) ** 2 + (g - wg) ** 2 + (b - wb) ** 2;
    if (d < distance) [best, distance] = [word, d];
  }
  return best;
}

function nextColour(prompt, others) {
  const word = colourWord(prompt || "");
  if (word) return COLOUR_WORDS[word];
  const list = others || entities();
  const used = new Set(list.map((e) => e.color));
  const named = new Set(list.map((e) => colourWord(e.prompt)).filter(Boolean));
  const palette = S.info.palette;
  const free = palette.filter((c) => !named.has(nearestWord(c)));
  return free.find((c) => !used.has(c)) || free[list.length % (free.length || 1)] || palette[0];
}

// An entity whose colour the person did not choose follows its prompt.
function recolour(e) {
  if (!e.autoColour) return false;
  const colour = nextColour(e.prompt, entities().filter((x) => x !== e));
  if (colour === e.color) return false;
  e.color = colour;
  e.maskVersion++;
  return true;
}

function newEntity(fields) {
  return { uid: S.uid++, prompt: "", color: nextColour(fields && fields.prompt), autoColour: true, kind: null,
           box: null, polygon: null, mask: null, maskVersion: 0, loras: [], ...fields };
}

function copyEntity(e) {
  return { ...e, box: e.box && [...e.box], polygon: e.polygon && e.polygon.map((p) => [...p]),
           mask: e.mask && e.mask.slice(), loras: e.loras.map((spec) => ({ ...spec })) };
}

function snapshot() {
  return { entities: entities().map(copyEntity), selected: doc().selected };
}

function pushUndo() {
  const d = doc();
  d.undo.push(snapshot());
  if (d.undo.length > MAX_UNDO) d.undo.shift();
  d.redo = [];
  updateUndoButtons();
}

function restoreSnapshot(from, to) {
  const d = doc();
  if (!from.length) return;
  to.push(snapshot());
  const state = from.pop();
  d.entities = state.entities.map((e) => ({ ...copyEntity(e), maskVersion: e.maskVersion + 1, overlay: null,
                                             dataUrl: null }));
  d.selected = Math.min(state.selected, d.entities.length - 1);
  changed(true);
}

function undo() { restoreSnapshot(doc().undo, doc().redo); }
function redo() { restoreSnapshot(doc().redo, doc().undo); }

function updateUndoButtons() {
  $("undo").disabled = !doc().undo.length;
  $("redo").disabled = !doc().redo.length;
}

function maskDataUrl(e) {
  if (e.dataUrl && e.dataUrlVersion === e.maskVersion) return e.dataUrl;
  const [w, h] = S.size;
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const g = c.getContext("2d");
  const pixels = g.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = e.mask[i] ? 255 : 0;
    pixels.data[4 * i] = v;
    pixels.data[4 * i + 1] = v;
    pixels.data[4 * i + 2] = v;
    pixels.data[4 * i + 3] = 255;
  }
  g.putImageData(pixels, 0, 0);
  e.dataUrl = c.toDataURL("image/png");
  e.dataUrlVersion = e.maskVersion;
  return e.dataUrl;
}

// A mask image (URL) -> on/off pixels at the canvas size: on where the mean of R, G, B is above 127.5 (the rule
// eligen applies to mask files), the image resized with nearest sampling when its size differs.
function maskFromImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const [w, h] = S.size;
      const c = document.createElement("canvas");
      c.width = w;
      c.height = h;
      const g = c.getContext("2d");
      g.imageSmoothingEnabled = false;
      g.fillStyle = "#000";
      g.fillRect(0, 0, w, h);
      g.drawImage(img, 0, 0, w, h);
      const data = g.getImageData(0, 0, w, h).data;
      const mask = new Uint8Array(w * h);
      for (let i = 0; i < w * h; i++) mask[i] = data[4 * i] + data[4 * i + 1] + data[4 * i + 2] > 382.5 ? 1 : 0;
      resolve(mask);
    };
    img.onerror = () => reject(new Error("could not read the mask image"));
    img.src = url;
  });
}

function maskOverlay(e) {
  if (e.overlay && e.overlayVersion === e.maskVersion) return e.overlay;
  const [w, h] = S.size;
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  const g = c.getContext("2d");
  const pixels = g.createImageData(w, h);
  const [r, gr, b] = rgb(e.color);
  for (let i = 0; i < w * h; i++) {
    if (!e.mask[i]) continue;
    pixels.data.set([r, gr, b, 120], 4 * i);
  }
  g.putImageData(pixels, 0, 0);
  e.overlay = c;
  e.overlayVersion = e.maskVersion;
  return c;
}

function rgb(hex) {
  return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
}

function stamp(e, x, y, radius, value) {
  const [w, h] = S.size;
  const r2 = radius * radius;
  const x0 = Math.max(0, Math.floor(x - radius)), x1 = Math.min(w - 1, Math.ceil(x + radius));
  const y0 = Math.max(0, Math.floor(y - radius)), y1 = Math.min(h - 1, Math.ceil(y + radius));
  for (let py = y0; py <= y1; py++) {
    for (let px = x0; px <= x1; px++) {
      const dx = px + 0.5 - x, dy = py + 0.5 - y;
      if (dx * dx + dy * dy <= r2) e.mask[py * w + px] = value;
    }
  }
  e.maskVersion++;
}

function strokeTo(e, from, to, radius, value) {
  const distance = Math.hypot(to[0] - from[0], to[1] - from[1]);
  const n = Math.max(1, Math.ceil(distance / Math.max(0.5, radius / 2)));
  for (let i = 1; i <= n; i++) {
    stamp(e, from[0] + ((to[0] - from[0]) * i) / n, from[1] + ((to[1] - from[1]) * i) / n, radius, value);
  }
}

// ---------- the layout the page sends ----------

function numberOr(raw) {
  const text = String(raw).trim();
  if (text === "") return undefined;
  const n = Number(text);
  return Number.isFinite(n) ? n : text;
}

function seedValue() {
  const parts = $("seeds").value.split(/[\s,]+/).filter(Boolean);
  if (!parts.length) return undefined;
  const values = parts.map((p) => (/^\d+$/.test(p) ? Number(p) : p));
  return values.length === 1 ? values[0] : values;
}

function entityTokensValue() {
  const text = $("entity_tokens").value.trim();
  return /^\d+$/.test(text) ? Number(text) : text || undefined;
}

function loraRows() {
  return [...document.querySelectorAll("#loras .lora")].map((row) => {
    const spec = { path: row.querySelector(".path").value.trim() };
    const file = row.querySelector(".file").value.trim();
    if (file) spec.file = file;
    spec.scale = numberOr(row.querySelector(".scale").value) ?? 1;
    return spec;
  });
}

function entityData(e) {
  const data = { prompt: e.prompt };
  if (e.kind === "box") data.box = e.box;
  else if (e.kind === "polygon") data.polygon = e.polygon;
  else if (e.kind === "mask") data.mask = maskDataUrl(e);
  if (e.loras.length) data.loras = e.loras;
  return data;
}

function layoutData() {
  const data = {};
  if (S.mode === "generate") data.size = [numberOr($("width").value), numberOr($("height").value)];
  data.prompt = $("prompt").value;
  data.negative_prompt = $("negative_prompt").value;
  const seed = seedValue();
  if (seed !== undefined) data.seed = seed;
  for (const key of ["steps", "cfg", "guidance"]) {
    const value = numberOr($(key).value);
    if (value !== undefined) data[key] = value;
  }
  data.schedule = $("schedule").value;
  const tokens = entityTokensValue();
  if (tokens !== undefined) data.entity_tokens = tokens;
  data.attention = $("attention").value;
  data.regions_on_negative = $("regions_on_negative").checked;
  const loras = loraRows();
  if (loras.length) data.loras = loras;
  if (S.sequenceLength !== undefined) data.max_sequence_length = S.sequenceLength;
  if (S.mode === "inpaint") {
    data.fusion = $("fusion").value;
    for (const key of ["dilate", "feather"]) {
      const value = numberOr($(key).value);
      if (value !== undefined) data[key] = value;
    }
  }
  data.entities = entities().map(entityData);
  return data;
}

function requestBody(extra) {
  return { mode: S.mode, layout: layoutData(), image: S.image ? S.image.id : null, ...extra };
}

// ---------- checking (token cells, warnings, errors) ----------

let checkTimer = null;

function scheduleCheck() {
  S.checking = true;
  clearTimeout(checkTimer);
  checkTimer = setTimeout(runCheck, 120);
}

async function runCheck() {
  if (S.mode === "inpaint" && !S.image) {
    S.check = null;
    S.checking = false;
    showProblems(null, []);
    draw();
    return;
  }
  const seq = ++S.checkSeq;
  const result = await api("/api/check", requestBody());
  if (seq !== S.checkSeq) return; // a newer check is on its way
  if (result.failed) {
    S.error = result;
    S.check = null;
    showProblems(result, []);
  } else {
    S.error = null;
    S.check = result;
    showProblems(null, result.warnings);
  }
  S.checking = false;
  draw();
}

function showProblems(error, warnings) {
  for (const el of document.querySelectorAll(".entity .message, .entity .warning")) el.textContent = "";
  $("settings-message").textContent = "";
  $("canvas-message").textContent = "";
  for (const el of document.querySelectorAll(".invalid")) el.classList.remove("invalid");
  const list = $("warnings");
  list.textContent = "";
  for (const w of warnings) {
    const li = document.createElement("li");
    li.textContent = `${w.field}: ${w.message}`;
    list.append(li);
    const card = entityCard(w.field);
    if (card) card.querySelector(".warning").textContent = w.message;
  }
  if (!error) return;
  const card = entityCard(error.field || "");
  if (card) {
    card.querySelector(".message").textContent = error.message;
    return;
  }
  const key = (error.field || "").split(/[.[]/)[0];
  const field = document.querySelector(`[data-field="${key}"]`);
  if (field) {
    field.classList.add("invalid");
    $("settings-message").textContent = error.message;
  } else {
    $("canvas-message").textContent = error.message;
  }
}

function entityCard(field) {
  const match = /^entities\[(\d+)\]/.exec(field);
  return match ? document.querySelectorAll("#entities .entity")[Number(match[1])] || null : null;
}

// ---------- the entity list ----------

function kindLabel(e) {
  if (e.kind === "box") return "box";
  if (e.kind === "polygon") return `polygon, ${e.polygon.length} points`;
  if (e.kind === "mask") return "painted / mask";
  return "no region: draw one";
}

function renderEntities() {
  const list = $("entities");
  list.textContent = "";
  entities().forEach((e, i) => list.append(entityElement(e, i)));
  updateUndoButtons();
}

function button(label, title, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.title = title;
  b.addEventListener("click", (event) => {
    event.stopPropagation();
    action();
  });
  return b;
}

function entityElement(e, i) {
  const card = document.createElement("div");
  card.className = "entity" + (i === doc().selected ? " selected" : "");
  card.style.setProperty("--colour", e.color);
  card.addEventListener("click", () => select(i));

  const head = document.createElement("div");
  head.className = "head";
  const colour = document.createElement("input");
  colour.type = "color";
  colour.value = e.color;
  colour.title = "colour on the canvas";
  colour.addEventListener("input", () => {
    e.color = colour.value;
    e.autoColour = false;
    e.maskVersion++;
    card.style.setProperty("--colour", e.color);
    draw();
  });
  const number = document.createElement("span");
  number.textContent = `${i + 1}`;
  const prompt = document.createElement("input");
  prompt.type = "text";
  prompt.className = "prompt";
  prompt.placeholder = "entity prompt";
  prompt.value = e.prompt;
  let typed = false; // one undo step per visit to the field
  prompt.addEventListener("focus", () => { typed = false; });
  prompt.addEventListener("input", () => {
    if (!typed) pushUndo();
    typed = true;
    e.prompt = prompt.value;
    if (recolour(e)) {
      colour.value = e.color;
      card.style.setProperty("--colour", e.color);
      draw();
    }
    scheduleCheck();
  });
  head.append(colour, number, prompt);

  const meta = document.createElement("div");
  meta.className = "meta";
  const kind = document.createElement("span");
  kind.className = "kind";
  kind.textContent = kindLabel(e);
  const maskInput = document.createElement("input");
  maskInput.type = "file";
  maskInput.accept = "image/png";
  maskInput.hidden = true;
  maskInput.addEventListener("change", () => uploadMask(i, maskInput.files[0]));
  const maskLabel = document.createElement("label");
  maskLabel.className = "button";
  maskLabel.title = "a mask PNG: white = region";
  maskLabel.textContent = "mask…";
  maskLabel.append(maskInput);
  meta.append(kind,
    button("↑", "move up", () => move(i, -1)),
    button("↓", "move down", () => move(i, 1)),
    button("dup", "duplicate", () => duplicate(i)),
    button("clear", "clear the region", () => clearRegion(i)),
    maskLabel,
    button("✕", "delete", () => remove(i)));
  card.append(head, meta);
  if (S.info.loras.length || e.loras.length) card.append(entityLoraPicker(e));

  if (e.kind === "box") {
    const coords = document.createElement("div");
    coords.className = "meta box-coords";
    ["x1", "y1", "x2", "y2"].forEach((name, k) => {
      const input = document.createElement("input");
      input.type = "number";
      input.className = name;
      input.title = name + " (px)";
      input.value = e.box[k];
      input.style.width = "56px";
      input.addEventListener("change", () => {
        pushUndo();
        e.box[k] = numberOr(input.value) ?? 0;
        changed(false);
      });
      coords.append(input);
    });
    card.append(coords);
  }
  const message = document.createElement("div");
  message.className = "message";
  const warning = document.createElement("div");
  warning.className = "warning";
  card.append(message, warning);
  return card;
}

// A LoRA on this entity only (docs/entity-loras.md), one of the LoRAs the studio was started with.
function entityLoraPicker(e) {
  const line = document.createElement("div");
  line.className = "meta entity-lora";
  const current = e.loras[0];
  const paths = ["", ...S.info.loras];
  if (current && !paths.includes(current.path)) paths.push(current.path); // from a re-opened file
  const pick = document.createElement("select");
  pick.title = "a LoRA on this entity only (one the studio was started with: --lora)";
  for (const path of paths) {
    const option = document.createElement("option");
    option.value = path;
    option.textContent = path ? path.split("/").pop() : "no entity LoRA";
    option.selected = current ? current.path === path : path === "";
    pick.append(option);
  }
  const scale = document.createElement("input");
  scale.type = "number";
  scale.step = "0.05";
  scale.title = "the entity LoRA's scale";
  scale.value = current ? current.scale ?? 1 : 1;
  scale.style.width = "56px";
  const update = () => {
    pushUndo();
    const now = e.loras[0];
    const kept = now && now.path === pick.value ? now : {};
    const first = pick.value ? [{ ...kept, path: pick.value, scale: numberOr(scale.value) ?? 1 }] : [];
    e.loras = [...first, ...e.loras.slice(1)];
    scheduleCheck();
  };
  pick.addEventListener("change", update);
  scale.addEventListener("change", update);
  line.append(pick, scale);
  return line;
}

function refreshBoxInputs(i) {
  const card = document.querySelectorAll("#entities .entity")[i];
  const e = entities()[i];
  if (!card || !e || e.kind !== "box") return;
  ["x1", "y1", "x2", "y2"].forEach((name, k) => {
    const input = card.querySelector("." + name);
    if (input) input.value = e.box[k];
  });
}

function changed(structure) {
  if (structure) renderEntities();
  draw();
  scheduleCheck();
}

function select(i) {
  if (doc().selected === i) return;
  doc().selected = i;
  document.querySelectorAll("#entities .entity").forEach((card, k) => card.classList.toggle("selected", k === i));
  draw();
}

function addEntity(fields) {
  pushUndo();
  entities().push(newEntity(fields));
  doc().selected = entities().length - 1;
  changed(true);
  return entities()[doc().selected];
}

function move(i, by) {
  const j = i + by;
  const list = entities();
  if (j < 0 || j >= list.length) return;
  pushUndo();
  [list[i], list[j]] = [list[j], list[i]];
  doc().selected = j;
  changed(true);
}

function duplicate(i) {
  pushUndo();
  const copy = { ...copyEntity(entities()[i]), uid: S.uid++, maskVersion: 1, overlay: null, dataUrl: null };
  if (copy.autoColour) copy.color = nextColour(copy.prompt);
  entities().splice(i + 1, 0, copy);
  doc().selected = i + 1;
  changed(true);
}

function remove(i) {
  pushUndo();
  entities().splice(i, 1);
  doc().selected = Math.min(doc().selected, entities().length - 1);
  changed(true);
}

function clearRegion(i) {
  pushUndo();
  Object.assign(entities()[i], { kind: null, box: null, polygon: null, mask: null });
  changed(true);
}

async function uploadMask(i, file) {
  if (!file) return;
  const url = URL.createObjectURL(file);
  try {
    const mask = await maskFromImage(url);
    pushUndo();
    Object.assign(entities()[i], { kind: "mask", box: null, polygon: null, mask, maskVersion: Date.now() });
    changed(true);
  } catch (error) {
    notice(`${file.name}: ${error.message}`, true);
  } finally {
    URL.revokeObjectURL(url);
  }
}

// The entity a new region goes to: the selected one while it has no region (or, for paint, is painted),
// else a new entity.
function regionTarget(kind) {
  const e = entities()[doc().selected];
  if (e && (e.kind === null || (kind === "mask" && e.kind === "mask"))) {
    pushUndo();
    return e;
  }
  return addEntity({});
}

// ---------- drawing the canvas ----------

function scale() {
  const [w, h] = S.size;
  return canvas.width / w || DISPLAY / Math.max(w, h);
}

function resizeCanvas() {
  const [w, h] = S.size;
  const s = DISPLAY / Math.max(w, h);
  canvas.width = Math.round(w * s);
  canvas.height = Math.round(h * s);
}

function draw() {
  const s = scale();
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (S.mode === "inpaint" && S.image && S.image.img.complete) {
    ctx.drawImage(S.image.img, 0, 0, canvas.width, canvas.height);
  } else {
    ctx.fillStyle = "#fafaf7";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
  }
  if (S.mode === "inpaint" && !S.image) {
    ctx.fillStyle = "#555";
    ctx.font = "16px system-ui";
    ctx.fillText("load an image to repaint (Load image…, or drop one here)", 20, 30);
    return;
  }
  if ($("show-cells").checked && S.check) drawCells(s);
  entities().forEach((e, i) => drawRegion(e, i === doc().selected, s));
  entities().forEach((e, i) => drawNumber(e, i, s));
  drawDraft(s);
  if (S.pointer && (S.tool === "brush" || S.tool === "erase")) {
    ctx.strokeStyle = "#000";
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.arc(S.pointer[0] * s, S.pointer[1] * s, (Number($("brush-size").value) / 2) * s, 0, 2 * Math.PI);
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

function drawCells(s) {
  const [gw, gh] = S.check.grid;
  const cw = (S.size[0] / gw) * s, ch = (S.size[1] / gh) * s;
  S.check.cells.forEach((cells, i) => {
    const e = entities()[i];
    if (!e) return;
    const [r, g, b] = rgb(e.color);
    ctx.fillStyle = `rgba(${r},${g},${b},0.22)`;
    for (const cell of cells) ctx.fillRect((cell % gw) * cw, Math.floor(cell / gw) * ch, cw, ch);
  });
  ctx.strokeStyle = "rgba(0,0,0,0.12)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let x = 0; x <= gw; x++) {
    ctx.moveTo(Math.round(x * cw) + 0.5, 0);
    ctx.lineTo(Math.round(x * cw) + 0.5, canvas.height);
  }
  for (let y = 0; y <= gh; y++) {
    ctx.moveTo(0, Math.round(y * ch) + 0.5);
    ctx.lineTo(canvas.width, Math.round(y * ch) + 0.5);
  }
  ctx.stroke();
}

function drawRegion(e, selected, s) {
  const [r, g, b] = rgb(e.color);
  ctx.lineWidth = selected ? 3 : 2;
  ctx.strokeStyle = e.color;
  ctx.fillStyle = `rgba(${r},${g},${b},0.15)`;
  if (e.kind === "box") {
    const [x1, y1, x2, y2] = e.box;
    ctx.fillRect(x1 * s, y1 * s, (x2 - x1) * s, (y2 - y1) * s);
    ctx.strokeRect(x1 * s, y1 * s, (x2 - x1) * s, (y2 - y1) * s);
    if (selected) [[x1, y1], [x2, y1], [x1, y2], [x2, y2]].forEach(([x, y]) => handle(x * s, y * s));
  } else if (e.kind === "polygon") {
    ctx.beginPath();
    e.polygon.forEach(([x, y], k) => (k ? ctx.lineTo(x * s, y * s) : ctx.moveTo(x * s, y * s)));
    ctx.closePath();
    ctx.fill();
    ctx.stroke();
    if (selected) e.polygon.forEach(([x, y]) => handle(x * s, y * s));
  } else if (e.kind === "mask") {
    ctx.drawImage(maskOverlay(e), 0, 0, canvas.width, canvas.height);
  }
}

// The entity's number at the top-left corner of its region, as in the entity list.
function drawNumber(e, i, s) {
  const corner = regionCorner(e);
  if (!corner) return;
  const text = String(i + 1);
  ctx.font = "bold 12px system-ui, sans-serif";
  const w = ctx.measureText(text).width + 6;
  const x = Math.min(Math.max(0, corner[0] * s), canvas.width - w), y = Math.min(Math.max(0, corner[1] * s), canvas.height - 15);
  ctx.fillStyle = e.color;
  ctx.fillRect(x, y, w, 15);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x + 3, y + 12);
}

function regionCorner(e) {
  if (e.kind === "box") return [e.box[0], e.box[1]];
  if (e.kind === "polygon") return [Math.min(...e.polygon.map((p) => p[0])), Math.min(...e.polygon.map((p) => p[1]))];
  if (e.kind === "mask") {
    if (e.cornerVersion !== e.maskVersion) {
      const [w] = S.size;
      const first = e.mask.indexOf(1);
      let left = Infinity;
      for (let i = first; i >= 0 && i < e.mask.length; i++) if (e.mask[i] && i % w < left) left = i % w;
      e.corner = first < 0 ? null : [left, Math.floor(first / w)];
      e.cornerVersion = e.maskVersion;
    }
    return e.corner;
  }
  return null;
}

function handle(x, y) {
  ctx.fillStyle = "#fff";
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 1;
  ctx.fillRect(x - 4, y - 4, 8, 8);
  ctx.strokeRect(x - 4, y - 4, 8, 8);
}

function drawDraft(s) {
  const d = S.draft;
  if (!d) return;
  ctx.strokeStyle = "#000";
  ctx.setLineDash([5, 4]);
  ctx.lineWidth = 1.5;
  if (d.type === "box" && d.end) {
    const [x1, y1, x2, y2] = orderedBox(d.start, d.end);
    ctx.strokeRect(x1 * s, y1 * s, (x2 - x1) * s, (y2 - y1) * s);
  } else if (d.type === "polygon") {
    ctx.beginPath();
    d.points.forEach(([x, y], k) => (k ? ctx.lineTo(x * s, y * s) : ctx.moveTo(x * s, y * s)));
    if (S.pointer) ctx.lineTo(S.pointer[0] * s, S.pointer[1] * s);
    ctx.stroke();
    d.points.forEach(([x, y]) => handle(x * s, y * s));
  }
  ctx.setLineDash([]);
}

// ---------- pointer tools ----------

function layoutPoint(event) {
  const rect = canvas.getBoundingClientRect();
  const [w, h] = S.size;
  const x = ((event.clientX - rect.left) / rect.width) * w;
  const y = ((event.clientY - rect.top) / rect.height) * h;
  return [Math.min(w, Math.max(0, x)), Math.min(h, Math.max(0, y))];
}

const snap = (v) => Math.round(v);

function orderedBox(a, b) {
  return [snap(Math.min(a[0], b[0])), snap(Math.min(a[1], b[1])), snap(Math.max(a[0], b[0])),
          snap(Math.max(a[1], b[1]))];
}

function near(a, b) {
  const s = scale();
  return Math.hypot((a[0] - b[0]) * s, (a[1] - b[1]) * s) <= HANDLE;
}

function insidePolygon(points, [x, y]) {
  let inside = false;
  for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
    const [xi, yi] = points[i], [xj, yj] = points[j];
    if ((yi > y) !== (yj > y) && x < xi + ((y - yi) * (xj - xi)) / (yj - yi)) inside = !inside;
  }
  return inside;
}

function hit(e, p) {
  if (e.kind === "box") return p[0] >= e.box[0] && p[0] <= e.box[2] && p[1] >= e.box[1] && p[1] <= e.box[3];
  if (e.kind === "polygon") return insidePolygon(e.polygon, p);
  if (e.kind === "mask") {
    const [w] = S.size;
    return e.mask[Math.floor(p[1]) * w + Math.floor(p[0])] === 1;
  }
  return false;
}

function grab(p) {
  const list = entities();
  const selected = list[doc().selected];
  if (selected && selected.kind === "box") {
    const [x1, y1, x2, y2] = selected.box;
    const corners = [[x1, y1, 0, 1], [x2, y1, 2, 1], [x1, y2, 0, 3], [x2, y2, 2, 3]];
    const corner = corners.find(([x, y]) => near(p, [x, y]));
    if (corner) return { type: "resize", index: doc().selected, xi: corner[2], yi: corner[3] };
  }
  if (selected && selected.kind === "polygon") {
    const vertex = selected.polygon.findIndex((q) => near(p, q));
    if (vertex >= 0) return { type: "vertex", index: doc().selected, vertex };
  }
  // the selected entity first, then the topmost (last drawn)
  const order = [doc().selected, ...[...list.keys()].reverse()].filter((v, n, a) => v >= 0 && a.indexOf(v) === n);
  const j = order.find((k) => hit(list[k], p));
  return j === undefined ? null : { type: "move", index: j, last: p };
}

function shiftMask(e, dx, dy) {
  const [w, h] = S.size;
  const shifted = new Uint8Array(w * h);
  for (let y = Math.max(0, dy); y < Math.min(h, h + dy); y++) {
    shifted.set(e.mask.subarray((y - dy) * w + Math.max(0, -dx), (y - dy) * w + Math.min(w, w - dx)),
                y * w + Math.max(0, dx));
  }
  e.mask = shifted;
  e.maskVersion++;
}

canvas.addEventListener("pointerdown", (event) => {
  if (S.mode === "inpaint" && !S.image) return;
  canvas.setPointerCapture(event.pointerId);
  const p = layoutPoint(event);
  if (S.tool === "box") {
    S.draft = { type: "box", start: p, end: null };
  } else if (S.tool === "polygon") {
    polygonClick(p);
  } else if (S.tool === "brush" || S.tool === "erase") {
    startStroke(p);
  } else {
    const g = grab(p);
    if (g) {
      select(g.index);
      S.draft = { ...g, moved: false };
    }
  }
  draw();
});

canvas.addEventListener("pointermove", (event) => {
  const p = layoutPoint(event);
  S.pointer = p;
  const d = S.draft;
  if (d && d.type === "box") d.end = p;
  else if (d && d.type === "stroke") {
    strokeTo(d.entity, d.last, p, Number($("brush-size").value) / 2, d.value);
    d.last = p;
  } else if (d && ["move", "resize", "vertex"].includes(d.type)) dragTo(d, p);
  draw();
});

canvas.addEventListener("pointerleave", () => {
  S.pointer = null;
  draw();
});

canvas.addEventListener("pointerup", (event) => {
  const d = S.draft;
  if (!d) return;
  const p = layoutPoint(event);
  if (d.type === "box") {
    S.draft = null;
    const box = orderedBox(d.start, d.end || p);
    if (box[2] - box[0] >= 1 && box[3] - box[1] >= 1) {
      const e = regionTarget("box");
      Object.assign(e, { kind: "box", box, polygon: null, mask: null });
      changed(true);
    }
  } else if (d.type === "stroke") {
    S.draft = null;
    changed(d.created);
    if (!d.created) refreshKind(d.entity);
  } else if (d.type !== "polygon") {
    S.draft = null;
    if (d.moved) changed(false);
  }
  draw();
});

canvas.addEventListener("dblclick", () => {
  if (S.draft && S.draft.type === "polygon") closePolygon();
});

function refreshKind(e) {
  const i = entities().indexOf(e);
  const card = document.querySelectorAll("#entities .entity")[i];
  if (card) card.querySelector(".kind").textContent = kindLabel(e);
}

function dragTo(d, p) {
  const e = entities()[d.index];
  if (!d.moved) {
    pushUndo();
    d.moved = true;
  }
  const [w, h] = S.size;
  if (d.type === "move") {
    const dx = p[0] - d.last[0], dy = p[1] - d.last[1];
    if (e.kind === "box") {
      const bx = Math.min(Math.max(snap(dx), -e.box[0]), w - e.box[2]);
      const by = Math.min(Math.max(snap(dy), -e.box[1]), h - e.box[3]);
      e.box = [e.box[0] + bx, e.box[1] + by, e.box[2] + bx, e.box[3] + by];
      d.last = [d.last[0] + bx, d.last[1] + by];
    } else if (e.kind === "polygon") {
      const xs = e.polygon.map((q) => q[0]), ys = e.polygon.map((q) => q[1]);
      const bx = Math.min(Math.max(snap(dx), -Math.min(...xs)), w - Math.max(...xs));
      const by = Math.min(Math.max(snap(dy), -Math.min(...ys)), h - Math.max(...ys));
      e.polygon = e.polygon.map(([x, y]) => [x + bx, y + by]);
      d.last = [d.last[0] + bx, d.last[1] + by];
    } else if (e.kind === "mask" && (snap(dx) || snap(dy))) {
      shiftMask(e, snap(dx), snap(dy));
      d.last = [d.last[0] + snap(dx), d.last[1] + snap(dy)];
    }
    refreshBoxInputs(d.index);
  } else if (d.type === "resize") {
    e.box[d.xi] = snap(p[0]);
    e.box[d.yi] = snap(p[1]);
    e.box = orderedBox([e.box[0], e.box[1]], [e.box[2], e.box[3]]);
    if (d.xi === 0 && e.box[0] !== snap(p[0])) d.xi = 2;
    else if (d.xi === 2 && e.box[2] !== snap(p[0])) d.xi = 0;
    if (d.yi === 1 && e.box[1] !== snap(p[1])) d.yi = 3;
    else if (d.yi === 3 && e.box[3] !== snap(p[1])) d.yi = 1;
    refreshBoxInputs(d.index);
  } else if (d.type === "vertex") {
    e.polygon[d.vertex] = [snap(p[0]), snap(p[1])];
  }
  scheduleCheck();
}

function polygonClick(p) {
  const point = [snap(p[0]), snap(p[1])];
  if (!S.draft || S.draft.type !== "polygon") S.draft = { type: "polygon", points: [] };
  const points = S.draft.points;
  if (points.length >= 3 && near(point, points[0])) {
    closePolygon();
    return;
  }
  const last = points[points.length - 1];
  if (!last || last[0] !== point[0] || last[1] !== point[1]) points.push(point);
}

function closePolygon() {
  const points = S.draft.points;
  S.draft = null;
  if (points.length < 3) {
    notice("a polygon needs at least 3 points", true);
    draw();
    return;
  }
  const e = regionTarget("polygon");
  Object.assign(e, { kind: "polygon", polygon: points, box: null, mask: null });
  changed(true);
}

function startStroke(p) {
  const radius = Number($("brush-size").value) / 2;
  const value = S.tool === "brush" ? 1 : 0;
  let e = entities()[doc().selected];
  let created = false;
  if (value === 0) {
    if (!e || e.kind !== "mask") {
      notice("select a painted entity to erase from", true);
      return;
    }
    pushUndo();
  } else {
    const before = entities().length;
    e = regionTarget("mask");
    created = entities().length !== before;
    if (e.kind !== "mask") {
      Object.assign(e, { kind: "mask", box: null, polygon: null, mask: new Uint8Array(S.size[0] * S.size[1]) });
      created = true;
    }
  }
  stamp(e, p[0], p[1], radius, value);
  S.draft = { type: "stroke", entity: e, last: p, value, created };
}

// ---------- settings ----------

function setSettings(data) {
  const d = S.info.defaults;
  const value = (key) => (data[key] !== undefined ? data[key] : d[key]);
  $("prompt").value = data.prompt ?? "";
  $("negative_prompt").value = value("negative_prompt");
  if (S.mode === "generate") {
    const size = data.size || d.size;
    $("width").value = size[0];
    $("height").value = size[1];
  }
  S.sequenceLength = data.max_sequence_length; // kept as restored: the page has no field for it
  const seed = data.seed;
  $("seeds").value = seed === undefined || seed === null ? "" : [].concat(seed).join(", ");
  for (const key of ["steps", "cfg", "guidance", "schedule", "attention", "fusion", "dilate", "feather"]) {
    $(key).value = value(key);
  }
  $("entity_tokens").value = value("entity_tokens");
  $("regions_on_negative").checked = Boolean(value("regions_on_negative"));
  $("loras").textContent = "";
  for (const spec of data.loras || []) addLoraRow(spec);
}

function addLoraRow(spec) {
  const row = document.createElement("div");
  row.className = "lora";
  const path = document.createElement("input");
  path.className = "path";
  path.placeholder = "LoRA (--lora file or hub id)";
  path.setAttribute("list", "server-loras");
  path.value = spec.path || "";
  const file = document.createElement("input");
  file.className = "file";
  file.placeholder = "file";
  file.value = spec.file || "";
  const scaleInput = document.createElement("input");
  scaleInput.className = "scale";
  scaleInput.type = "number";
  scaleInput.step = "0.05";
  scaleInput.value = spec.scale ?? 1;
  row.append(path, file, scaleInput, button("✕", "remove", () => {
    row.remove();
    scheduleCheck();
  }));
  row.addEventListener("input", scheduleCheck);
  $("loras").append(row);
}

function applySize() {
  if (S.mode !== "generate") return;
  const w = Number($("width").value), h = Number($("height").value);
  if (!(w > 0 && h > 0 && w <= 4096 && h <= 4096)) return scheduleCheck();
  if (w === S.size[0] && h === S.size[1]) return scheduleCheck();
  scaleRegions(entities(), S.size, [w, h]);
  S.size = [w, h];
  resizeCanvas();
  changed(true);
}

// Put a layout (as the server sends it) on the canvas: settings and entities with their regions.
async function applyLayout(data, kind) {
  const mode = kind === "edits" ? "inpaint" : "generate";
  if (mode !== S.mode) setMode(mode);
  pushUndo();
  setSettings(data);
  if (mode === "generate") {
    S.size = data.size || S.info.defaults.size;
    resizeCanvas();
  }
  const list = [];
  doc().entities = list;
  for (const item of data.entities || []) {
    const e = newEntity({ prompt: item.prompt, loras: item.loras || [] });
    if (item.box) Object.assign(e, { kind: "box", box: [...item.box] });
    else if (item.polygon) Object.assign(e, { kind: "polygon", polygon: item.polygon.map((p) => [...p]) });
    else if (item.mask) Object.assign(e, { kind: "mask", mask: await maskFromImage(item.mask), maskVersion: 1 });
    list.push(e);
  }
  if (data.units && data.units !== "px") toPixels(list, data.units);
  doc().selected = list.length ? 0 : -1;
  changed(true);
}

// Regions drawn on a canvas of size `from` moved to the same place on a canvas of size `to`: boxes and polygons
// scaled (and rounded to whole pixels), painted masks resampled with nearest sampling.
function scaleRegions(list, from, to) {
  const [sx, sy] = [to[0] / from[0], to[1] / from[1]];
  for (const e of list) {
    if (e.kind === "box") e.box = [e.box[0] * sx, e.box[1] * sy, e.box[2] * sx, e.box[3] * sy].map(Math.round);
    if (e.kind === "polygon") e.polygon = e.polygon.map(([x, y]) => [Math.round(x * sx), Math.round(y * sy)]);
    if (e.kind === "mask") {
      const mask = new Uint8Array(to[0] * to[1]);
      for (let y = 0; y < to[1]; y++) {
        const row = Math.min(from[1] - 1, Math.floor((y + 0.5) / sy)) * from[0];
        for (let x = 0; x < to[0]; x++) mask[y * to[0] + x] = e.mask[row + Math.min(from[0] - 1, Math.floor((x + 0.5) / sx))];
      }
      Object.assign(e, { mask, maskVersion: e.maskVersion + 1 });
    }
  }
}

function toPixels(list, units) {
  const [w, h] = S.size;
  const [sx, sy] = units === "fraction" ? [w, h] : [w / 1000, h / 1000];
  for (const e of list) {
    if (e.box) e.box = [e.box[0] * sx, e.box[1] * sy, e.box[2] * sx, e.box[3] * sy];
    if (e.polygon) e.polygon = e.polygon.map(([x, y]) => [x * sx, y * sy]);
  }
}

// ---------- modes and the inpaint source ----------

function setMode(mode) {
  S.mode = mode;
  S.draft = null;
  document.body.classList.toggle("inpaint", mode === "inpaint");
  $("mode-generate").classList.toggle("active", mode === "generate");
  $("mode-inpaint").classList.toggle("active", mode === "inpaint");
  $("inpaint-source").hidden = mode !== "inpaint";
  if (mode === "inpaint") {
    S.size = S.image ? S.image.size : S.size;
  } else {
    S.size = [Number($("width").value) || S.info.defaults.size[0], Number($("height").value) || S.info.defaults.size[1]];
  }
  resizeCanvas();
  changed(true);
}

async function useSourceImage(info) {
  const img = new Image();
  await new Promise((resolve) => {
    img.onload = resolve;
    img.onerror = resolve;
    img.src = `/api/images/${info.image}.png`;
  });
  const sameSize = S.image && S.image.size[0] === info.size[0] && S.image.size[1] === info.size[1];
  S.image = { id: info.image, name: info.name, size: info.size, img };
  $("source-name").textContent = `${info.name} (${info.size[0]}x${info.size[1]})`;
  if (!sameSize) {
    for (const e of S.docs.inpaint.entities.filter((x) => x.kind === "mask")) Object.assign(e, { kind: null, mask: null });
  }
  if (S.mode === "inpaint") {
    S.size = info.size;
    resizeCanvas();
    changed(true);
  }
}

async function loadSource(file) {
  const result = await api("/api/image", { files: [await fileToBase64(file)] });
  if (result.failed) return notice(result.message, true);
  if (S.mode !== "inpaint") setMode("inpaint");
  await useSourceImage(result);
  notice("");
}

// ---------- restoring from files ----------

async function restoreFiles(fileList) {
  const files = [...fileList]; // the input's list empties when the input is reset for the next choice
  if (!files.length) return;
  const payload = await Promise.all(files.map(fileToBase64));
  const result = await api("/api/restore", { files: payload, mode: S.mode, image: S.image ? S.image.id : null });
  if (result.failed) {
    const plain = S.mode === "inpaint" && files.length === 1 && !/\.ya?ml$/i.test(files[0].name)
      && result.field === "(metadata)";
    if (plain) return loadSource(files[0]); // an ordinary image: the one to repaint
    return notice(result.message, true);
  }
  await applyLayout(result.layout, result.kind);
  notice(result.notes.length ? result.notes.join("; ") : `restored from ${files[0].name}`);
}

async function colourRegions(file) {
  const result = await api("/api/colours", { files: [await fileToBase64(file)] });
  if (result.failed) return notice(result.message, true);
  pushUndo();
  for (const region of result.regions) {
    const e = newEntity({ prompt: "", kind: "mask", mask: await maskFromImage(region.mask), maskVersion: 1 });
    Object.assign(e, { color: region.color, autoColour: false }); // the file's own colour
    entities().push(e);
  }
  doc().selected = entities().length - 1;
  changed(true);
  notice(`${result.regions.length} regions from ${file.name}: give each a prompt`);
}

function notice(text, isError) {
  const el = $("notice");
  el.textContent = text || "";
  el.classList.toggle("error", Boolean(isError));
}

// ---------- generating ----------

async function generate() {
  const job = await api("/api/generate", requestBody());
  if (job.failed) {
    showProblems(job, S.check ? S.check.warnings : []);
    $("status").textContent = job.message;
    return;
  }
  track(job);
}

// Follow a job: its progress streams from the server as events (the state each time it changes); should the
// stream fail, the page asks for the state instead until the job has finished.
function track(job) {
  S.jobs.add(job.id);
  $("cancel").disabled = false;
  let finished = false;
  const update = (state) => {
    if (finished) return;
    showJob(state);
    if (["queued", "running"].includes(state.state)) return;
    finished = true;
    events.close();
    S.jobs.delete(job.id);
    $("cancel").disabled = S.jobs.size === 0;
    finish(job, state);
  };
  const poll = async () => {
    const state = await api(`/api/jobs/${job.id}`);
    if (state.failed) {
      finished = true;
      S.jobs.delete(job.id);
      $("status").textContent = state.message;
      return;
    }
    update(state);
    if (!finished) setTimeout(poll, 500);
  };
  const events = new EventSource(`/api/jobs/${job.id}/events`);
  events.onmessage = (event) => update(JSON.parse(event.data));
  events.onerror = () => {
    events.close();
    if (!finished) poll();
  };
}

function finish(job, state) {
  // a cancelled or failed job keeps the images it had already finished
  if (state.kind !== "attention") state.results.forEach(addResult);
  if (state.kind === "attention" && state.state === "done") showAttention(job.forResult, state.results[0]);
}

function showJob(state) {
  const total = state.steps * state.images;
  const done = state.state === "done" ? total : state.image * state.steps + state.step;
  $("progress").max = total || 1;
  $("progress").value = done;
  const what = state.kind === "attention" ? "attention maps" : state.kind;
  const text = {
    queued: `${what}: waiting (${state.waiting} ahead)`,
    running: `${what}: image ${state.image + 1} of ${state.images}, step ${state.step} of ${state.steps}`,
    done: `${what}: done`,
    cancelled: `${what}: cancelled`,
    failed: `${what} failed: ${state.error}`,
  }[state.state];
  $("status").textContent = text;
}

async function cancel() {
  for (const id of S.jobs) await api(`/api/jobs/${id}/cancel`, {});
}

function link(text, href, download) {
  const a = document.createElement("a");
  a.textContent = text;
  a.href = href;
  a.className = "button";
  if (download) a.download = download;
  return a;
}

function addResult(result) {
  const item = document.createElement("div");
  item.className = "result";
  item.dataset.id = result.id;
  item.dataset.seed = result.seed;
  const img = document.createElement("img");
  img.src = `/api/results/${result.id}.png`;
  img.alt = `seed ${result.seed}`;
  const caption = document.createElement("div");
  caption.className = "seed";
  caption.textContent = `seed ${result.seed}`;
  const row = document.createElement("div");
  row.className = "row";
  row.append(link("PNG", `/api/results/${result.id}.png?download`, `${result.file}.png`),
             link("YAML", `/api/results/${result.id}.yaml?download`, `${result.file}.yaml`),
             button("Restore", "put this image's layout on the canvas", () => restoreResult(result)));
  if (result.attention) {
    // a model without attention maps keeps the button: the server's refusal says why, next to the canvas
    const title = S.info.no_attention_maps || "where each entity prompt looks (one extra sampling pass)";
    row.append(button("Attention", title, async () => {
      const job = await api("/api/attention", { result: result.id });
      if (job.failed) return notice(job.message, true);
      track({ ...job, forResult: result.id });
    }));
  }
  item.append(img, caption, row);
  $("gallery").prepend(item);
}

async function restoreResult(result) {
  const response = await fetch(`/api/results/${result.id}.png`);
  const blob = await response.blob();
  await restoreFiles([new File([blob], `${result.file}.png`, { type: "image/png" })]);
}

function showAttention(resultId, attention) {
  const item = document.querySelector(`.result[data-id="${resultId}"]`);
  if (!item || !attention) return;
  const img = document.createElement("img");
  img.className = "attention-grid";
  img.src = `/api/results/${attention.id}.png`;
  img.alt = "attention maps";
  img.dataset.id = attention.id;
  item.append(img);
}

// ---------- saving ----------

async function saveYaml() {
  const result = await api("/api/yaml", requestBody());
  if (result.failed) {
    showProblems(result, []);
    return notice(result.message, true);
  }
  const url = URL.createObjectURL(new Blob([result.yaml], { type: "application/yaml" }));
  const a = link("", url, S.mode === "inpaint" ? "edits.yaml" : "layout.yaml");
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---------- chat ----------

async function sendChat(event) {
  event.preventDefault();
  const input = $("chat-input");
  const message = input.value.trim();
  if (!message) return;
  input.value = "";
  logChat("you", message);
  const body = { ...requestBody(), message, size: [Number($("width").value), Number($("height").value)] };
  const result = await api("/api/chat", body);
  if (result.failed) return logChat("error", result.message);
  logChat("eligen", result.reply + (result.notes.length ? ` (repaired: ${result.notes.join("; ")})` : ""));
  await applyLayout(result.layout, result.kind);
}

function logChat(who, text) {
  const line = document.createElement("div");
  line.className = who;
  line.textContent = `${who}: ${text}`;
  $("chat-log").append(line);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
}

// ---------- start ----------

function setTool(tool) {
  if (S.draft && S.draft.type === "polygon" && tool !== "polygon") S.draft = null;
  S.tool = tool;
  document.querySelectorAll("#tools [data-tool]").forEach((b) => b.classList.toggle("active", b.dataset.tool === tool));
  draw();
}

function wire() {
  document.querySelectorAll("#tools [data-tool]").forEach((b) => b.addEventListener("click", () => setTool(b.dataset.tool)));
  $("add-entity").addEventListener("click", () => addEntity({}));
  $("undo").addEventListener("click", undo);
  $("redo").addEventListener("click", redo);
  $("generate").addEventListener("click", generate);
  $("cancel").addEventListener("click", cancel);
  $("save-yaml").addEventListener("click", saveYaml);
  $("add-lora").addEventListener("click", () => addLoraRow({}));
  $("mode-generate").addEventListener("click", () => setMode("generate"));
  $("mode-inpaint").addEventListener("click", () => setMode("inpaint"));
  $("show-cells").addEventListener("change", draw);
  $("width").addEventListener("change", applySize);
  $("height").addEventListener("change", applySize);
  for (const id of ["prompt", "negative_prompt", "seeds", "steps", "cfg", "guidance", "entity_tokens", "dilate",
                    "feather"]) {
    $(id).addEventListener("input", scheduleCheck);
  }
  for (const id of ["schedule", "attention", "fusion", "regions_on_negative"]) $(id).addEventListener("change", scheduleCheck);
  $("open-files").addEventListener("change", (event) => {
    restoreFiles(event.target.files);
    event.target.value = "";
  });
  $("source-file").addEventListener("change", (event) => {
    if (event.target.files[0]) loadSource(event.target.files[0]);
    event.target.value = "";
  });
  $("colour-png").addEventListener("change", (event) => {
    if (event.target.files[0]) colourRegions(event.target.files[0]);
    event.target.value = "";
  });
  $("chat-form").addEventListener("submit", sendChat);
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    restoreFiles(event.dataTransfer.files);
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z" && !typing) {
      event.preventDefault();
      return event.shiftKey ? redo() : undo();
    }
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "y" && !typing) return redo();
    if (typing) return;
    if (event.key === "Enter" && S.draft && S.draft.type === "polygon") return closePolygon();
    if (event.key === "Escape") {
      S.draft = null;
      return draw();
    }
    if ((event.key === "Delete" || event.key === "Backspace") && doc().selected >= 0) return remove(doc().selected);
    const tool = { v: "select", b: "box", p: "polygon", r: "brush", e: "erase" }[event.key.toLowerCase()];
    if (tool) setTool(tool);
  });
}

async function start() {
  S.info = await api("/api/info");
  $("model").textContent = `model: ${S.info.model}`;
  document.title = `eligen studio: ${S.info.model}`;
  if (S.info.words) $("words").textContent = `This model knows only these words: ${S.info.words.join(", ")}`;
  for (const lora of S.info.loras) {
    const option = document.createElement("option");
    option.value = lora;
    $("server-loras").append(option);
  }
  $("chat-panel").hidden = !S.info.chat;
  S.size = S.info.defaults.size;
  setSettings({});
  wire();
  setTool("box");
  resizeCanvas();
  changed(true);
  const initial = S.info.initial;
  if (initial && initial.image) {
    setMode("inpaint");
    await useSourceImage(initial.image);
  }
  if (initial && initial.layout) await applyLayout(initial.layout, initial.kind);
  document.body.dataset.ready = "1";
}

start();
