// fairjax local page. Every piece of user or model text reaches the DOM through textContent or
// createTextNode, never innerHTML, so a posting containing HTML or <script> shows as text.
"use strict";

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return typeof x === "number" ? x.toFixed(digits === undefined ? 2 : digits) : String(x);
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

async function postJSON(url, body) {
  for (let attempt = 0; ; attempt++) {
    const resp = await fetch(url, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    if (resp.status === 503 && attempt < 30) {  // rewrite queue full: wait as told, then retry
      const wait = parseFloat(resp.headers.get("Retry-After") || "2");
      await sleep(wait * 1000);
      continue;
    }
    const data = await resp.json().catch(() => ({error: "HTTP " + resp.status}));
    if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
    return data;
  }
}

// The posting with its coded words wrapped in <mark class="coded masculine|feminine">.
function highlighted(text, words) {
  const frag = document.createDocumentFragment();
  let pos = 0;
  for (const w of words.slice().sort((a, b) => a.start - b.start)) {
    if (w.start < pos) continue;
    frag.appendChild(document.createTextNode(text.slice(pos, w.start)));
    const m = el("mark", text.slice(w.start, w.end), "coded " + w.kind);
    m.title = w.kind + "-coded";
    m.dataset.kind = w.kind;
    frag.appendChild(m);
    pos = w.end;
  }
  frag.appendChild(document.createTextNode(text.slice(pos)));
  return frag;
}

function diffNodes(diff) {
  const frag = document.createDocumentFragment();
  for (const part of diff) {
    if (part.op === "insert") frag.appendChild(el("ins", part.text));
    else if (part.op === "delete") frag.appendChild(el("del", part.text));
    else frag.appendChild(document.createTextNode(part.text));
  }
  return frag;
}

function row(table, cells, header) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => tr.appendChild(el(header || i === 0 ? "th" : "td", c)));
  table.appendChild(tr);
}

function minIR(score) {
  let lo = null;
  for (const groups of Object.values(score.impact_ratios || {}))
    for (const v of Object.values(groups)) if (v !== null && (lo === null || v < lo)) lo = v;
  return lo;
}

function renderDiversity(table, s) {
  table.replaceChildren();
  row(table, ["attribute", "group", "share of matched", "selection rate", "impact ratio"], true);
  for (const [attr, groups] of Object.entries(s.impact_ratios)) {
    for (const g of Object.keys(groups)) {
      const ir = groups[g];
      row(table, [attr, g, fmt(s.diversity.shares[attr][g]), fmt(s.selection_rates[attr][g]),
                  fmt(ir) + (ir !== null && ir < 0.8 ? " (below 4/5)" : "")]);
    }
  }
  row(table, ["diversity reward", "", fmt(s.diversity.reward, 1),
              s.diversity.n_matched + " matched", ""]);
}

function renderBeforeAfter(table, b, a) {
  table.replaceChildren();
  row(table, ["", "original", "rewrite"], true);
  row(table, ["verdict", b.verdict, a.verdict]);
  row(table, ["masculine / feminine words", b.masculine + " / " + b.feminine, a.masculine + " / " + a.feminine]);
  row(table, ["diversity reward", fmt(b.diversity.reward, 1), fmt(a.diversity.reward, 1)]);
  row(table, ["lowest impact ratio", fmt(minIR(b)), fmt(minIR(a))]);
  row(table, ["contact data (chars / char)", fmt(b.pii.pii_per_char, 3), fmt(a.pii.pii_per_char, 3)]);
}

