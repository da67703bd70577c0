// One run: status/output/error live, every output stream live with history
// from any index, and a form per input stream to send JSON into the run.
import { isFinished } from "./client.js";
import {
  el, fmtDuration, fmtTime, makeClient, pageURL, pretty, setupTokenForm, showError,
} from "./ui.js";

const params = new URLSearchParams(location.search);
const runId = params.get("id") || params.get("run");
let client = makeClient();
let run = null;
let streamListing = true; // false once the server shows it has no stream-listing endpoint
const streams = new Map(); // key -> StreamPanel
const inputs = new Map(); // id -> InputForm

const MAX_ROWS = 2000; // rendered JSON rows per stream; older ones scroll away

/** One output stream: reads it from `startIndex`, renders by what its chunks look like. */
class StreamPanel {
  constructor(key, startIndex = 0) {
    this.key = key;
    this.count = el("span", { class: "count muted" }, "0 chunks");
    this.dot = el("span", { class: "live-dot", title: "live" });
    this.start = el("input", { class: "start-index", type: "number", min: 0, value: startIndex, "aria-label": "from index" });
    this.body = el("div", { class: "body" });
    this.root = el("section", { class: "card stream", dataset: { key, mode: "" } },
      el("header", {},
        this.dot, el("span", { class: "key" }, key), this.count,
        el("span", { class: "controls" },
          el("label", { class: "muted" }, "from index ", this.start),
          el("button", { class: "secondary reload", type: "button", onclick: () => this.open(Number(this.start.value) || 0) }, "Load"),
        ),
      ),
      this.body,
    );
    document.getElementById("streams-empty")?.remove();
    document.getElementById("streams").append(this.root);
    this.open(startIndex);
  }

  open(startIndex) {
    this.sub?.close();
    this.mode = null;
    this.n = 0;
    this.first = null;
    this.chunks = null;
    this.body.replaceChildren();
    this.root.dataset.mode = "";
    this.root.dataset.length = "0";
    this.dot.classList.add("live");
    this.sub = client.subscribeStream(runId, this.key, (chunk) => this.add(chunk), {
      startIndex,
      timeoutSeconds: 600,
      onEnd: (err) => {
        this.dot.classList.remove("live");
        this.root.dataset.ended = "true";
        if (err) this.body.append(el("div", { class: "result bad" }, `stream error: ${err.message}`));
      },
    });
  }

  static modeOf(data) {
    if (typeof data === "string") return "text";
    if (data && typeof data === "object" && !Array.isArray(data) && typeof data.percent === "number") return "progress";
    return "rows";
  }

  add(chunk) {
    const mode = StreamPanel.modeOf(chunk.data);
    if (this.mode === null) this.setMode(mode);
    else if (mode !== this.mode && this.mode !== "rows") this.setMode("rows"); // mixed: show everything as rows
    this.first ??= chunk.index;
    this.n += 1;
    this.root.dataset.length = String(chunk.index + 1);
    this.count.textContent = `${this.n} chunks` + (this.first > 0 ? ` (from #${this.first})` : "");
    this.render(chunk);
  }

  setMode(mode) {
    const previous = this.chunks || [];
    this.mode = mode;
    this.root.dataset.mode = mode;
    this.chunks = [];
    if (mode === "text") {
      this.text = el("pre", { class: "text" });
      this.body.replaceChildren(this.text);
    } else if (mode === "progress") {
      this.bar = el("div", { class: "bar", style: "width:0%" });
      this.label = el("div", { class: "progress-label mono" });
      this.body.replaceChildren(el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, this.bar), this.label);
    } else {
      this.rows = el("ol", { class: "rows" });
      this.body.replaceChildren(this.rows);
      for (const c of previous) this.render(c);
    }
  }

  render(chunk) {
    // keep what a switch to rows would need (bounded)
    this.chunks.push(chunk);
    if (this.chunks.length > MAX_ROWS) this.chunks.shift();
    const stick = this.body.scrollTop + this.body.clientHeight >= this.body.scrollHeight - 8;
    if (this.mode === "text") {
      this.text.append(document.createTextNode(chunk.data));
    } else if (this.mode === "progress") {
      const pct = Math.max(0, Math.min(100, chunk.data.percent));
      this.bar.style.width = `${pct}%`;
      this.bar.parentElement.setAttribute("aria-valuenow", String(pct));
      const { percent, ...rest } = chunk.data;
      const extra = Object.keys(rest).length ? ` — ${Object.entries(rest).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ")}` : "";
      this.label.textContent = `${pct}%${extra}`;
      this.root.dataset.percent = String(pct);
    } else {
      this.rows.append(el("li", { dataset: { index: chunk.index } },
        el("span", { class: "idx mono" }, `#${chunk.index}`),
        el("code", {}, JSON.stringify(chunk.data)),
      ));
      if (this.rows.childElementCount > MAX_ROWS) this.rows.firstElementChild.remove();
    }
    if (stick) this.body.scrollTop = this.body.scrollHeight;
  }
}

/** A form that sends JSON to one of the run's input streams. */
class InputForm {
  constructor(id, info = {}) {
    this.id = id;
    this.data = el("textarea", { class: "input-data", rows: 2, "aria-label": `data for ${id}` }, "{}");
    this.result = el("span", { class: "result" });
    this.meta = el("span", { class: "meta muted" });
    this.button = el("button", { class: "send", type: "submit" }, "Send");
    this.root = el("form", { class: "card input-form", dataset: { streamId: id }, autocomplete: "off", onsubmit: (ev) => this.send(ev) },
      el("header", {}, el("span", { class: "key" }, id), this.meta),
      el("div", { class: "row" }, this.data, this.button),
      this.result,
    );
    document.getElementById("inputs-empty")?.remove();
    document.getElementById("inputs").append(this.root);
    this.update(info);
  }

