// One session: its facts (current run, status) refreshed every second, and
// its `.in` and `.out` records live from seq 0 — data records as JSON,
// control records (`turn-complete`, …) and S2 command records (`trim`) by
// their headers. Records a trim deleted are not shown (the stream starts
// at the first record left).
import { el, fmtTime, makeClient, pageURL, setupTokenForm, showError } from "./ui.js";

const params = new URLSearchParams(location.search);
const sessionId = params.get("id");
let client = makeClient();
let session = null;

const MAX_ROWS = 2000; // rendered records per stream; older ones scroll away

/** One of the session's streams (`in` or `out`), live. */
class RecordsPanel {
  constructor(io) {
    this.io = io;
    this.n = 0;
    this.next = 0; // the seq to resume from when the server ends a quiet read
    this.count = el("span", { class: "count muted" }, "0 records");
    this.dot = el("span", { class: "live-dot", title: "live" });
    this.rows = el("ol", { class: "rows" });
    this.body = el("div", { class: "body" }, this.rows);
    this.root = el("section", { class: "card stream", dataset: { io, length: "0" } },
      el("header", {}, this.dot, el("span", { class: "key" }, `.${io}`), this.count),
      this.body,
    );
    document.getElementById("session-streams").append(this.root);
    this.open();
  }

  open() {
    this.dot.classList.add("live");
    this.sub = client.subscribeSession(sessionId, this.io, (record) => this.add(record), {
      startIndex: this.next,
      timeoutSeconds: 600,
      onEnd: (err) => {
        this.dot.classList.remove("live");
        if (err) {
          this.body.append(el("div", { class: "result bad" }, `stream error: ${err.message}`));
        } else if (!session?.closedAt) {
          // quiet for the read's timeout, or closed since the last refresh: look again
          setTimeout(() => (session?.closedAt ? this.ended() : this.open()), 1000);
        } else {
          this.ended();
        }
      },
    });
  }

  ended() {
    this.root.dataset.ended = "true";
  }

  add(record) {
    const stick = this.body.scrollTop + this.body.clientHeight >= this.body.scrollHeight - 8;
    this.n += 1;
    this.next = record.index + 1;
    this.root.dataset.length = String(this.next);
    this.count.textContent = `${this.n} records`;
    const headers = record.headers || [];
    let kind = "data";
    let shown;
    if (headers.length && headers[0][0] === "") {
      kind = "command"; // S2's trim: the records before it are gone
      shown = el("code", { class: "muted" }, `⟨${headers[0][1]}⟩`);
    } else if (headers.some(([name]) => name === "trigger-control")) {
      kind = "control";
      const subtype = headers.find(([name]) => name === "trigger-control")[1];
      const rest = headers.filter(([name]) => name !== "trigger-control");
      shown = el("code", {}, `⟨${subtype}⟩` + (rest.length ? ` ${JSON.stringify(rest)}` : ""));
    } else {
      shown = el("code", {}, JSON.stringify(record.data));
    }
    this.rows.append(el("li", { dataset: { seq: record.index, kind } },
      el("span", { class: "idx mono" }, `#${record.index}`), shown,
    ));
    if (this.rows.childElementCount > MAX_ROWS) this.rows.firstElementChild.remove();
    if (stick) this.body.scrollTop = this.body.scrollHeight;
  }
}

function renderSession(s) {
  session = s;
  const status = s.closedAt ? "CLOSED" : s.expiresAt && Date.parse(s.expiresAt) <= Date.now() ? "EXPIRED" : "ACTIVE";
  document.title = `rayflow — ${s.externalId || s.id} ${status}`;
  const badge = document.getElementById("session-status");
  badge.textContent = status;
  badge.dataset.status = status;
  badge.className = `badge status-${status === "ACTIVE" ? "executing" : "canceled"}`;
  document.getElementById("session-external").textContent = s.externalId || "—";
  document.getElementById("session-type").textContent = s.type;
  document.getElementById("session-task").textContent = s.taskIdentifier;
  document.getElementById("session-run").replaceChildren(s.currentRunId
    ? el("a", { class: "mono", href: pageURL("run.html", { id: s.currentRunId }) }, s.currentRunId)
    : "—");
  document.getElementById("session-created").textContent = fmtTime(s.createdAt);
  document.getElementById("session-closed").textContent = s.closedAt
    ? `${fmtTime(s.closedAt)}${s.closedReason ? ` (${s.closedReason})` : ""}`
    : "—";
}

async function refresh() {
  try {
    renderSession(await client.retrieveSession(sessionId));
    showError(null);
  } catch (err) {
    showError(err);
  }
}

async function main() {
  if (!sessionId) {
    showError(new Error("no session id: open this page as session.html?id=<session id>"));
    return;
  }
  document.getElementById("session-id").textContent = sessionId;
  document.getElementById("home-link").href = pageURL("./");
  await refresh();
  new RecordsPanel("in");
  new RecordsPanel("out");
  setInterval(refresh, 1000);
}

setupTokenForm(() => {
  client = makeClient();
  location.reload();
});
main();
