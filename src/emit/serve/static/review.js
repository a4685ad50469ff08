// Pairing review: load a batch, see each image's proposed tag and confidence, change a tag with
// one click on its chip, and export the batch's final_json.json (written by the server).
// A batch is a folder of products, an upload, or a review queue (emit pair predict --review-below):
// /review?queue=<file under the products root> opens a queue on load, least confident first.
"use strict";

const DOUBTFUL = 0.5;  // proposals less sure than this are highlighted
let batch = null;       // the batch as the server proposed it
let chosen = {};        // product id -> the tag chosen for each image
let saved = null;       // JSON of the tags last exported (null: never exported)

function percent(confidence) {
  return confidence === null ? "unreadable" : `${Math.round(confidence * 100)}%`;
}

function imageConfidence(image) {
  // a queue's proposals have a confidence per product only: an image without one is unreadable
  // only if it has no tag either
  if (image.confidence === null && image.tag !== null) return "";
  return percent(image.confidence);
}

function imageCard(product, image) {
  const pid = product.product_id;
  const tag = chosen[pid][image.index];
  const changed = tag !== image.tag;
  const shown = imageConfidence(image);
  const classes = ["card", "image-card"];
  if (changed) classes.push("changed");
  if (image.confidence !== null && image.confidence < DOUBTFUL) classes.push("doubtful");
  const chips = product.tags.map((option) => el("button", {
    type: "button",
    class: "chip" + (option === tag ? " selected" : "") + (option === image.tag ? " proposed" : ""),
    dataset: {tag: option},
    "aria-pressed": option === tag ? "true" : "false",
    title: option === image.tag ? "proposed by the model" : "choose this tag",
    onclick: () => choose(product, image, option),
  }, option));
  return el("div", {class: classes.join(" "), dataset: {product: pid, index: image.index}},
    apiImage(image.image_url, {alt: image.name, loading: "lazy"}),
    el("div", {class: "meta"},
      el("span", {class: "name"}, image.name),
      el("span", {class: "proposal"}, "proposed: ", image.tag === null ? "—" : image.tag,
        shown ? [" · ", el("span", {class: "confidence"}, shown)] : null,
        changed ? el("strong", {}, " · changed") : null)),
    el("div", {class: "chips"}, chips));
}

function productConfidence(product) {
  // from a review queue: the probability that all the product's images are right
  if (product.confidence === null || product.confidence === undefined) return null;
  const low = product.confidence < DOUBTFUL;
  return el("span", {class: "product-confidence" + (low ? " low" : ""),
    title: "probability that all its images are right, as predicted"}, `${percent(product.confidence)} sure`);
}

function productSection(product) {
  return el("section", {class: "product", dataset: {product: product.product_id}},
    el("h3", {}, product.product_id, productConfidence(product),
      el("span", {class: "muted"}, `${product.images.length} images · ${product.tags.length} tags · ${product.assign}`)),
    el("div", {class: "grid"}, product.images.map((image) => imageCard(product, image))));
}

function changedCount() {
  let n = 0;
  for (const product of batch.products) {
    product.images.forEach((image) => { if (chosen[product.product_id][image.index] !== image.tag) n += 1; });
  }
  return n;
}

function unsaved() {
  // changes a person made that no export holds yet
  return batch !== null && JSON.stringify(chosen) !== (saved === null ? JSON.stringify(proposed()) : saved);
}

function proposed() {
  const tags = {};
  for (const product of batch.products) tags[product.product_id] = product.images.map((image) => image.tag);
  return tags;
}

function renderSummary() {
  const images = batch.products.reduce((n, p) => n + p.images.length, 0);
  let state = "";
  if (saved !== null) state = unsaved() ? " · changed since the last export: export again" : " · exported";
  const queue = batch.queue
    ? ` · review queue: ${batch.queue.listed} products below ${percent(batch.queue.threshold)}, least confident first`
    : "";
  document.getElementById("batch-summary").textContent =
    `${batch.products.length} products · ${images} images · ${changedCount()} changed · assignment: ${batch.assign}${queue}${state}`;
}

function renderBatch() {
  document.getElementById("batch").hidden = false;
  document.getElementById("batch-title").textContent = batch.label;
  document.getElementById("products").replaceChildren(...batch.products.map(productSection));
  const problems = document.getElementById("problems");
  problems.replaceChildren(...batch.problems.slice(0, 20).map((p) => el("div", {}, `${p.where}: ${p.record}: ${p.what}`)));
  document.getElementById("export-result").hidden = true;
  const link = document.getElementById("download-link");
  link.hidden = !batch.download_url;
  if (batch.download_url) setDownload(link, batch.download_url).catch(() => { link.hidden = true; });
  renderSummary();
}

async function setDownload(link, url) {
  // the export changes with each one: fetched again (with a token), never from the image cache
  link.href = await fileUrl(url, {cache: false});
}