function download(name, type, content) {
  const url = URL.createObjectURL(new Blob([content], {type: type}));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

let lastRewrite = "";

async function checkOne() {
  const text = $("posting").value;
  showError("");
  if (!text.trim()) { showError("Paste a posting first."); return; }
  $("check").disabled = true;
  $("status").textContent = "checking…";
  try {
    // scores first (fast), then the rewrite (a model may take a while)
    const s = await postJSON("/api/score", {text: text});
    $("diff").replaceChildren();
    $("before-after").replaceChildren();
    $("verdict").textContent = s.verdict;
    $("counts").textContent = s.masculine + " masculine-coded, " + s.feminine + " feminine-coded words";
    $("highlighted").replaceChildren(highlighted(text, s.coded_words));
    renderDiversity($("diversity"), s);
    const pc = Object.entries(s.pii.counts).filter(([, n]) => n > 0);
    $("pii").textContent = pc.length ? pc.map(([k, n]) => n + " " + k).join(", ") : "none found";
    $("result").hidden = false;
    $("status").textContent = "rewriting…";
    const r = await postJSON("/api/rewrite", {text: text});
    $("diff").replaceChildren(diffNodes(r.diff));
    renderBeforeAfter($("before-after"), r.before, r.after);
    lastRewrite = r.rewrite;
    $("result").hidden = false;
    $("status").textContent = "done";
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  } finally {
    $("check").disabled = false;
  }
}

let batchRows = [];

function csvCell(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
}

const CSV_COLUMNS = ["line", "id", "verdict", "masculine", "feminine", "diversity_reward",
                     "min_impact_ratio", "rewrite", "verdict_after", "diversity_reward_after",
                     "min_impact_ratio_after", "text"];

async function scoreFile() {
  showError("");
  const f = $("file").files[0];
  if (!f) { showError("Choose a .txt, .jsonl or .csv file first."); return; }
  const form = new FormData();
  form.append("file", f);
  $("upload").disabled = true;
  try {
    const resp = await fetch("/api/parse", {method: "POST", body: form});
    const data = await resp.json().catch(() => ({error: "HTTP " + resp.status}));
    if (!resp.ok) throw new Error(data.error || ("HTTP " + resp.status));
    batchRows = [];
    $("batch-name").textContent = data.name;
    $("batch").hidden = false;
    const body = $("batch-table").querySelector("tbody");
    body.replaceChildren();
    $("download-jsonl").disabled = $("download-csv").disabled = true;
    const prog = $("progress");
    prog.max = data.n;
    prog.value = 0;
    for (const [i, p] of data.postings.entries()) {
      $("progress-text").textContent = "posting " + (i + 1) + " of " + data.n;
      const r = await postJSON("/api/rewrite", {text: p.text});
      const b = r.before, a = r.after;
      const out = {line: p.line, id: p.id, verdict: b.verdict, masculine: b.masculine,
                   feminine: b.feminine, diversity_reward: b.diversity.reward,
                   min_impact_ratio: minIR(b), rewrite: r.rewrite, verdict_after: a.verdict,
                   diversity_reward_after: a.diversity.reward, min_impact_ratio_after: minIR(a),
                   text: p.text, impact_ratios: b.impact_ratios, impact_ratios_after: a.impact_ratios};
      batchRows.push(out);
      const tr = document.createElement("tr");
      [out.line, out.id, out.verdict, out.masculine + " / " + out.feminine,
       fmt(out.diversity_reward, 1), fmt(out.min_impact_ratio), out.verdict_after,
       fmt(out.diversity_reward_after, 1)].forEach((c) => tr.appendChild(el("td", c)));
      body.appendChild(tr);
      prog.value = i + 1;
    }
    $("progress-text").textContent = "done: " + data.n + " postings";
    $("download-jsonl").disabled = $("download-csv").disabled = false;
  } catch (e) {
    showError(e.message);
  } finally {
    $("upload").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("check").addEventListener("click", checkOne);
  $("upload").addEventListener("click", scoreFile);
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(lastRewrite);
      $("copy-status").textContent = "copied";
    } catch (e) {
      $("copy-status").textContent = "copy failed: " + e.message;
    }
  });
  $("download").addEventListener("click", () => download("rewrite.txt", "text/plain", lastRewrite));
  $("download-jsonl").addEventListener("click", () => download(
    "fairjax_results.jsonl", "application/jsonl",
    batchRows.map((r) => JSON.stringify(r)).join("\n") + "\n"));
  $("download-csv").addEventListener("click", () => download(
    "fairjax_results.csv", "text/csv",
    [CSV_COLUMNS.join(",")].concat(batchRows.map((r) => CSV_COLUMNS.map((c) => csvCell(r[c])).join(",")))
      .join("\r\n") + "\r\n"));
});
