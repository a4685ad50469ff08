// Shared helpers of the emit pages: DOM building, JSON calls whose errors carry the server's message.
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

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.message ? body.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
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
