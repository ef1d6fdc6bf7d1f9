// The demo page: no framework, no build step. Data: GET /demo/images (cache state, cost),
// GET /srcset/{id} (markup), GET /presets (named presets), GET /_engine/stats (the local
// engine's counters). Byte sizes come from the browser's own resource timing.
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("picker");
const SWATCHES = ["ffffff", "f4efe6", "e8f0fe", "ffe4e6", "1f2937"];
let renderedFor = "";
let refreshTimer = 0;

function pick() {
  const data = new FormData(form);
  const transparent = $("transparent").checked;
  let ext = data.get("ext") || "jpg";
  if (transparent && ext === "jpg") {
    ext = "png"; // jpg has no alpha channel: the proxy answers 400 for transparent.jpg
    form.querySelector('input[name="ext"][value="png"]').checked = true;
  }
  return {
    w: Number(data.get("w")) || 320,
    ratio: data.get("ratio") || "1:1",
    density: Number(data.get("density")) || 1,
    bg: transparent ? "transparent" : $("color").value.slice(1).toLowerCase(),
    ext,
  };
}

function params(p) {
  return new URLSearchParams({ w: p.w, ratio: p.ratio, density: p.density, bg: p.bg, ext: p.ext });
}

async function getJSON(url) {
  const answer = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await answer.json();
  if (!answer.ok) throw new Error(body.message || answer.statusText);
  return body;
}

function fillSelect(select, values, chosen, label) {
  select.replaceChildren(
    ...values.map((value) => {
      const option = new Option(label(value), value);
      option.selected = String(value) === String(chosen);
      return option;
    }),
  );
}

function ago(seconds) {
  if (seconds == null) return "";
  const minutes = Math.round(seconds / 60);
  return minutes >= 60 ? `${Math.floor(minutes / 60)} h ${minutes % 60} min` : `${minutes} min`;
}

function credits(value) {
  return value === 0 ? "0 (cached)" : `≈ ${value.toFixed(2)} credit${value === 1 ? "" : "s"}`;
}

async function showEngine(embedded) {
  if (!embedded) return;
  try {
    const stats = await getJSON("/_engine/stats");
    $("engine").textContent =
      `Local engine: ${stats.tokens_minted} tokens minted, ` +
      `${stats.variants_rendered} variants rendered, ${stats.credits_charged} ` +
      `credit${stats.credits_charged === 1 ? "" : "s"} charged so far.`;
  } catch (error) {
    $("engine").textContent = "";
  }
}

function updateStatus(card, image) {
  const q = (selector) => card.querySelector(selector);
  const original = image.original.width ? `${image.original.width}×${image.original.height}` : "unknown";
  q(".original").textContent = original;
  if (image.error) {
    q(".state").textContent = image.error;
    return;
  }
  const out = image.output;
  q(".delivered").textContent = `${out.width}×${out.height}${out.exact ? "" : " (fits in)"}`;
  const kept = image.expires_in == null ? "kept" : `cached, ${ago(image.expires_in)} left`;
  q(".state").textContent = image.cached ? kept : "not cached yet";
  q(".state").className = `state ${image.cached ? "hit" : "miss"}`;
  q(".cost").textContent = credits(image.credits);
  q(".count").textContent = image.variants_cached == null ? "n/a" : String(image.variants_cached);
}

async function renderCard(image, p, first) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  card.dataset.id = image.image_id;
  card.querySelector(".id").textContent = image.image_id;
  updateStatus(card, image);
  const frame = card.querySelector(".frame");
  frame.classList.toggle("checker", p.bg === "transparent");
  const widths = Array.from({ length: p.density }, (_, i) => p.w * (i + 1)).join(",");
  const query = new URLSearchParams({
    widths, ratio: p.ratio, bg: p.bg, ext: p.ext, sizes: `${p.w}px`, alt: image.image_id,
  });
  try {
    const markup = await getJSON(`/srcset/${encodeURIComponent(image.image_id)}?${query}`);
    if (first) $("markup").textContent = markup.html;
    const img = new Image();
    for (const name of ["srcset", "sizes", "width", "height"]) img.setAttribute(name, markup[name]);
    img.alt = image.image_id;
    img.src = markup.src;
    img.style.width = `${p.w}px`;
    img.style.height = "auto"; // the width/height attributes only fix the aspect ratio
    img.addEventListener("load", () => {
      const taken = new URL(img.currentSrc).pathname;
      card.querySelector(".picked").textContent = `${taken.split("/")[3]} at ${window.devicePixelRatio}x`;
      scheduleRefresh();
    });
    img.addEventListener("error", () => { card.querySelector(".picked").textContent = "failed to load"; });
    frame.append(img);
  } catch (error) {
    frame.textContent = error.message;
    if (first) $("markup").textContent = error.message;
  }
  return card;
}

function showCode(p, state) {
  const first = state.images.find((image) => !image.error) || state.images[0];
  const id = first ? first.image_id : "demo";
  const asked = first ? first.url : `/img/${id}/${state.pick.size}/${p.bg}.${p.ext}`;
  $("url").textContent = location.origin + asked;
  const canonical = first && first.canonical;
  const store = state.mode === "store";
  $("canonical").textContent = canonical && canonical !== asked
    ? `The proxy answers 308 to the pixel size: ${canonical}`
    : store
      ? "Already canonical: the proxy answers the image's bytes."
      : "Already canonical: the proxy answers 302 to the output.";
  const tail = store
    ? `"bytes": ..., "etag": "...", "placeholder": {"thumbhash": "...", "color": "#..."}}`
    : `"expires_at": "..."}`;
  const format = p.ext === "auto" ? (p.bg === "transparent" ? "png" : "jpg") : p.ext;
  $("curl").textContent =
    `curl -s -H 'Accept: application/json' ${location.origin}${canonical || asked}\n` +
    `# → {"url": "...", "width": ${first && first.output ? first.output.width : "w"}, ` +
    `"height": ${first && first.output ? first.output.height : "h"}, "format": "${format}", ${tail}`;
}