function choose(product, image, option) {
  chosen[product.product_id][image.index] = option;
  const old = document.querySelector(
    `.image-card[data-product="${CSS.escape(product.product_id)}"][data-index="${image.index}"]`);
  old.replaceWith(imageCard(product, image));
  renderSummary();
}

function mayReplaceBatch() {
  return !unsaved() || window.confirm("The tags you changed in this batch are not exported yet. Load another batch anyway?");
}

function start(view) {
  batch = view;
  chosen = proposed();
  saved = null;
  renderBatch();
  rememberQueue(batch.queue ? batch.queue.file : null);
  setStatus(`Loaded ${batch.label}. Click a tag to change it, then export.`, "ok");
}

function rememberQueue(file) {
  // the address names the open queue, so a reload or a shared link opens it again
  const url = new URL(window.location.href);
  if (file) url.searchParams.set("queue", file);
  else url.searchParams.delete("queue");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
}

async function openQueue(file) {
  if (!mayReplaceBatch()) return;
  const view = await act(`Opening the review queue ${file}…`, () => postJson("/review/queue", {file}));
  if (view) start(view);
}

async function act(message, request) {
  setStatus(message);
  for (const button of document.querySelectorAll("button")) button.disabled = true;
  try {
    return await request();
  } catch (e) {
    setStatus(e.message, "error");
    return null;
  } finally {
    for (const button of document.querySelectorAll("button")) button.disabled = false;
  }
}

document.getElementById("folder-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const folder = document.getElementById("folder").value;
  if (!mayReplaceBatch()) return;
  const view = await act(`Loading ${folder} and proposing tags…`, () => postJson("/review/load", {folder}));
  if (view) start(view);
});

document.getElementById("queue-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = document.getElementById("queue").value;
  if (file) await openQueue(file);
});

document.getElementById("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!mayReplaceBatch()) return;
  const form = new FormData();
  for (const file of document.getElementById("upload-images").files) form.append("images", file);
  for (const line of document.getElementById("upload-tags").value.split("\n")) {
    if (line.trim()) form.append("tags", line.trim());
  }
  form.append("product_id", document.getElementById("upload-pid").value || "upload");
  const view = await act("Uploading and proposing tags…", () => api("/review/upload", {method: "POST", body: form}));
  if (view) start(view);
});

document.getElementById("export-button").addEventListener("click", async () => {
  if (!batch) return;
  const tags = JSON.parse(JSON.stringify(chosen));
  const result = await act("Exporting…", () => postJson(`/review/batches/${batch.batch_id}/export`, {tags}));
  if (!result) return;
  saved = JSON.stringify(tags);
  renderSummary();
  const link = document.getElementById("download-link");
  let fetched = true;
  try {
    await setDownload(link, result.download_url);  // before the result shows: its links then work
  } catch (e) {
    fetched = false;
  }
  link.hidden = false;
  const box = document.getElementById("export-result");
  box.hidden = false;
  box.replaceChildren(`Saved final_json.json for ${result.products} products (${result.images} images, `
    + `${result.changed} changed) to `, el("code", {id: "export-path"}, result.path), ". ",
    el("a", {href: link.href, download: "final_json.json"}, "Download"));
  if (fetched) setStatus("Exported.", "ok");
  else setStatus("Exported, but the file could not be fetched for the download link.", "error");
});

async function listFolders() {
  try {
    const found = await api("/review/folders");
    document.getElementById("folders").replaceChildren(...found.folders.map((f) => el("option", {value: f})));
    if (found.folders.length && !document.getElementById("folder").value) {
      document.getElementById("folder").placeholder = `e.g. ${found.folders[0]}`;
    }
    if (found.root === null) document.getElementById("folder-form").hidden = true;
  } catch (e) { /* the upload form still works */ }
}

async function listQueues() {
  try {
    const found = await api("/review/queues");
    const select = document.getElementById("queue");
    const wanted = new URL(window.location.href).searchParams.get("queue");
    const names = wanted && !found.queues.includes(wanted) ? [wanted, ...found.queues] : found.queues;
    select.append(...names.map((f) => el("option", {value: f}, f)));
    if (wanted) select.value = wanted;
    document.getElementById("queue-form").hidden = found.root === null || names.length === 0;
  } catch (e) { /* folders and uploads still work */ }
}

function queueFromAddress() {
  // /review?queue=out/final_json.review.json opens that queue as the page loads
  const file = new URL(window.location.href).searchParams.get("queue");
  if (file) openQueue(file);
}

window.addEventListener("beforeunload", (event) => {
  if (unsaved()) event.preventDefault();  // the browser asks before the changes are lost
});

showService().then((health) => {
  if (health && !health.pairing) setStatus("This server has no pairing model: start emit serve with --pairing-model MODEL.", "error");
});
listFolders();
listQueues();
queueFromAddress();
