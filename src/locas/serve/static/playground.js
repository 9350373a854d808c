// The locas playground: paste a text, memorise it with a server job, ask with and without the memory.
// Plain ES module, no build step; every call goes to this server's own API (docs/SERVING.md).
//
//   memorise: POST /v1/memories {text, objective, preset, settings}  ->  poll GET /v1/jobs/{id}
//   memories: GET /v1/memories, GET /v1/memories/{id}/content, DELETE /v1/memories/{id}
//   ask:      POST /v1/chat/completions (or /v1/completions for a model without a chat template), streamed

const $ = (id) => document.getElementById(id);
const KEY = "locas-api-key"; // kept in the tab's session storage only
const POLL_MS = 400;
const state = { server: null, memories: [], job: null };

// ---- the API ---------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try { message = (await response.json()).error.message || message; } catch (_) { /* not JSON */ }
  if (response.status === 401) message = `${message}. Enter a valid API key at the top right.`;
  return new ApiError(response.status, message);
}

async function api(path, { method = "GET", body } = {}) {
  let response;
  try {
    response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, `the server cannot be reached (${err.message}); is locas serve still running?`);
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

// ---- messages ----------------------------------------------------------------------------------------
function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

function guarded(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (err) { say(err.message); }
  };
}

// ---- the server ------------------------------------------------------------------------------------
async function loadServer() {
  const info = await api("/v1/server");
  state.server = info;
  const style = info.chat_template ? "chat prompts" : "plain prompts (no chat template)";
  $("server-line").textContent = `${info.model} · context ${info.context_length} tokens · ${style} · locas ${info.version}`
    + (info.api_keys ? " · API key required" : "");
  fill($("objective"), info.objectives.map((o) => [o, o]), info.default_objective);
  fill($("preset"), [["", "(defaults)"], ...Object.entries(info.presets).map(([name, help]) => [name, name, help])], "");
}

function fill(select, options, chosen) {
  select.replaceChildren(...options.map(([value, label, title]) => {
    const o = new Option(label, value, false, value === chosen);
    if (title) o.title = title;
    return o;
  }));
}

