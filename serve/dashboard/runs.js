// The run list and the session list: polls the API every second and offers a trigger form.
import { el, fmtDuration, fmtTime, makeClient, pageURL, setupTokenForm, showError, statusBadge } from "./ui.js";

let client = makeClient();
const tbody = document.getElementById("runs");
const live = document.getElementById("live");

function renderRuns(runs) {
  if (!runs.length) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "empty" }, "no runs yet — trigger one above")));
    return;
  }
  tbody.replaceChildren(
    ...runs.map((run) =>
      el("tr", { dataset: { runId: run.id, status: run.status } },
        el("td", {}, el("a", { class: "mono", href: pageURL("run.html", { id: run.id }) }, run.id)),
        el("td", { class: "mono" }, run.taskIdentifier || run.taskId || ""),
        el("td", { class: "status" }, statusBadge(run.status)),
        el("td", {}, fmtTime(run.createdAt)),
        el("td", {}, fmtDuration(run.startedAt || run.createdAt, run.finishedAt)),
      ),
    ),
  );
}

const sessionsBody = document.getElementById("sessions");

function renderSessions(sessions) {
  if (!sessions.length) {
    sessionsBody.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "empty" }, "no sessions")));
    return;
  }
  sessionsBody.replaceChildren(
    ...sessions.map((s) =>
      el("tr", { dataset: { sessionId: s.id } },
        el("td", {}, el("a", { class: "mono session-link", href: pageURL("session.html", { id: s.id }) }, s.id)),
        el("td", { class: "mono" }, s.externalId || ""),
        el("td", {}, s.type),
        el("td", { class: "current-run" }, s.currentRunId
          ? el("a", { class: "mono", href: pageURL("run.html", { id: s.currentRunId }) }, s.currentRunId)
          : ""),
        el("td", { class: "status" }, statusBadge(s.closedAt ? "CLOSED" : "ACTIVE")),
        el("td", {}, fmtTime(s.createdAt)),
      ),
    ),
  );
}

async function refreshSessions() {
  try {
    renderSessions(await client.listSessions({ limit: 50 }));
  } catch {
    // a public token may list runs but not sessions: the table stays as it was
  }
}

async function refresh() {
  refreshSessions();
  try {
    renderRuns(await client.listRuns({ limit: 50 }));
    live.classList.add("live");
    showError(null);
  } catch (err) {
    live.classList.remove("live");
    showError(err);
  }
}

async function loadTasks() {
  try {
    const tasks = await client.listTasks();
    document.getElementById("task-list").replaceChildren(
      ...tasks.map((t) => el("option", { value: t.id || t })),
    );
  } catch {
    // optional endpoint: the task id field stays free text
  }
}

document.getElementById("trigger-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const taskId = document.getElementById("task-input").value.trim();
  const raw = document.getElementById("payload-input").value.trim() || "null";
  let payload;
  try {
    payload = JSON.parse(raw);
  } catch (err) {
    showError(new Error(`payload is not valid JSON: ${err.message}`));
    return;
  }
  const button = document.getElementById("trigger-button");
  button.disabled = true;
  try {
    const handle = await client.trigger(taskId, payload);
    location.href = pageURL("run.html", { id: handle.id });
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
  }
});

setupTokenForm(() => { client = makeClient(); refresh(); loadTasks(); });
loadTasks();
refresh();
setInterval(refresh, 1000);
