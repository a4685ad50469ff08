// Search page: a text (or photo) query -> a grid of the nearest images, with their scores.
"use strict";

const results = document.getElementById("results");

function scoreText(found, score) {
  return found.metric === "ip" ? `cosine ${score.toFixed(3)}` : `distance ${score.toFixed(3)}`;
}

function render(found) {
  results.replaceChildren();
  if (!found.results.length) {
    results.append(el("p", {class: "empty"}, "No results."));
    return;
  }
  for (const hit of found.results) {
    if (hit.thumbnail_url) {
      results.append(el("a", {class: "card result", href: hit.image_url, target: "_blank", title: hit.id,
                              dataset: {rank: hit.rank, name: hit.name},
                              onclick: (event) => openFile(event, hit.image_url)},
        apiImage(hit.thumbnail_url, {alt: hit.name, loading: "lazy"}),
        el("div", {class: "meta"},
          el("span", {class: "rank"}, `#${hit.rank}`),
          el("span", {class: "name"}, hit.name),
          el("span", {class: "score"}, scoreText(found, hit.score)))));
    } else {
      results.append(el("div", {class: "card result text-hit", dataset: {rank: hit.rank}},
        el("span", {class: "rank"}, `#${hit.rank}`), " ", hit.id,
        el("div", {class: "score"}, scoreText(found, hit.score))));
    }
  }
  setStatus(`${found.results.length} ${found.target} nearest to “${found.query}” (${found.order})`, "ok");
}

async function run(request) {
  setStatus("Searching…");
  try {
    render(await request());
  } catch (e) {
    results.replaceChildren();
    setStatus(e.message, "error");
  }
}

document.getElementById("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const query = document.getElementById("query").value;
  const top_k = Number(document.getElementById("top-k").value);
  const target = document.getElementById("target").value;
  run(() => postJson("/search/text", {query, top_k, target}));
});

document.getElementById("image-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = document.getElementById("image-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("top_k", document.getElementById("top-k").value);
  form.append("target", document.getElementById("target").value);
  run(() => api("/search/image", {method: "POST", body: form}));
});

showService().then((health) => {
  if (health && !health.search) setStatus("This server has no search index: start emit serve with --index IDX.", "error");
});

// the server's limits (--max-top-k, the longest query), so the form refuses what the server would
api("/info").then((info) => {
  const topK = document.getElementById("top-k");
  topK.max = info.limits.max_top_k;
  if (Number(topK.value) > info.limits.max_top_k) topK.value = info.limits.max_top_k;
  document.getElementById("query").maxLength = info.limits.max_query_chars;
  if (info.search && !info.search.texts) document.querySelector('#target option[value="texts"]').disabled = true;
}).catch(() => { /* the form's defaults stay */ });