// ---- memories ----------------------------------------------------------------------------------------
function size(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${(bytes / 1024).toFixed(0)} KB`;
}

async function refreshMemories(select) {
  const list = await api("/v1/memories");
  state.memories = list.data;
  const rows = list.data.map((m) => {
    const tr = document.createElement("tr");
    tr.dataset.id = m.id;
    for (const [value, num] of [[m.id], [m.tokens ?? "–", true], [m.width, true], [m.objective ?? "–"], [size(m.bytes), true]]) {
      const td = document.createElement("td");
      td.textContent = value;
      if (num) td.className = "num";
      tr.append(td);
    }
    const actions = document.createElement("td");
    const download = button("download", "small", guarded(() => downloadMemory(m.id)));
    const remove = button("delete", "small delete", guarded(() => deleteMemory(m.id)));
    actions.append(download, " ", remove);
    tr.append(actions);
    return tr;
  });
  $("memories").tBodies[0].replaceChildren(...rows);
  $("no-memories").hidden = rows.length > 0;
  const ids = list.data.map((m) => [m.id, m.id]);
  const a = select ?? $("memory-a").value;
  fill($("memory-a"), ids, ids.some(([id]) => id === a) ? a : ids.at(-1)?.[0]);
  const b = $("memory-b").value;
  fill($("memory-b"), [["", "(nothing)"], ...ids], b);
  $("ask").disabled = false;
}

function button(label, cls, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = cls;
  b.addEventListener("click", onclick);
  return b;
}

async function downloadMemory(id) {
  const response = await fetch(`/v1/memories/${encodeURIComponent(id)}/content`, { headers: headers(false) });
  if (!response.ok) throw await failure(response);
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = `${id}.locas`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

async function deleteMemory(id) {
  await api(`/v1/memories/${encodeURIComponent(id)}`, { method: "DELETE" });
  say(`deleted the memory '${id}'`, "info");
  await refreshMemories();
}

// ---- memorising ----------------------------------------------------------------------------------------
async function memorize() {
  const text = $("doc").value;
  if (!text.trim()) throw new ApiError(400, "paste a text or choose a file first");
  const body = { text, objective: $("objective").value, settings: { epochs: Number($("passes").value) } };
  if ($("preset").value) body.preset = $("preset").value;
  if ($("memory-id").value.trim()) body.id = $("memory-id").value.trim();
  say("");
  $("memorize").disabled = true;
  try {
    const job = await api("/v1/memories", { method: "POST", body });
    $("job").hidden = false;
    $("job-error").hidden = true;
    $("curve-figure").hidden = true;
    await follow(job.id);
  } finally {
    $("memorize").disabled = false;
  }
}

async function follow(jobId) {
  for (;;) {
    const job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
    showJob(job);
    if (job.state === "succeeded") {
      drawCurve(job.curve);
      await refreshMemories(job.memory);
      return;
    }
    if (job.state === "failed") return;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function showJob(job) {
  const bar = $("job-progress");
  bar.value = job.progress ?? 0;
  const pct = `${Math.round(100 * (job.progress ?? 0))} %`;
  const tokens = job.tokens_total ? ` · ${job.tokens_done} of ${job.tokens_total} tokens read` : "";
  const eta = job.state === "running" && job.eta_s != null ? ` · about ${Math.ceil(job.eta_s)} s left` : "";
  const took = job.finished && job.started ? ` in ${(job.finished - job.started).toFixed(1)} s` : "";
  const words = { queued: "waiting for its turn", running: `memorising · ${pct}${tokens}${eta}`,
                  succeeded: `memorised as '${job.memory}'${took}${tokens}`, failed: "failed" };
  $("job-status").textContent = `job ${job.id}: ${words[job.state] ?? job.state}`;
  $("job-status").dataset.state = job.state;
  const error = $("job-error");
  error.hidden = job.state !== "failed";
  error.textContent = job.state === "failed" ? `The job failed: ${job.error}` : "";
}

// The curve of a finished job as a small SVG line chart: tokens read (x) against window perplexity (y).
function drawCurve(curve) {
  const svg = $("curve");
  const xs = curve?.tokens ?? [], ys = curve?.ppl ?? [];
  if (!xs.length) { $("curve-figure").hidden = true; return; }
  const W = 480, H = 200, L = 46, R = 12, T = 12, B = 30;
  const xmax = Math.max(...xs), ymin = Math.min(...ys), ymax = Math.max(...ys);
  const span = ymax - ymin || Math.max(ymax * 0.1, 1);
  const lo = Math.max(0, ymin - 0.08 * span), hi = ymax + 0.08 * span;
  const px = (x) => L + (W - L - R) * (xs.length === 1 ? 0.5 : x / xmax);
  const py = (y) => T + (H - T - B) * (1 - (y - lo) / (hi - lo));
  const ns = "http://www.w3.org/2000/svg";
  const el = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  };
  const points = xs.map((x, i) => `${px(x).toFixed(1)},${py(ys[i]).toFixed(1)}`).join(" ");
  svg.replaceChildren(
    el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    el("text", { x: L - 4, y: py(hi) + 8, "text-anchor": "end" }, hi.toFixed(1)),
    el("text", { x: L - 4, y: py(lo), "text-anchor": "end" }, lo.toFixed(1)),
    el("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `${xmax} tokens read`),
    el("text", { x: L, y: H - 8 }, "0"),
    el("text", { x: 4, y: T + 4, transform: `rotate(90 4 ${T + 4})` }, "perplexity"),
    el("polyline", { points, class: "line" }),
    ...xs.map((x, i) => el("circle", { cx: px(x), cy: py(ys[i]), r: 3 }, null)),
  );
  svg.dataset.points = String(xs.length);
  $("curve-figure").hidden = false;
}

// ---- asking ----------------------------------------------------------------------------------------------
// The same prompt as `locas ask` (locas/text/prompts.py): [text] instruction, then "Question: ..."; in the chat
// template when the model has one, else plain text ending with the server's answer cue ("\nAnswer:") and stopping
// at the line's end.
function request(question, text, memory, maxTokens) {
  const info = state.server;
  const content = `${text ? `${text}\n\n` : ""}${info.instruction}\n\nQuestion: ${question}`;
  const common = { model: info.model, max_tokens: maxTokens, temperature: 0, stream: true };
  if (memory.length) common.memory = memory;
  if (info.chat_template) {
    return ["/v1/chat/completions", { ...common, messages: [{ role: "user", content }] }];
  }
  return ["/v1/completions", { ...common, prompt: `${content}${info.answer_cue}`, stop: ["\n"] }];
}

// Cut a text from the front to about what fits the context (4 characters a token is generous; the server
// refuses what still does not fit, and that is shown).
function fitted(text) {
  const room = Math.max(state.server.context_length - 600, 64) * 3;
  return text.length > room ? [text.slice(text.length - room), true] : [text, false];
}

async function stream(column, path, body) {
  const box = $(column), out = box.querySelector(".text"), status = box.querySelector(".state");
  out.textContent = "";
  status.className = "state muted";
  status.textContent = "answering…";
  box.dataset.state = "running";
  const t0 = performance.now();
  try {
    const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) throw await failure(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", tokens = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiError(500, parsed.error.message);
        const choice = parsed.choices[0];
        const piece = choice.delta ? choice.delta.content : choice.text;
        if (piece) { out.textContent += piece; tokens += 1; }
      }
    }
    const s = ((performance.now() - t0) / 1000).toFixed(1);
    status.textContent = `${tokens} tokens in ${s} s`;
    box.dataset.state = "done";
  } catch (err) {
    status.className = "state error";
    status.textContent = err.message;
    box.dataset.state = "failed";
  }
}

async function ask() {
  const question = $("question").value.trim();
  if (!question) throw new ApiError(400, "type a question first");
  const memory = [$("memory-a").value, $("memory-b").value].filter(Boolean);
  if (!memory.length) throw new ApiError(400, "no memory to ask: memorise a text first (or upload one)");
  const maxTokens = Math.max(1, Math.min(512, Number($("max-tokens").value) || 48));
  say("");
  const runs = [stream("answer-base", ...request(question, "", [], maxTokens)),
                stream("answer-memory", ...request(question, "", memory, maxTokens))];
  $("answer-memory").querySelector("h3").textContent = `with ${memory.join(" + ")}`;
  const doc = $("answer-document");
  if ($("with-document").checked && $("doc").value.trim()) {
    const [text, cut] = fitted($("doc").value);
    doc.classList.remove("off");
    doc.querySelector("h3").textContent = cut ? "text in the prompt (its end, to fit)" : "text in the prompt";
    runs.push(stream("answer-document", ...request(question, text, [], maxTokens)));
  } else {
    doc.classList.add("off");
    doc.dataset.state = "off";
    doc.querySelector(".state").textContent = "off: tick “also with the text in the prompt” and paste the text";
    doc.querySelector(".text").textContent = "";
  }
  $("ask").disabled = true;
  try { await Promise.all(runs); } finally { $("ask").disabled = false; }
}

// ---- wiring ------------------------------------------------------------------------------------------------
function countDoc() {
  $("doc-count").textContent = `${$("doc").value.length.toLocaleString()} characters`;
}

async function start() {
  $("api-key").value = sessionStorage.getItem(KEY) ?? "";
  $("key-form").addEventListener("submit", guarded(async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem(KEY, key); else sessionStorage.removeItem(KEY);
    say("");
    await refreshMemories();
    say(key ? "key accepted" : "no key set", "info");
  }));
  $("doc").addEventListener("input", countDoc);
  $("doc-file").addEventListener("change", guarded(async () => {
    const file = $("doc-file").files[0];
    if (!file) return;
    $("doc").value = await file.text();
    countDoc();
  }));
  // a recall preset (`safe`, `balanced`, `strong`) trains the selfstudy objective
  $("preset").addEventListener("change", () => {
    const help = (state.server && state.server.presets[$("preset").value]) || "";
    if (help.startsWith("objective selfstudy")) $("objective").value = "selfstudy";
  });
  $("memorize").addEventListener("click", guarded(memorize));
  $("refresh").addEventListener("click", guarded(() => refreshMemories()));
  $("ask").addEventListener("click", guarded(ask));
  $("question").addEventListener("keydown", (e) => { if (e.key === "Enter") $("ask").click(); });
  await loadServer();
  await refreshMemories();
}

document.addEventListener("DOMContentLoaded", guarded(start));