async function render() {
  const p = pick();
  const key = params(p).toString();
  if (key === renderedFor) return;
  renderedFor = key;
  const state = await getJSON(`/demo/images?${key}`);
  if (!$("w").options.length) {
    fillSelect($("w"), state.widths.filter((w) => w <= 1280), p.w, (w) => `${w} px`);
    fillSelect($("ratio"), state.ratios, p.ratio, (r) => r);
  }
  $("notice").hidden = !state.signing;
  $("notice").textContent = state.signing
    ? "Signing keys are set: markup and images need signed URLs, so this page shows errors."
    : "";
  showCode(p, state);
  const cards = [];
  for (const [index, image] of state.images.entries()) cards.push(await renderCard(image, p, index === 0));
  if (!cards.length) $("gallery").textContent = "No images registered yet: PUT one to /images/{id}.";
  else $("gallery").replaceChildren(...cards);
  showEngine(state.embedded_engine);
  compare(p, state);
}

const FORMATS = { store: ["jpg", "png", "webp", "avif", "auto"], redirect: ["jpg", "png", "webp", "auto"] };

function kib(bytes) {
  return bytes >= 1024 ? `${(bytes / 1024).toFixed(1)} KiB` : `${bytes} B`;
}

// What the browser received for an image (encoded body), from its resource timing entry.
function received(img) {
  const entries = performance.getEntriesByName(img.currentSrc || img.src);
  const last = entries[entries.length - 1];
  return last ? last.encodedBodySize || last.transferSize || 0 : 0;
}

function tile(name, path, target) {
  const figure = $("tile").content.firstElementChild.cloneNode(true);
  figure.dataset.name = name;
  figure.querySelector(".name").textContent = name;
  figure.querySelector(".path").textContent = path;
  const img = new Image();
  img.alt = name;
  img.decoding = "async";
  img.addEventListener("load", () => {
    const bytes = received(img);
    figure.dataset.bytes = String(bytes);
    figure.querySelector(".bytes").textContent = bytes ? kib(bytes) : "loaded";
    figure.dataset.loaded = "1";
    nameAuto();
  });
  img.addEventListener("error", () => {
    figure.dataset.loaded = "error";
    figure.querySelector(".bytes").textContent = "failed to load";
  });
  img.src = path;
  figure.querySelector(".frame").append(img);
  target.append(figure);
  return figure;
}

// auto's bytes are those of one of the explicit formats: say which one the browser got.
function nameAuto() {
  const auto = document.querySelector('#formats .tile[data-name="auto"]');
  if (!auto || !auto.dataset.bytes) return;
  const same = [...document.querySelectorAll("#formats .tile")].find(
    (t) => t !== auto && t.dataset.bytes === auto.dataset.bytes,
  );
  if (same) auto.querySelector(".name").textContent = `auto → ${same.dataset.name}`;
}

async function compare(p, state) {
  const first = state.images.find((image) => !image.error);
  if (!first) return;
  const id = encodeURIComponent(first.image_id);
  const size = state.pick.size;
  const bg = p.bg;
  const formats = FORMATS[state.mode] || FORMATS.redirect;
  $("formats").replaceChildren();
  for (const ext of formats) {
    if (bg === "transparent" && ext === "jpg") continue;
    tile(ext, `/img/${id}/${size}/${bg}.${ext}`, $("formats"));
  }
  $("presets").replaceChildren();
  try {
    const listing = await getJSON("/presets");
    const usable = listing.presets.filter((preset) => preset.available);
    $("presets-note").hidden = false;
    if (!usable.length) {
      $("presets").textContent = listing.presets.length
        ? "These presets need PROXY_MODE=store."
        : "No presets: set PROXY_PRESETS_FILE (docs/presets.example.toml is an example).";
    }
    for (const preset of usable) {
      const exts = preset.format ? [preset.format] : [preset.formats[0], "auto"];
      for (const ext of exts) {
        tile(`${preset.name}.${ext} (${preset.size})`, `/img/${id}/${preset.name}.${ext}`, $("presets"));
      }
    }
  } catch (error) {
    $("presets").textContent = error.message;
  }
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(async () => {
    const state = await getJSON(`/demo/images?${params(pick())}`);
    for (const image of state.images) {
      const card = document.querySelector(`.card[data-id="${CSS.escape(image.image_id)}"]`);
      if (card) updateStatus(card, image);
    }
    showEngine(state.embedded_engine);
  }, 250);
}

function swatches() {
  $("swatches").replaceChildren(
    ...SWATCHES.map((hex) => {
      const button = document.createElement("button");
      button.type = "button";
      button.title = `#${hex}`;
      button.style.background = `#${hex}`;
      button.addEventListener("click", () => {
        $("color").value = `#${hex}`;
        $("transparent").checked = false;
        render();
      });
      return button;
    }),
  );
}

form.addEventListener("change", () => render());
form.addEventListener("input", (event) => { if (event.target.type === "color") render(); });
swatches();
render();
