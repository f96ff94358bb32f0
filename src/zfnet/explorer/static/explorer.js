// The explorer's page: a view of the JSON API under /api/ (see `zfnet serve --help`).
// Plain JavaScript, no framework and no build step, so the package serves it as it is.
//
// The whole view lives in `state` (image, layer, unit, row, col, view), mirrored in the query
// string: every change goes through go(), which pushes a history entry (browsing the maps with
// the arrow keys replaces it), and refresh() loads only what the change touched. A link to the
// current view is therefore always the page's URL.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

  const STRIP_LIMIT = 24;        // dataset images per page of the strip
  const TILE_MAX = 64;           // a feature map is shown at most this wide (CSS px)
  const POLL_MS = [150, 250, 400, 500];  // job polling: quick at first, then twice a second
  const VIEWS = ["topk", "occlusion", "evolution"];
  const RULES = ["deconvnet", "guided", "gradient"];

  let model = null;              // GET /api/model
  let layers = [];               // GET /api/layers .layers
  const layerByName = new Map();
  let state = { image: null, layer: null, unit: null, row: null, col: null, view: null, seed: null };
  let maps = null;               // GET /api/maps for (state.image, state.layer), once loaded
  let unitInfo = null;           // GET /api/unit for the current unit, once loaded
  let stripOffset = 0;
  let stripTotal = 0;
  let stripItems = [];           // the dataset images on the strip's current page
  const uploads = [];            // images uploaded from this browser: {id, src, name}
  const UPLOADS_KEY = "zfnet-explorer-uploads";  // ... kept in its localStorage over reloads
  const UPLOADS_KEPT = 64;       // as many as the server keeps
  // Every loader takes a ticket; an answer that comes back after a newer request is dropped.
  const tickets = { image: 0, maps: 0, unit: 0, view: 0, strip: 0 };
  let currentJob = null;
  let currentJobKind = null;     // its kind (topk, occlusion, evolution)
  let currentJobUrl = null;      // the view request it computes
  const cancelledHere = new Set();  // the jobs this page cancelled (its Cancel button)
  // This tab's own id, sent with every request: a job that other tabs follow too (a link
  // passed around a class) goes on for them when this one cancels it. getRandomValues, not
  // randomUUID: a server on the network (http://192.168.…) is not a secure context.
  const CLIENT_ID = tabId();
  let serverId = null;           // the model and data the server served this page (its id)
  let staleServer = null;        // why the page stopped: the server now serves another model
  let keyRun = false;            // the last change came from the arrow keys on the maps
  let defaultHint = null;        // the view panel's text before any view is asked for

  // ---------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  /** fetch `path`; resolve {status, body} for 2xx, throw ApiError with the server's one-line
   *  message otherwise. */
  async function api(path, options = {}) {
    if (staleServer) throw new ApiError(staleServer, 0);
    let response;
    try {
      const headers = { ...(options.headers || {}), "X-Client-Id": CLIENT_ID };
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      throw new ApiError("the server does not answer: is `zfnet serve` still running?", 0);
    }
    checkServer(response.headers.get("X-Explorer-Id"));
    const text = await response.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status);
    }
    return { status: response.status, body };
  }

  /** Every answer names the model and data it comes from (the server's id): a server started
   *  again on another model at the same address would mix its maps and pictures with this
   *  page's layers and strip. The page stops there, hides what it shows, and asks for a
   *  reload. */
  function checkServer(id) {
    if (!id || staleServer) return;
    if (serverId === null) {
      serverId = id;
      return;
    }
    if (id === serverId) return;
    staleServer = "the server at this address now serves another model or dataset than the "
      + "one this page shows: reload the page to look at it";
    $("#stale-text").textContent = `This page is out of date: ${staleServer}.`;
    $("#stale").hidden = false;
    $("#error").hidden = true;
    $("#layout").hidden = true;  // the last model's layers and pictures, no longer served
    $("#stale-reload").focus();
    throw new ApiError(staleServer, 0);
  }

  const query = (params) => {
    const q = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value !== null && value !== undefined) q.set(key, String(value));
    }
    return q.toString();
  };

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** The tab's id, the same after a reload (F5): kept in its sessionStorage, so the page before
   *  the reload is not counted as another page following its jobs. The live page takes it out
   *  and puts it back as it goes (pagehide): a tab duplicated from it (which copies the
   *  sessionStorage) gets an id of its own. */
  function tabId() {
    const key = "zfnet-explorer-client";
    let id = null;
    try {
      id = sessionStorage.getItem(key);
      sessionStorage.removeItem(key);
    } catch (err) {
      id = null;  // storage refused (a private mode): a new id on each load
    }
    if (!id || !/^[0-9a-f]{24}$/.test(id)) {
      id = Array.from(crypto.getRandomValues(new Uint8Array(12)),
        (b) => b.toString(16).padStart(2, "0")).join("");
    }
    const keep = (put) => () => {
      try {
        if (put) sessionStorage.setItem(key, id);
        else sessionStorage.removeItem(key);
      } catch (err) { /* not kept: the next load has a new id */ }
    };
    window.addEventListener("pagehide", keep(true));
    window.addEventListener("pageshow", (e) => { if (e.persisted) keep(false)(); });
    return id;
  }

  // ---------------------------------------------------------------- messages

  let focusBeforeError = null;   // where the keyboard was when the error bar appeared

  function showError(message) {
    if (staleServer) return;  // the banner says it: reload
    $("#error-text").textContent = message;
    if ($("#error").hidden && document.activeElement !== document.body) {
      focusBeforeError = document.activeElement;
    }
    $("#error").hidden = false;
  }

  /** The error bar closed by its button or Esc: the keyboard goes back where it was. */
  function dismissError() {
    clearError();
    const back = focusBeforeError;
    focusBeforeError = null;
    if (back && back.isConnected && !back.hidden && !back.disabled) back.focus();
    else $("#maps").focus();
  }

  function clearError() {
    $("#error").hidden = true;
    $("#error-text").textContent = "";
  }

  /** A failed loader: a stale answer says nothing, anything else is shown. */
  function failed(err, ticketName, ticket) {
    if (ticket !== tickets[ticketName]) return;
    showError(err.message);
  }

  // ---------------------------------------------------------------- formatting

  const fmt = (x) => {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e4 || a < 1e-3)) return x.toExponential(2);
    return x.toFixed(a >= 100 ? 1 : 3);
  };
  const size2 = (hw) => (hw ? (hw[0] === hw[1] ? `${hw[0]}` : `${hw[0]}×${hw[1]}`) : "–");
  const grid2 = (hw) => (hw ? `${hw[0]}×${hw[1]}` : "–");
  const percent = (p) => `${(100 * p).toFixed(p >= 0.995 || p < 0.001 ? 0 : 1)}%`;

  /** Show a small image enlarged by a whole factor (crisp pixels), up to `target` CSS px wide. */
  function enlarge(img, target) {
    const apply = () => {
      const w = img.naturalWidth;
      if (!w) return;
      const k = Math.max(1, Math.floor(target / w));
      img.style.width = `${w * k}px`;
    };
    if (img.complete && img.naturalWidth) apply();
    else img.addEventListener("load", apply, { once: true });
  }

  /** Set an image's source; if it fails, call `onFail` (if given) and ask the same URL for
   *  the server's message. */
  function loadImage(img, src, what, onFail = null) {
    img.onerror = async () => {
      if (img.getAttribute("src") !== src) return;
      if (onFail) onFail();
      try {
        await api(src);
        showError(`${what} did not load`);
      } catch (err) {  // the server's message may name the image already
        showError(err.message.includes(what) ? err.message : `${what}: ${err.message}`);
      }
    };
    img.src = src;
  }

  // projections the server refused all the same (400), by URL: the reason is shown again
  // without asking again (a rule undefined through the network is not asked for: `undefined`)
  const refused = new Map();

  /** Why a rule does not run here (the server's one line), in a projection's panel: its
   *  first clause, and the server's option that runs it; the whole message on hover. */
  function explainRule(note, message) {
    const [why] = message.split("; ");
    note.textContent = message.includes("--nonlinear gradient")
      ? `${why}. \`zfnet serve --nonlinear gradient\` takes its gradient.` : why;
    note.title = message;
  }

  /** A projection's panel whose rule is not offered for the unit (`undefined` of /api/unit:
   *  the deconvnet through a GELU gate): the reason in its place, nothing asked for. */
  function ruleUndefined(img, message) {
    const note = img.parentElement.querySelector(".unavailable");
    img.onerror = null;
    img.removeAttribute("src");  // not the last unit's picture
    img.hidden = true;
    explainRule(note, message);
    note.hidden = false;
  }

  /** A projection's panel: its image, or, where the server refuses it all the same, its
   *  reason in the panel, not a broken image. */
  function loadProjection(img, src) {
    const note = img.parentElement.querySelector(".unavailable");
    note.hidden = true;
    img.hidden = false;
    if (refused.has(src)) {  // said again without asking again
      ruleUndefined(img, refused.get(src));
      return;
    }
    img.onerror = async () => {
      if (img.getAttribute("src") !== src) return;
      img.hidden = true;
      note.textContent = "not available";
      note.title = "";
      note.hidden = false;
      try {
        await api(src);
      } catch (err) {
        if (err.status === 400) refused.set(src, err.message);
        if (img.getAttribute("src") !== src) return;
        explainRule(note, err.message);
      }
    };
    img.src = src;
  }

  // ---------------------------------------------------------------- URL state

  function readUrl() {
    const q = new URLSearchParams(window.location.search);
    const problems = [];
    const int = (key) => {
      if (!q.has(key)) return null;
      const v = q.get(key);
      if (/^\d+$/.test(v)) return Number(v);
      problems.push(`${key}=${v} is not a whole number`);
      return null;
    };
    const next = {
      image: q.get("image") || (model && model.default_image) || null,
      layer: q.get("layer") || (model && model.default_layer) || null,
      unit: int("unit"),
      row: int("row"),
      col: int("col"),
      view: q.get("view") || null,
      seed: q.get("seed") || null,  // "one": units go down seeded with 1, not their activation
    };
    if (next.seed !== null && next.seed !== "one") {
      problems.push(`seed=${next.seed} is not known: one (seeded with 1), or none (the activation)`);
      next.seed = null;
    }
    if (q.has("model") && model && q.get("model") !== modelKey()) {
      problems.push(`this link was made for another model or dataset (${q.get("model")}); the server shows ${model.name}`);
    }
    if (next.layer && !layerByName.has(next.layer)) {
      const names = layers.map((l) => l.name);
      const some = names.length > 12 ? `${names.slice(0, 12).join(", ")}, … (${names.length} in all)` : names.join(", ");
      problems.push(`layer ${next.layer} is not a layer of this model; the layers are ${some}`);
      next.layer = model.default_layer;
      next.unit = next.row = next.col = null;
    }
    const layer = layerByName.get(next.layer);
    if (layer && next.unit !== null && next.unit >= layer.maps) {
      problems.push(`unit ${next.unit} is not in ${layer.name}, which has maps 0..${layer.maps - 1}`);
      next.unit = next.row = next.col = null;
    }
    if ((next.row === null) !== (next.col === null)) {  // as the API says it
      const one = next.row !== null ? `row=${next.row} without col` : `col=${next.col} without row`;
      problems.push(`give both row and col, or neither (the map's strongest unit): ${one} is left out`);
    } else if (next.row !== null && !q.has("unit")) {
      problems.push("row and col place a unit: without unit= they are left out");
    }
    if (next.row === null || next.col === null || next.unit === null) next.row = next.col = null;
    if (next.view && !VIEWS.includes(next.view)) {
      problems.push(`view=${next.view} is not one of ${VIEWS.join(", ")}`);
      next.view = null;
    }
    return { next, problems };
  }

  /** How links name the model (and dataset): the server's short id, else its name. */
  const modelKey = () => (model ? model.id || model.name : null);

  function viewUrl(s) {
    // An image id's colon needs no escaping in a query: `image=val:3` reads better in a link.
    return `/?${query({
      model: modelKey(),
      image: s.image, layer: s.layer, unit: s.unit, row: s.row, col: s.col, view: s.view,
      seed: s.seed,
    }).replace(/%3A/g, ":")}`;
  }

  /** Change the view: record it as a new entry of the browser's history (the back button
   *  returns to the previous view), or in place of the current one with `replace`, then load
   *  what changed. */
  function go(patch, { replace = false } = {}) {
    const prev = state;
    state = { ...state, ...patch };
    if (state.unit === null) state.row = state.col = null;
    if (replace) window.history.replaceState(null, "", viewUrl(state));
    else window.history.pushState(null, "", viewUrl(state));
    keyRun = false;
    refresh(prev, state);
  }

  function refresh(prev, s, force = false) {
    const changed = (...keys) => force || keys.some((k) => prev[k] !== s[k]);
    $("#permalink").href = viewUrl(s);
    document.title = `${s.layer || ""}${s.unit !== null ? ` ${unitWord(s.layer)} ${s.unit}` : ""} · ${model.name} · zfnet explorer`;
    markLayer();
    if (changed("image")) {
      loadCurrentImage();
      showStripPageOf(s.image);
      markStrip();
    }
    if (changed("image", "layer")) loadMaps();
    else markSelectedMap();
    if (changed("image", "layer", "unit", "row", "col", "seed")) loadUnit();
    const viewDeps = s.view === "occlusion" ? ["view", "image", "layer", "unit"] : ["view", "layer", "unit"];
    if (changed(...viewDeps)) loadView();
    markTabs();
  }

  // ---------------------------------------------------------------- header and layers

  function renderHeader() {
    $("#model-name").textContent = model.name;
    const [h, w] = model.input.size;
    const parts = [model.kind];
    const mined = model.data && model.data.mined < model.data.images ? `, the top ${model.k} mined over the first ${model.data.mined}` : "";
    parts.push(model.data ? `dataset ${model.data.spec} (${model.data.images} images${mined})` : "no dataset: upload an image");
    parts.push(`input ${h}×${w}×${model.input.channels}`);
    if (model.classes) parts.push(`${model.classes} classes${model.labels ? "" : " (unnamed)"}`);
    if (model.preprocessing) parts.push(model.preprocessing);
    if (model.evolution) parts.push(`epochs ${model.evolution.epochs.join(", ")} kept`);
    $("#model-meta").textContent = parts.join(" · ");
    $("#tab-evolution").hidden = !model.evolution;
    $("#tab-topk").textContent = `Top ${model.k} over the dataset`;
    $("#class-name").title = $("#class-name").title.replace("top 9", `top ${model.k}`);
  }

  function renderLayers() {
    const body = $("#layers tbody");
    body.replaceChildren();
    for (const layer of layers) {
      const tr = document.createElement("tr");
      tr.dataset.layer = layer.name;
      const name = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "layer-pick";
      // A long name (layer2.0.downsample.0) wraps after its dots, so that its last parts —
      // what tells conv1 from conv2 — stay in view; the text is the name as typed.
      layer.name.split(".").forEach((part, i, parts) => {
        button.append(part + (i < parts.length - 1 ? "." : ""));
        if (i < parts.length - 1) button.append(document.createElement("wbr"));
      });
      button.title = `${layer.name} · ${layer.module}${layer.stride ? ` · stride ${grid2(layer.stride)}` : ""}` +
        (layer.calls > 1 ? ` · ${calledText(layer)}` : "");
      name.append(button);
      tr.append(name);
      for (const [text, cls] of [
        [layer.calls > 1 ? `${layer.kind} ×${layer.calls}` : layer.kind, ""],
        [String(layer.maps), "num"],
        [layer.spatial ? grid2(layer.size) : "flat", "num"],
        [size2(layer.rf), "num"],
      ]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      if (layer.calls > 1) tr.cells[1].title = calledText(layer);
      tr.addEventListener("click", () => pickLayer(layer.name));
      body.append(tr);
    }
  }

  /** A module called more than once in one forward pass (a ResNet block's one ReLU: after
   *  bn1, then after the residual sum) is listed where it first runs, but every view shows
   *  its last call. */
  function calledText(layer) {
    return `${layer.module} runs ${layer.calls} times in one forward pass; ` +
      "shown: its last call's output";
  }

  function pickLayer(name) {
    if (name === state.layer) return;
    clearError();
    go({ layer: name, unit: null, row: null, col: null });
  }

  function markLayer() {
    for (const tr of $$("#layers tbody tr")) {
      const on = tr.dataset.layer === state.layer;
      tr.classList.toggle("selected", on);
      $("button", tr).setAttribute("aria-pressed", on ? "true" : "false");
    }
    markClasses();
  }

  /** The top-5 class whose score is the picked unit, pressed. */
  function markClasses() {
    for (const b of $$("#predict-list .class-pick")) {
      const on = state.layer === model.score_layer && state.unit === Number(b.dataset.class);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    }
  }

  /** The names of the model's classes, offered as one types in "Any class" (once). */
  async function loadClassNames() {
    if (!model.classes || !model.labels) return;
    try {
      const { body } = await api("/api/classes");
      $("#class-names").replaceChildren(...body.classes.map((c) => {
        const option = document.createElement("option");
        option.value = c.name;
        option.label = `class ${c.class}`;
        return option;
      }));
    } catch (err) {
      showError(err.message);
    }
  }

  /** "Any class": the class named in the box, its score's unit picked as a top-5 click does. */
  async function findClass(e) {
    e.preventDefault();
    const name = $("#class-name").value.trim();
    if (!name) return;
    clearError();
    try {
      const { body } = await api(`/api/classes?${query({ name })}`);
      go({ layer: body.layer, unit: body.unit, row: null, col: null });
    } catch (err) {
      showError(err.message);
    }
  }

  // ---------------------------------------------------------------- images

  async function loadStrip() {
    const ticket = ++tickets.strip;
    if (!model.data) {
      stripTotal = 0;
      stripItems = [];
      renderStrip();
      return;
    }
    try {
      const { body } = await api(`/api/images?${query({ offset: stripOffset, limit: STRIP_LIMIT })}`);
      if (ticket !== tickets.strip) return;
      stripTotal = body.total;
      stripItems = body.items;
      renderStrip();
    } catch (err) {
      failed(err, "strip", ticket);
    }
  }

  function stripItem(item, isUpload) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.image = item.id;
    const words = isUpload ? [item.name || "uploaded image"] : [item.name, item.label];
    button.title = [item.id, ...words.filter(Boolean)].join(" · ");
    button.setAttribute("aria-label", button.title);
    if (isUpload) li.className = "uploaded";
    // A file that cannot be read is marked as such, not shown as a broken picture.
    const broken = () => {
      li.classList.add("broken");
      button.title += " · unreadable";
      button.setAttribute("aria-label", button.title);
      const mark = document.createElement("span");
      mark.className = "unreadable";
      mark.textContent = "unreadable";
      button.replaceChildren(mark);
    };
    if (item.broken || (isUpload && uploadChecks.has(item.id))) broken();
    else {
      const img = document.createElement("img");
      img.alt = "";
      img.loading = "lazy";
      img.addEventListener("error", () => {
        broken();
        if (isUpload) forgetIfGone(item);
      }, { once: true });
      img.src = item.src;
      button.append(img);
    }
    button.addEventListener("click", () => {
      if (state.image === item.id) return;
      clearError();
      go({ image: item.id, row: null, col: null });
    });
    li.append(button);
    return li;
  }

  /** The uploads this browser remembers (ids and names only), newest first. */
  function savedUploads() {
    try {
      const saved = JSON.parse(localStorage.getItem(UPLOADS_KEY) || "[]");
      return Array.isArray(saved) ? saved : [];
    } catch {
      return [];  // storage off (private mode) or not ours: nothing remembered
    }
  }

  /** Remember this page's uploads before the others this browser remembers (another tab's),
   *  less the one `gone`, so that a reload or another tab of the server lists them again. */
  function saveUploads(gone = null) {
    const here = new Set(uploads.map((u) => u.id));
    const others = savedUploads().filter((u) => u && !here.has(u.id) && u.id !== gone);
    const kept = [...uploads.map(({ id, name }) => ({ id, name })), ...others];
    try {
      localStorage.setItem(UPLOADS_KEY, JSON.stringify(kept.slice(0, UPLOADS_KEPT)));
    } catch {}  // storage off or full: the strip lists this page's alone
  }

  function restoreUploads() {
    for (const u of savedUploads()) {
      if (u && typeof u.id === "string" && u.id.startsWith("up:") && !uploads.some((k) => k.id === u.id)) {
        uploads.push({ id: u.id, src: `/api/image/${encodeURIComponent(u.id)}.png`, name: typeof u.name === "string" ? u.name : null });
      }
    }
  }

  const uploadChecks = new Set();  // uploads whose picture failed: asked once if still there
  let stripSoon = 0;

  /** One drawing of the strip for several changes made together (uploads found gone). */
  function renderStripSoon() {
    clearTimeout(stripSoon);
    stripSoon = setTimeout(renderStrip, 50);
  }

  /** An upload the server no longer has (restarted, or past the last it keeps) leaves the
   *  strip and the browser's list, unless it is the image shown (its view says why). Asked
   *  once per upload: the strip drawn again meanwhile shows it unreadable, not fetched anew. */
  async function forgetIfGone(item) {
    if (uploadChecks.has(item.id)) return;
    uploadChecks.add(item.id);
    try {
      const response = await fetch(item.src);
      if (response.status !== 404 || state.image === item.id) return;
    } catch {
      return;  // the server unreachable: keep it
    }
    const at = uploads.findIndex((u) => u.id === item.id);
    if (at < 0) return;
    uploads.splice(at, 1);
    saveUploads(item.id);
    renderStripSoon();
  }

  function renderStrip() {
    const strip = $("#strip");
    strip.replaceChildren(
      ...uploads.map((u) => stripItem(u, true)),
      ...stripItems.map((item) => stripItem(item, false)),
    );
    const info = $("#strip-info");
    if (!model.data) info.textContent = "No dataset given (`zfnet serve --data SPEC`): upload an image.";
    else if (!stripTotal) info.textContent = "The dataset has no images.";
    else info.textContent = `dataset images ${stripOffset + 1}–${Math.min(stripOffset + STRIP_LIMIT, stripTotal)} of ${stripTotal}`;
    if (uploads.length) {
      const added = `${uploads.length} uploaded image${uploads.length === 1 ? "" : "s"} (first on the strip)`;
      info.textContent = model.data ? `${added} · ${info.textContent}`
        : `${added}; no dataset (\`zfnet serve --data SPEC\` adds one).`;
    }
    $("#strip-prev").disabled = stripOffset <= 0;
    $("#strip-next").disabled = stripOffset + STRIP_LIMIT >= stripTotal;
    markStrip();
  }

  /** The current image's caption: its file's name where it has one (an upload's, a dataset
   *  image's on the strip), then its id. */
  function captionOf(id) {
    const item = uploads.find((u) => u.id === id) || stripItems.find((i) => i.id === id);
    return item && item.name ? `${item.name} (${id})` : id;
  }

  function markStrip() {
    if (state.image) $("#current-caption").textContent = captionOf(state.image);  // names known
    for (const b of $$("#strip button")) {
      const on = b.dataset.image === state.image;
      b.classList.toggle("selected", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    }
  }

  /** The strip's page (its offset) that holds the dataset image `id` (`val:N`), else null
   *  (an upload, or an image the dataset does not have). */
  function stripPageOf(id) {
    const m = /^val:(\d+)$/.exec(id || "");
    if (!m || !model.data || Number(m[1]) >= model.data.images) return null;
    return Math.floor(Number(m[1]) / STRIP_LIMIT) * STRIP_LIMIT;
  }

  /** Page the strip to the dataset image `id` when it is not on the current page. */
  function showStripPageOf(id) {
    const offset = stripPageOf(id);
    if (offset === null || !model.data) return;
    if (offset !== stripOffset) {
      stripOffset = offset;
      loadStrip();
    }
  }

  function pageStrip(direction) {
    const last = Math.max(0, Math.floor((stripTotal - 1) / STRIP_LIMIT) * STRIP_LIMIT);
    stripOffset = Math.min(last, Math.max(0, stripOffset + direction * STRIP_LIMIT));
    loadStrip();
  }

  async function loadCurrentImage() {
    const ticket = ++tickets.image;
    const img = $("#current-image");
    const caption = $("#current-caption");
    $("#predict").hidden = true;
    img.hidden = false;
    $("#current-broken").hidden = true;
    if (!state.image) {
      img.removeAttribute("src");
      caption.textContent = model.data ? "" : "No image yet: upload one.";
      return;
    }
    loadImage(img, `/api/image/${encodeURIComponent(state.image)}.png`, `image ${state.image}`, () => {
      if (ticket !== tickets.image) return;
      img.hidden = true;  // a placeholder, not a broken picture
      $("#current-broken").hidden = false;
    });
    enlarge(img, 224);
    caption.textContent = captionOf(state.image);
    if (!model.classes) return;
    try {
      const { body } = await api(`/api/predict?${query({ image: state.image })}`);
      if (ticket !== tickets.image) return;
      const list = $("#predict-list");
      list.replaceChildren(...body.top.map((t) => {
        const li = document.createElement("li");
        const pick = document.createElement("button");  // the class's score, its unit
        pick.type = "button";
        pick.className = "class-pick";
        pick.dataset.class = String(t.class);
        const name = document.createElement("span");
        name.className = "class-name";
        name.textContent = t.name || `class ${t.class}`;
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.setProperty("--p", String(t.p));
        const p = document.createElement("span");
        p.className = "p meta";
        p.textContent = percent(t.p);
        pick.append(name, bar, p);
        pick.title = `${t.name ? `${t.name} (class ${t.class})` : `class ${t.class}`}: p = ${t.p.toFixed(4)}; click: this class's score ` +
          `(${model.score_layer} ${unitWord(model.score_layer)} ${t.class}) projected, its top ${model.k}, its occlusion`;
        pick.addEventListener("click", () => {
          clearError();
          go({ layer: model.score_layer, unit: t.class, row: null, col: null });
        });
        li.append(pick);
        return li;
      }));
      markClasses();
      $("#predict-label").textContent = body.label ? `dataset label: ${body.label}` : "";
      // An upload opened by a link (another student's) has its name only from the server.
      const known = uploads.find((u) => u.id === state.image);
      if (body.name && known && !known.name) {
        known.name = body.name;
        caption.textContent = captionOf(state.image);
      }
      $("#predict").hidden = false;
    } catch (err) {
      failed(err, "image", ticket);
    }
  }

  /** Upload each of several files in turn (dropped together, or picked together), the last
   *  one shown; the files refused are told together at the end. */
  async function uploadAll(files) {
    const list = Array.from(files || []).filter(Boolean);
    if (list.length <= 1) {
      await upload(list[0]);
      return;
    }
    clearError();
    const refusals = [];
    let shown = null;  // the last one kept: the only one opened (one history entry, no views
    for (const file of list) {  // computed for the images passed through)
      const got = await upload(file, { quiet: true, open: false });
      if (got.why) refusals.push(got.why);
      else shown = got.id;
    }
    if (shown) go({ image: shown, row: null, col: null });
    if (refusals.length) showError(refusals.join("; "));
  }

  /** Post a file's bytes to /api/images; the uploaded image becomes the current one (unless
   *  not `open`). Returns {id} or {why} it was refused (shown, unless `quiet`). */
  async function upload(file, { quiet = false, open = true } = {}) {
    if (!file) return {};
    if (!quiet) clearError();
    const zone = $("#dropzone");
    zone.classList.add("busy");
    // A header holds Latin-1 only, and the server percent-decodes the name: it travels
    // percent-encoded (a name with "%2F" in it stays as it is)
    const name = encodeURIComponent(file.name);
    try {
      const { body } = await api("/api/images", {
        method: "POST",
        body: file,
        headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": name },
      });
      const known = uploads.findIndex((u) => u.id === body.id);  // the same bytes again
      if (known >= 0) uploads.splice(known, 1);
      // The file's own name: the header's copy may be percent-encoded.
      uploads.unshift({ id: body.id, src: body.src, name: file.name || body.name });
      saveUploads();
      renderStrip();
      if (open) go({ image: body.id, row: null, col: null });
      return { id: body.id };
    } catch (err) {
      // The server's message names the file already, except when it refuses the bytes unread.
      const named = file.name && err.message.includes(file.name);
      const why = named ? err.message : `${file.name || "the file"}: ${err.message}`;
      if (!quiet) showError(why);
      return { why };
    } finally {
      zone.classList.remove("busy");
      $("#upload-file").value = "";
    }
  }

  // ---------------------------------------------------------------- feature maps

  async function loadMaps() {
    const ticket = ++tickets.maps;
    const box = $("#maps");
    const sprite = $("#sprite");
    maps = null;
    delete box.dataset.layer;
    delete box.dataset.image;
    $("#map-hover").hidden = $("#map-selected").hidden = $("#map-mark").hidden = true;
    $("#map-info").textContent = "";
    box.hidden = false;
    if (!state.layer || !state.image) {
      sprite.removeAttribute("src");
      box.hidden = true;
      $("#maps-meta").textContent = state.image ? "Pick a layer." : "Pick or upload an image.";
      return;
    }
    $("#maps-meta").textContent = `${state.layer}: computing…`;
    $("#maps-heading").textContent = `Feature maps of ${state.layer}`;
    box.classList.add("loading");
    try {
      const { body } = await api(`/api/maps?${query({ image: state.image, layer: state.layer })}`);
      if (ticket !== tickets.maps) return;
      const layer = layerByName.get(body.layer);
      // a flat layer's units, and maps of 1×1 (a global pool's: each its own maximum, every
      // active one would be white): squares scaled to the layer's maximum
      $("#maps-meta").textContent = layer && !layer.spatial
        ? `${body.maps} units of a flat layer, one value each, for ${state.image}, drawn from 0 ` +
          "(black) to the layer's maximum (white); hover a square for its value, click it for the unit."
        : body.scale === "layer"
        ? `${body.maps} maps of 1×1, one value each as a flat layer's units, for ${state.image}, ` +
          "drawn from 0 (black) to the layer's maximum (white); hover a square for its value, " +
          "click it for the unit."
        : `${body.maps} maps of ${grid2(body.size)} for ${state.image}, each drawn from 0 (black) to ` +
          "its own maximum (white). Click a map for its strongest unit; click inside the picked " +
          "map for a position.";
      if (layer && layer.calls > 1) $("#maps-meta").textContent += ` ${calledText(layer)}.`;
      sprite.onload = () => {
        if (ticket !== tickets.maps) return;
        maps = body;
        layoutSprite();
        box.classList.remove("loading");
        box.dataset.layer = body.layer;
        box.dataset.image = state.image;
        markSelectedMap();
      };
      loadImage(sprite, body.sprite, `the feature maps of ${state.layer}`);
    } catch (err) {
      if (ticket !== tickets.maps) return;
      box.classList.remove("loading");
      sprite.removeAttribute("src");  // not the previous image's maps under this message
      box.hidden = true;
      failed(err, "maps", ticket);
      $("#maps-meta").textContent = `${state.layer}: ${err.message}`;
    }
  }

  /** Size the sprite so that a map is shown at most TILE_MAX px wide and the whole sprite fits
   *  the section's width and most of the window's height; whole-number enlargement keeps each
   *  activation a crisp square. */
  function layoutSprite() {
    const sprite = $("#sprite");
    const roomW = $("#maps-wrap").clientWidth || 800;
    const roomH = Math.max(420, window.innerHeight * 0.8);
    const w = sprite.naturalWidth;
    const h = sprite.naturalHeight;
    let k = Math.min(roomW / w, roomH / h, TILE_MAX / maps.tile[1]);
    if (k >= 1) k = Math.floor(k);
    sprite.style.width = `${Math.max(1, Math.round(w * k))}px`;
  }

  /** The map and position under a point of the page (clientX, clientY), or null in a gap. */
  function mapAt(clientX, clientY) {
    if (!maps) return null;
    const sprite = $("#sprite");
    const rect = sprite.getBoundingClientRect();
    const px = ((clientX - rect.left) / rect.width) * sprite.naturalWidth;
    const py = ((clientY - rect.top) / rect.height) * sprite.naturalHeight;
    const [th, tw] = maps.tile;
    const gap = maps.gap;
    const cx = Math.floor(px / (tw + gap));
    const cy = Math.floor(py / (th + gap));
    if (cx < 0 || cy < 0 || cx >= maps.cols) return null;
    const x = cx * (tw + gap);
    const y = cy * (th + gap);
    if (px - x >= tw || py - y >= th) return null;
    const m = cy * maps.cols + cx;
    if (m >= maps.maps) return null;
    const [h, w] = maps.size;
    const row = Math.min(h - 1, Math.floor(((py - y) * h) / th));
    const col = Math.min(w - 1, Math.floor(((px - x) * w) / tw));
    return { map: m, row, col };
  }

  /** Place an outline over map m (in the sprite's displayed pixels). */
  function placeOutline(el, m) {
    const sprite = $("#sprite");
    const scale = sprite.getBoundingClientRect().width / sprite.naturalWidth;
    const [th, tw] = maps.tile;
    const x = (m % maps.cols) * (tw + maps.gap);
    const y = Math.floor(m / maps.cols) * (th + maps.gap);
    el.style.left = `${x * scale}px`;
    el.style.top = `${y * scale}px`;
    el.style.width = `${tw * scale}px`;
    el.style.height = `${th * scale}px`;
    el.dataset.map = String(m);
    el.hidden = false;
  }

  function markSelectedMap() {
    const sel = $("#map-selected");
    const mark = $("#map-mark");
    if (!maps || state.unit === null || state.layer !== maps.layer) {
      sel.hidden = mark.hidden = true;
      return;
    }
    placeOutline(sel, state.unit);
    const row = state.row !== null ? state.row : unitInfo && unitInfo.unit === state.unit ? unitInfo.row : null;
    const col = state.col !== null ? state.col : unitInfo && unitInfo.unit === state.unit ? unitInfo.col : null;
    const [h, w] = maps.size;
    if (row === null || col === null || h * w === 1) {
      mark.hidden = true;
      return;
    }
    const sprite = $("#sprite");
    const scale = sprite.getBoundingClientRect().width / sprite.naturalWidth;
    const [th, tw] = maps.tile;
    const x = (state.unit % maps.cols) * (tw + maps.gap) + (col * tw) / w;
    const y = Math.floor(state.unit / maps.cols) * (th + maps.gap) + (row * th) / h;
    mark.style.left = `${x * scale}px`;
    mark.style.top = `${y * scale}px`;
    mark.style.width = `${Math.max(2, (tw / w) * scale)}px`;
    mark.style.height = `${Math.max(2, (th / h) * scale)}px`;
    mark.hidden = false;
  }

  function hoverMaps(event) {
    const hit = mapAt(event.clientX, event.clientY);
    const hover = $("#map-hover");
    if (!hit) {
      hover.hidden = true;
      $("#map-info").textContent = "";
      return;
    }
    placeOutline(hover, hit.map);
    const [h, w] = maps.size;
    const [ar, ac] = maps.argmax[hit.map];
    $("#map-info").textContent = h * w === 1
      ? `unit ${hit.map} · value ${fmt(maps.max[hit.map])}`
      : `map ${hit.map} · max ${fmt(maps.max[hit.map])} at (${ar}, ${ac}) · pointer at (${hit.row}, ${hit.col})`;
  }

  function clickMaps(event) {
    const hit = mapAt(event.clientX, event.clientY);
    if (!hit) return;
    clearError();
    const [h, w] = maps.size;
    // The first click on a map picks its strongest unit; a click inside the picked map picks
    // the position under the pointer (a flat layer has one position).
    if (hit.map !== state.unit || h * w === 1) go({ unit: hit.map, row: null, col: null });
    else go({ row: hit.row, col: hit.col });
  }

  function keyMaps(event) {
    if (!maps) return;
    const [mh, mw] = maps.size;
    // Shift with the arrows moves the position inside the picked map, as a click there does
    // (the keyboard had no way to a unit other than each map's strongest)
    const move = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] }[event.key];
    if (event.shiftKey && move && state.unit !== null && mh * mw > 1) {
      event.preventDefault();
      const [r0, c0] = state.row !== null ? [state.row, state.col] : maps.argmax[state.unit];
      const row = Math.min(mh - 1, Math.max(0, r0 + move[0]));
      const col = Math.min(mw - 1, Math.max(0, c0 + move[1]));
      if (row === state.row && col === state.col) return;
      go({ row, col }, { replace: keyRun });
      keyRun = true;
      $("#map-info").textContent = `map ${state.unit} at (${row}, ${col})`;
      return;
    }
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -maps.cols, ArrowDown: maps.cols }[event.key];
    if (step === undefined) return;
    event.preventDefault();
    const from = state.unit === null ? 0 : state.unit + step;
    const unit = Math.min(maps.maps - 1, Math.max(0, from));
    if (unit === state.unit) return;
    // One history entry for a run of key presses: Back returns to the view before it.
    go({ unit, row: null, col: null }, { replace: keyRun });
    keyRun = true;
    // said in the live region, as a hover says it (a screen reader's user hears the pick)
    const [h, w] = maps.size;
    const [ar, ac] = maps.argmax[unit];
    $("#map-info").textContent = h * w === 1 ? `unit ${unit} · value ${fmt(maps.max[unit])}`
      : `map ${unit} · max ${fmt(maps.max[unit])} at (${ar}, ${ac})`;
  }

  // ---------------------------------------------------------------- the unit

  // what one of a layer's units is called: a map of a spatial layer, a unit of a flat one
  function unitWord(name) {
    const layer = layerByName.get(name);
    return layer && !layer.spatial ? "unit" : "map";
  }

  function placeBox(el, box) {
    if (!box) {
      el.hidden = true;
      return;
    }
    const [H, W] = model.input.size;
    const [top, left, bottom, right] = box;
    el.style.top = `${(100 * top) / H}%`;
    el.style.left = `${(100 * left) / W}%`;
    el.style.height = `${(100 * (bottom - top)) / H}%`;
    el.style.width = `${(100 * (right - left)) / W}%`;
    el.hidden = false;
  }

  async function loadUnit() {
    const ticket = ++tickets.unit;
    const section = $("#unit-section");
    unitInfo = null;
    delete section.dataset.unit;
    $("#current-box").hidden = true;
    if (state.unit === null || !state.layer || !state.image) {
      section.hidden = true;
      return;
    }
    section.hidden = false;
    $("#unit-figures").hidden = false;
    section.classList.add("loading");
    $("#unit-heading").textContent = `${state.layer} · ${unitWord(state.layer)} ${state.unit}`;
    $("#unit-meta").textContent = "projecting…";
    const params = { image: state.image, layer: state.layer, unit: state.unit, row: state.row, col: state.col, seed: state.seed };
    try {
      const { body } = await api(`/api/unit?${query(params)}`);
      if (ticket !== tickets.unit) return;
      unitInfo = body;
      if (body.name) $("#unit-heading").textContent += ` (${body.name})`;  // a class's score
      const layer = layerByName.get(body.layer);
      const at = layer && (!layer.spatial || layer.size[0] * layer.size[1] === 1) ? "" : ` at (${body.row}, ${body.col})${state.row === null ? ", its strongest position" : ""}`;
      // the API's box is half-open [top, bottom): the text gives the last row and column in it
      const box = body.box ? ` · receptive field rows ${body.box[0]}–${body.box[2] - 1}, columns ${body.box[1]}–${body.box[3] - 1} (inclusive)` : "";
      const one = body.seed === "one";
      const idle = one ? " · seeded with 1, as Captum seeds (what would raise it), not with its activation" :
        body.active ? "" : " · not active on this image (activation ≤ 0): seeded with its activation, every " +
        `rule projects it to nothing; its top ${model.k} show where it fires`;
      const last = layer && layer.calls > 1 ? ` · in the last of its module's ${layer.calls} calls` : "";
      $("#unit-meta").textContent = `activation ${fmt(body.activation)}${at}${last} · image ${state.image}${box}${idle}`;
      if (one || !body.active) {  // the other seed, one click away
        const other = document.createElement("button");
        other.type = "button";
        other.id = "seed-switch";
        other.className = "quiet";
        other.textContent = one ? "seed it with its activation (the paper's)" : "seed it with 1 instead";
        other.addEventListener("click", () => go({ seed: one ? null : "one" }));
        $("#unit-meta").append(" ", other);
      }
      const flat = layer && !layer.spatial;  // a flat layer's unit sees the whole image
      $("#unit-image-caption").textContent = flat ? "image · all of it feeds the unit" : "image · receptive field";
      $("#unit-patch-caption").textContent = flat ? "input (the whole image)" : "input patch";
      for (const img of $$("#unit-figures img.projection")) {
        const refusal = (body.undefined || {})[img.dataset.rule];
        if (refusal) {  // a fact of the network whatever the unit: said, not asked for
          ruleUndefined(img, refusal);
        } else if (body.active || one) {
          loadProjection(img, body.rules[img.dataset.rule]);
        } else {  // not a blank picture: say why there is none
          const note = img.parentElement.querySelector(".unavailable");
          img.removeAttribute("src");
          img.hidden = true;
          note.textContent = "nothing to project: the unit is not active here";
          note.title = `activation ${fmt(body.activation)} ≤ 0`;
          note.hidden = false;
        }
        enlarge(img, 176);
      }
      loadImage($("#unit-patch"), body.patch, "the image patch");
      enlarge($("#unit-patch"), 176);
      loadImage($("#unit-image"), body.image, "the image");
      enlarge($("#unit-image"), 176);
      placeBox($("#unit-box"), body.box);
      placeBox($("#current-box"), body.box);
      section.dataset.layer = body.layer;
      section.dataset.unit = String(body.unit);
      section.dataset.row = String(body.row);
      section.dataset.col = String(body.col);
      section.classList.remove("loading");
      markSelectedMap();
    } catch (err) {
      if (ticket !== tickets.unit) return;
      section.classList.remove("loading");
      $("#unit-figures").hidden = true;  // not the last unit's pictures under this message
      $("#unit-meta").textContent = err.message;
      showError(err.message);
    }
  }

  // ---------------------------------------------------------------- views (long computations)

  function markTabs() {
    for (const tab of $$("#view-tabs [role=tab]")) {
      const on = tab.dataset.view === state.view;
      tab.setAttribute("aria-selected", on ? "true" : "false");
      tab.tabIndex = on || (!state.view && tab.dataset.view === "topk") ? 0 : -1;
    }
    if (state.view) $("#view-panel").setAttribute("aria-labelledby", `tab-${state.view}`);
    else $("#view-panel").removeAttribute("aria-labelledby");
    $("#tab-topk").disabled = !model.data;
    $("#tab-topk").title = model.data ? "" : "needs a dataset: `zfnet serve --data SPEC`";
  }

  function viewRequest(s) {
    const unit = { layer: s.layer, unit: s.unit };
    if (s.view === "topk") {
      if (!model.data) return { hint: `The top ${model.k} need a dataset: start the server with --data SPEC.` };
      if (s.unit === null) return { hint: `Pick a unit (click a feature map) to see its top ${model.k} over the dataset.` };
      return { url: `/api/topk?${query(unit)}` };
    }
    if (s.view === "occlusion") {
      if (!s.image) return { hint: "Pick or upload an image to occlude." };
      // maps (b) and (c) follow the picked unit; none picked: the image's strongest map
      const picked = s.unit === null ? {} : unit;
      return { url: `/api/occlusion?${query({ image: s.image, ...picked })}` };
    }
    if (s.view === "evolution") {
      if (!model.evolution) return { hint: "Evolution needs a zfnet run with kept epochs (train --keep-epochs)." };
      if (s.unit === null) return { hint: "Pick a unit (click a feature map) to see how it evolved during training." };
      return { url: `/api/evolution?${query(unit)}` };
    }
    return { hint: null };
  }

  /** A view of one image or unit that the page moves away from is not left queued ahead of
   *  the next one (a run of arrow keys with the occlusion tab open): its job is cancelled for
   *  this page (it goes on where other pages follow it). A top-k index is mined on. */
  function leaveJob(url) {
    if (!currentJob || currentJobKind === "topk" || currentJobUrl === url) return Promise.resolve();
    return api(`/api/jobs/${encodeURIComponent(currentJob)}`, { method: "DELETE" }).catch(() => {});
  }

  async function loadView() {
    const ticket = ++tickets.view;
    const request = viewRequest(state);
    const leaving = leaveJob(request.url);
    currentJob = currentJobKind = currentJobUrl = null;
    const result = $("#view-result");
    const hint = $("#view-hint");
    $("#job").hidden = true;
    result.hidden = true;
    delete result.dataset.view;
    if (!request.url) {
      hint.textContent = request.hint || defaultHint;  // no view: the panel's first words
      hint.hidden = false;
      return;
    }
    hint.hidden = true;
    try {
      // the job left behind is cancelled before the next one is asked for, so that the
      // next one's place in the queue does not count it
      await leaving;
      if (ticket !== tickets.view) return;
      // 202 means a job computes it: follow the job, then ask again for the result (again
      // too when the server dropped the job, unasked about while this page was asleep).
      for (let done = 0; ;) {
        const { status, body } = await api(request.url);
        if (ticket !== tickets.view) return;
        if (status !== 202) {
          showResult(state.view, body, ticket);
          return;
        }
        if (done >= 3) throw new ApiError("the job finished but the result is still not ready", 0);
        const outcome = await followJob(body.job, ticket, request.url);
        if (outcome === "done") done += 1;
        else if (outcome !== "abandoned") return;
      }
    } catch (err) {
      if (ticket !== tickets.view) return;
      $("#job").hidden = true;
      hint.textContent = err.message;
      hint.hidden = false;
      showError(err.message);
    }
  }

  /** Poll a job until it ends, showing its progress; returns its final state (or "stale"). */
  async function followJob(job, ticket, url) {
    let j = typeof job === "string" ? { id: job, state: "queued", done: 0, total: 0 } : job;
    currentJob = j.id;
    currentJobKind = j.kind || null;
    currentJobUrl = url;
    for (let i = 0; ; i += 1) {
      if (ticket !== tickets.view) return "stale";
      renderJob(j);
      if (j.state === "done") return "done";
      if (j.state === "failed") throw new ApiError(`${j.what || "the job"} failed: ${j.error || "no reason given"}`, 0);
      if (j.state === "cancelled" && j.abandoned) return "abandoned";
      if (j.state === "cancelled") {
        const focused = $("#job").contains(document.activeElement);
        $("#job").hidden = true;
        const by = cancelledHere.has(j.id) ? "" : " (by another page or request)";
        showAgain(`${j.what || "The job"} was cancelled${by}. `, "Compute again");
        if (focused || document.activeElement === document.body) $("#view-again").focus();
        return "cancelled";
      }
      await sleep(POLL_MS[Math.min(i, POLL_MS.length - 1)]);
      if (ticket !== tickets.view) return "stale";
      ({ body: j } = await api(`/api/jobs/${encodeURIComponent(j.id)}`));
    }
  }

  // The view panel's text after a job it waited for is gone, with a button that asks again.
  function showAgain(text, label) {
    const hint = $("#view-hint");
    hint.replaceChildren(text);
    const again = document.createElement("button");
    again.type = "button";
    again.id = "view-again";
    again.textContent = label;
    again.addEventListener("click", () => loadView());
    hint.append(again);
    hint.hidden = false;
  }

  function renderJob(j) {
    const box = $("#job");
    box.hidden = false;
    box.dataset.state = j.state;
    let queue = "";
    if (j.state === "queued" && j.ahead) {
      queue = `, ${j.ahead} job${j.ahead === 1 ? "" : "s"} ahead` + (j.waiting_for ? ` (running: ${j.waiting_for})` : "");
    }
    const stopping = cancelledHere.has(j.id) && (j.state === "queued" || j.state === "running")
      ? " · cancelling…" : "";  // a running job stops at its next group of positions or images
    $("#job-what").textContent = `${j.what || "computing"}: ${j.state}${queue}${stopping}`;
    const bar = $("#job-progress");
    if (j.total > 0) {
      bar.max = j.total;
      bar.value = j.done;
      $("#job-count").textContent = `${j.done} / ${j.total}`;
    } else {
      bar.removeAttribute("value");  // indeterminate
      $("#job-count").textContent = "";
    }
    $("#job-cancel").disabled = j.state === "done" || cancelledHere.has(j.id);
  }

  async function cancelJob() {
    if (!currentJob) return;
    $("#job-cancel").disabled = true;
    cancelledHere.add(currentJob);
    $("#job-what").textContent += " · cancelling…";
    try {
      const { body: j } = await api(`/api/jobs/${encodeURIComponent(currentJob)}`, { method: "DELETE" });
      if (j.others > 0 && (j.state === "queued" || j.state === "running")) {
        // Other pages follow it: it goes on for them, and this page stops following it.
        tickets.view += 1;
        currentJob = null;
        $("#job").hidden = true;
        const pages = j.others === 1 ? "1 other page follows" : `${j.others} other pages follow`;
        showAgain(`Cancelled for this page only: ${pages} ${j.what || "this job"}, so it goes on for them. `,
                  "Follow it again");
        $("#view-again").focus();  // not lost to the page with the Cancel button hidden
      }
    } catch (err) {
      showError(err.message);
    }
  }

  function showResult(view, body, ticket) {
    $("#job").hidden = true;
    currentJob = null;
    const result = $("#view-result");
    const meta = $("#view-meta");
    const items = $("#topk-items");
    items.hidden = true;
    items.replaceChildren();
    const figure = $("#view-figure");
    // the top k's figure by another rule (the API draws each): a button for each rule the
    // API offers here (`rules`), none where it offers but one — the gradient, where the
    // deconvnet is undefined here (said in the meta, from `undefined`)
    const rules = $("#view-rules");
    const offered = view === "topk" && body.rules ? Object.keys(body.rules) : [];
    rules.hidden = offered.length < 2;
    if (!rules.hidden) {
      for (const b of rules.querySelectorAll("button")) {
        b.hidden = !offered.includes(b.dataset.rule);
        b.setAttribute("aria-pressed", String(b.dataset.rule === body.rule));
        b.onclick = () => {
          for (const o of rules.querySelectorAll("button")) {
            o.setAttribute("aria-pressed", String(o === b));
          }
          loadImage(figure, body.rules[b.dataset.rule], "the figure");
        };
      }
    }
    if (view === "topk") {
      const names = body.unreadable.map((u) => u.name || u.image);
      const some = names.length > 5 ? `${names.slice(0, 5).join(", ")}, …` : names.join(", ");
      const over = body.unreadable.length ? `${body.mined} images (${body.unreadable.length} unreadable: ${some})` : `${body.images} images`;
      const named = body.name ? ` (${body.name})` : "";
      const refusal = (body.undefined || {}).deconvnet;  // the server's one line: its first clause
      const by = body.rule === "gradient" ? ` (by the gradient, as the deconvnet and guided backpropagation are not offered here: ${refusal ? refusal.split("; ")[0] : "the deconvnet is undefined through this model"}; \`zfnet serve --nonlinear gradient\` takes its gradient)` : "";
      meta.textContent = `The ${body.items.length} strongest activations of ${body.layer} ${unitWord(body.layer)} ${body.unit}${named} over ${over}: ` +
        `projections${by} (left) beside their image patches (right). Pick one to open it.`;
      figure.alt = `Top ${body.k} of ${body.layer} ${unitWord(body.layer)} ${body.unit}: projections and patches`;
      items.replaceChildren(...body.items.map((item, i) => {
        const li = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.dataset.image = item.image;
        const img = document.createElement("img");
        img.src = `/api/image/${encodeURIComponent(item.image)}.png`;
        img.alt = "";
        const name = document.createElement("span");
        name.textContent = `${i + 1}. ${item.name || item.image}`;  // the file, where named
        const value = document.createElement("span");
        value.className = "meta";
        value.textContent = fmt(item.activation);
        button.append(img, name, value);
        button.title = `open ${item.image} at (${item.row}, ${item.col})`;
        button.addEventListener("click", () => {
          clearError();
          go({ image: item.image, layer: body.layer, unit: body.unit, row: item.row, col: item.col });
        });
        li.append(button);
        return li;
      }));
      items.hidden = false;
    } else if (view === "occlusion") {
      const target = body.target.name ? `${body.target.name} (class ${body.target.class})` : `class ${body.target.class}`;
      const which = body.map_rule === "picked" ? `${body.layer} ${unitWord(body.layer)} ${body.map}, the picked unit,`
        : `the strongest map of ${body.layer} (map ${body.map}; pick a unit to follow it instead)`;
      const whose = body.target.followed === "picked" ? "the picked class" : "the predicted class";
      meta.textContent = `Occluding ${state.image} with a grey square (Fig. 7): ${which} ` +
        `and the probability of ${whose}, ${target}, at every position of the square` +
        (body.precision === "float32" ? "." : ` (its passes in ${body.precision}).`);
      figure.alt = `Occlusion maps of ${state.image}`;
    } else {
      const pairs = body.epochs.map((e, i) => `epoch ${e}: ${body.similarity[i].toFixed(3)}`);
      meta.textContent = `${state.layer} ${unitWord(state.layer)} ${state.unit} over training (Fig. 4); similarity to the last epoch: ${pairs.join(", ")}.`;
      figure.alt = `Evolution of ${state.layer} ${unitWord(state.layer)} ${state.unit} across epochs`;
    }
    // Drawing a figure can take a second or two: say so until it is there.
    const drawing = $("#view-drawing");
    drawing.hidden = false;
    figure.hidden = true;
    figure.onload = () => {
      if (ticket !== tickets.view) return;
      drawing.hidden = true;
      figure.hidden = false;
      result.dataset.view = view;
    };
    loadImage(figure, body.figure, "the figure", () => {
      if (ticket === tickets.view) drawing.hidden = true;
    });
    enlarge(figure, 640);
    result.hidden = false;
  }

  function pickView(view) {
    clearError();
    if (view === state.view) loadView();  // asked again: e.g. after a cancelled job
    else go({ view });
  }

  /** Put `text` on the clipboard. A server opened by its network address
   *  (http://192.168.…:8000, a class) is not a secure context, where the page has no
   *  navigator.clipboard: a selected text area is copied the older way there. */
  async function copyText(text) {
    if (navigator.clipboard) {
      await navigator.clipboard.writeText(text);
      return;
    }
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    try {
      if (!document.execCommand("copy")) throw new Error("copy refused");
    } finally {
      area.remove();
    }
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    // the page opened afresh, on what the server serves now (the old view's link would name
    // the last model's layers and images)
    $("#stale-reload").addEventListener("click", () => window.location.assign("/"));
    // back to the tab (after restarting the server in a terminal): is it still the same model?
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && model) api("/api/model").catch(() => {});
    });
    $("#error-close").addEventListener("click", dismissError);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !$("#error").hidden) dismissError();
    });
    $("#strip-prev").addEventListener("click", () => pageStrip(-1));
    $("#strip-next").addEventListener("click", () => pageStrip(1));
    $("#upload-file").addEventListener("change", (e) => uploadAll(e.target.files));
    const box = $("#maps");
    box.addEventListener("mousemove", hoverMaps);
    box.addEventListener("mouseleave", () => {
      $("#map-hover").hidden = true;
      $("#map-info").textContent = "";
    });
    box.addEventListener("click", clickMaps);
    box.addEventListener("keydown", keyMaps);
    for (const tab of $$("#view-tabs [role=tab]")) {
      tab.addEventListener("click", () => pickView(tab.dataset.view));
    }
    $("#view-tabs").addEventListener("keydown", (e) => {
      const tabs = $$("#view-tabs [role=tab]").filter((t) => !t.hidden && !t.disabled);
      const i = tabs.indexOf(document.activeElement);
      const step = { ArrowLeft: -1, ArrowRight: 1 }[e.key];
      if (i < 0 || step === undefined) return;
      // the keys move the focus only; Enter or Space opens the tab (manual activation: a
      // tab may start a job, an occlusion of 35 s, which passing over it must not)
      tabs[(i + step + tabs.length) % tabs.length].focus();
    });
    $(".skip").addEventListener("click", (e) => {  // the focus moved, no history entry made
      e.preventDefault();
      $("#maps").focus();
    });
    $("#job-cancel").addEventListener("click", cancelJob);
    $("#class-find").addEventListener("submit", findClass);
    $("#copy-link").addEventListener("click", async () => {
      const link = $("#permalink").href;
      try {
        await copyText(link);
        $("#copy-link").textContent = "Copied";
        setTimeout(() => { $("#copy-link").textContent = "Copy"; }, 1500);
      } catch (err) {
        showError(`could not copy; the link is ${link}`);
      }
    });

    // Drag and drop anywhere on the page; the overlay says what a drop does.
    let depth = 0;
    // a link dragged over the page, not onto a text field (where it is typed)
    const droppedLink = (e) => e.dataTransfer && Array.from(e.dataTransfer.types).includes("text/uri-list")
      && !(e.target instanceof Element && e.target.closest("input, textarea"));
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types).includes("Files");
    document.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth += 1;
      $("#drop-overlay").hidden = false;
    });
    document.addEventListener("dragover", (e) => {
      if (hasFiles(e) || droppedLink(e)) e.preventDefault();
    });
    document.addEventListener("dragleave", (e) => {
      if (!hasFiles(e)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) $("#drop-overlay").hidden = true;
    });
    document.addEventListener("drop", async (e) => {
      if (!hasFiles(e)) {
        // a link or a picture dragged from another page: the page cannot fetch its bytes
        if (!droppedLink(e)) return;
        e.preventDefault();  // not opened in place of the page
        const own = (e.dataTransfer.getData("text/uri-list") || "").startsWith(window.location.origin);
        if (!own) {  // (one of this page's own pictures, moved by mistake: nothing)
          showError("a link was dropped, not a file: save the image first, then drop the file " +
                    "(or paste the image, or use the file picker)");
        }
        return;
      }
      e.preventDefault();
      depth = 0;
      $("#drop-overlay").hidden = true;
      // several files: each uploaded in turn, the last one shown
      await uploadAll(e.dataTransfer.files);
    });
    // An image pasted from the clipboard is uploaded too.
    document.addEventListener("paste", (e) => {
      const item = Array.from(e.clipboardData ? e.clipboardData.items : []).find((i) => i.kind === "file");
      if (item) upload(item.getAsFile());
    });

    window.addEventListener("popstate", () => {
      keyRun = false;
      const prev = state;
      const { next, problems } = readUrl();
      state = next;
      if (problems.length) showError(problems.join("; "));
      refresh(prev, state);
    });
    let resizeTimer = 0;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (!maps) return;
        layoutSprite();
        markSelectedMap();
      }, 100);
    });
  }

  async function start() {
    wire();
    try {
      const [m, l] = await Promise.all([api("/api/model"), api("/api/layers")]);
      model = m.body;
      layers = l.body.layers;
    } catch (err) {
      showError(`the explorer cannot start: ${err.message}`);
      return;
    }
    for (const layer of layers) layerByName.set(layer.name, layer);
    defaultHint = $("#view-hint").textContent.replace(/\s+/g, " ").trim();
    renderHeader();
    renderLayers();
    loadClassNames();
    const { next, problems } = readUrl();
    if (problems.length) showError(problems.join("; "));
    restoreUploads();
    // Restoring uploaded images by link: they are not in the dataset's list.
    if (next.image && next.image.startsWith("up:") && !uploads.some((u) => u.id === next.image)) {
      uploads.push({ id: next.image, src: `/api/image/${encodeURIComponent(next.image)}.png`, name: null });
    }
    stripOffset = stripPageOf(next.image) || 0;
    loadStrip();
    const prev = state;
    state = next;
    window.history.replaceState(null, "", viewUrl(state));
    refresh(prev, state, true);
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", start);
})();