  update(info) {
    const bits = [];
    if (info.messages != null) bits.push(`${info.messages} sent`);
    if (info.waiting) bits.push("the run is waiting for this");
    this.meta.textContent = bits.join(" · ");
    this.root.dataset.waiting = info.waiting ? "true" : "false";
    this.button.disabled = isFinished(run);
  }

  async send(ev) {
    ev.preventDefault();
    let data;
    try {
      data = JSON.parse(this.data.value);
    } catch (err) {
      this.say(false, `not valid JSON: ${err.message}`);
      return;
    }
    this.button.disabled = true;
    try {
      await client.sendInput(runId, this.id, data);
      this.sent = (this.sent || 0) + 1;
      this.root.dataset.sent = String(this.sent);
      this.say(true, `sent at ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      this.say(false, err.message);
    } finally {
      this.button.disabled = isFinished(run);
    }
  }

  say(ok, text) {
    this.result.className = `result ${ok ? "ok" : "bad"}`;
    this.result.textContent = text;
  }
}

function renderRun(r) {
  run = r;
  document.title = `rayflow — ${r.id} ${r.status}`;
  const badge = document.getElementById("run-status");
  badge.textContent = r.status;
  badge.dataset.status = r.status;
  badge.className = `badge status-${String(r.status).toLowerCase()}`;
  document.getElementById("run-task").textContent = r.taskIdentifier || r.taskId || "";
  document.getElementById("run-created").textContent = fmtTime(r.createdAt);
  document.getElementById("run-duration").textContent = fmtDuration(r.startedAt || r.createdAt, r.finishedAt);
  document.getElementById("run-attempts").textContent = r.attemptCount ?? "—";
  // the run blocked the event loop it shares with other runs (docs/architecture.md)
  const blocked = r.loopBlockedMs;
  document.getElementById("run-blocked-label").hidden = !blocked;
  const blockedBox = document.getElementById("run-blocked");
  blockedBox.hidden = !blocked;
  blockedBox.textContent = blocked
    ? `blocked its actor's event loop for ${blocked} ms (every run there waited): move blocking work to asyncio.to_thread`
    : "";
  document.getElementById("run-payload").textContent = pretty(r.payload);
  document.getElementById("run-metadata").textContent = r.metadata ? pretty(r.metadata) : "—";
  const out = document.getElementById("run-output");
  if (isFinished(r)) {
    out.textContent = r.output === undefined || r.output === null ? "(none)" : pretty(r.output);
    out.classList.remove("empty");
  }
  const errBox = document.getElementById("run-error-box");
  errBox.hidden = !r.error;
  if (r.error) document.getElementById("run-error").textContent = pretty(r.error);
  document.getElementById("cancel-button").hidden = isFinished(r);
  for (const form of inputs.values()) form.update({});
}

async function refreshStreams() {
  if (!streamListing) return;
  let listing;
  try {
    listing = await client.listStreams(runId);
  } catch (err) {
    if (err.status === 404 && run) streamListing = false; // the run exists: the endpoint does not
    else showError(err);
    return;
  }
  for (const s of listing.outputs || []) {
    const key = s.key ?? s;
    if (!streams.has(key)) streams.set(key, new StreamPanel(key, 0));
  }
  for (const i of listing.inputs || []) {
    const id = i.id ?? i;
    if (!inputs.has(id)) inputs.set(id, new InputForm(id, i));
    else inputs.get(id).update(i);
  }
}

async function watch() {
  const live = document.getElementById("live");
  live.classList.add("live");
  try {
    for await (const r of client.watchRun(runId)) {
      renderRun(r);
      showError(null);
    }
  } catch (err) {
    showError(err);
  } finally {
    live.classList.remove("live");
  }
}

async function main() {
  if (!runId) {
    showError(new Error("no run id: open this page as run.html?id=<run id>"));
    return;
  }
  document.getElementById("run-id").textContent = runId;
  document.getElementById("home-link").href = pageURL("./");
  for (const key of (params.get("streams") || "").split(",").filter(Boolean)) {
    streams.set(key, new StreamPanel(key, Number(params.get("start")) || 0));
  }
  for (const id of (params.get("inputs") || "").split(",").filter(Boolean)) {
    inputs.set(id, new InputForm(id));
  }
  try {
    renderRun(await client.retrieveRun(runId));
  } catch (err) {
    showError(err);
  }
  await refreshStreams();
  watch();
  // New streams appear while the run executes; look again until it finishes (and once after).
  const timer = setInterval(async () => {
    await refreshStreams();
    if (isFinished(run)) clearInterval(timer);
  }, 1000);
}

document.getElementById("add-stream-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = document.getElementById("add-stream-key").value.trim();
  const start = Number(document.getElementById("add-stream-start").value) || 0;
  if (!key) return;
  if (streams.has(key)) streams.get(key).open(start);
  else streams.set(key, new StreamPanel(key, start));
});

document.getElementById("add-input-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = document.getElementById("add-input-id").value.trim();
  if (id && !inputs.has(id)) inputs.set(id, new InputForm(id));
});

document.getElementById("cancel-button").addEventListener("click", async () => {
  try {
    await client.cancelRun(runId);
  } catch (err) {
    showError(err);
  }
});

setupTokenForm(() => {
  client = makeClient();
  location.reload();
});
main();
