// Shared helpers of the emit pages: DOM building, JSON calls whose errors carry the server's message,
// and the API token.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// The API token of a server started with --api-token: given once in the address (?token=...,
// then removed from the address bar and history) or typed into the token field; kept in this
// tab's sessionStorage only, and sent as "Authorization: Bearer ..." with every API call.
const TOKEN_KEY = "emit-api-token";
(function tokenFromAddress() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  sessionStorage.setItem(TOKEN_KEY, token.trim());
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
})();

function apiToken() {
  return sessionStorage.getItem(TOKEN_KEY) || null;
}

function withToken(options) {
  const token = apiToken();
  if (!token) return options;
  const headers = new Headers((options && options.headers) || {});
  headers.set("Authorization", `Bearer ${token}`);
  return {...(options || {}), headers};
}

function askForToken(message) {
  const form = document.getElementById("token-form");
  if (!form) return;
  form.hidden = false;
  document.getElementById("token-message").textContent = message;
  document.getElementById("token-input").focus();
}

function setupTokenForm() {
  const form = document.getElementById("token-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
    window.location.reload();  // every call of the page again, now with the token
  });
}
setupTokenForm();

async function api(path, options) {
  const response = await fetch(path, withToken(options));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
    if (response.status === 401) askForToken(message);
    throw new Error(message);
  }
  return body;
}

// A link or <img> cannot send a header: with a token, a file is fetched with it and shown from
// a local blob: address. Images are fetched once per address.
const blobs = new Map();

async function fileUrl(path, {cache = true} = {}) {
  if (!apiToken()) return path;
  if (cache && blobs.has(path)) return blobs.get(path);
  const made = (async () => {
    const response = await fetch(path, withToken());
    if (!response.ok) {
      if (response.status === 401) askForToken("this server needs its API token");
      throw new Error(`${response.status} ${response.statusText}`);
    }
    return URL.createObjectURL(await response.blob());
  })();
  if (cache) {
    blobs.set(path, made);
    made.catch(() => blobs.delete(path));  // a later render tries again
  }
  return made;
}

function apiImage(path, attrs) {
  // an <img> of an API file; with a token its address is filled in once fetched
  if (!apiToken()) return el("img", {...attrs, src: path});
  const node = el("img", attrs);
  fileUrl(path).then((url) => { node.src = url; }).catch(() => { node.alt = `${attrs.alt || ""} (not loaded)`; });
  return node;
}

async function openFile(event, path) {
  // a link to an API file, opened in a new tab: with a token, as a blob: address
  if (!apiToken()) return;
  event.preventDefault();
  const tab = window.open("", "_blank");  // now, while the click still allows a new tab
  try {
    const url = await fileUrl(path);
    if (tab) tab.location = url;
  } catch (e) {
    if (tab) tab.close();
  }
}

function postJson(path, data) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)});
}

function setStatus(text, kind) {
  const node = document.getElementById("status");
  node.textContent = text || "";
  node.className = "status" + (kind ? " " + kind : "");
}

async function showService() {
  try {
    const health = await api("/health");
    const parts = [`emit ${health.version}`];
    if (!health.search) parts.push("no search index");
    if (!health.pairing) parts.push("no pairing model");
    document.getElementById("service").textContent = parts.join(" · ");
    return health;
  } catch (e) {
    document.getElementById("service").textContent = "server unreachable";
    return null;
  }
}
