// rayflow's dependency-free JavaScript client (an ES module, no build step).
//
// Served by the rayflow HTTP app at `/client.js` (and `/dashboard/client.js`):
//
//   import { RayflowClient } from "http://127.0.0.1:8000/client.js";
//   const rf = new RayflowClient({ baseURL: "http://127.0.0.1:8000", accessToken });
//   for await (const chunk of rf.readStream(runId, "ai-output", { startIndex: 0 })) {
//     console.log(chunk.index, chunk.data);
//   }
//   await rf.sendInput(runId, "approval", { approved: true, reviewer: "alice" });
//
// `accessToken` is the secret API key (backends, the dashboard) or a run's
// public access token (the `x-trigger-jwt` header of a trigger response, or
// `rayflow token RUN`). The wire format is Trigger.dev's realtime one
// (docs/wire.md): SSE `event: batch` records, resume with `Last-Event-ID`,
// end on `data: [DONE]`.

/** An HTTP answer that is not 2xx. `status` is the HTTP status, `body` the parsed body. */
export class RayflowHTTPError extends Error {
  constructor(status, body, url) {
    const detail =
      body && typeof body === "object"
        ? body.error || body.message || body.detail || JSON.stringify(body)
        : body || "";
    super(`HTTP ${status}${detail ? `: ${typeof detail === "string" ? detail : JSON.stringify(detail)}` : ""}`);
    this.name = "RayflowHTTPError";
    this.status = status;
    this.body = body;
    this.url = url;
  }
}

// The SSE reader gives up on these statuses instead of reconnecting (as Trigger.dev's client does).
const FATAL_STATUSES = new Set([400, 401, 403, 404, 405, 409, 410, 413, 422]);

/** Run statuses after which a run changes no more. */
export const FINISHED_STATUSES = new Set([
  "COMPLETED", "FAILED", "CANCELED", "CRASHED", "SYSTEM_FAILURE", "TIMED_OUT", "EXPIRED",
]);

export function isFinished(run) {
  return Boolean(run) && FINISHED_STATUSES.has(run.status);
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });

/**
 * Parse a `text/event-stream` body into events `{event, id, data}`.
 * Follows the SSE spec: `data:` lines join with "\n", a blank line dispatches,
 * lines starting with ":" are comments.
 */
export async function* parseSSE(body, signal) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "", id = null, data = [];
  try {
    while (true) {
      if (signal?.aborted) return;
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + (buffer[nl] === "\r" && buffer[nl + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (data.length || event) yield { event: event || "message", id, data: data.join("\n") };
          event = ""; data = []; id = null;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let val = colon < 0 ? "" : line.slice(colon + 1);
        if (val.startsWith(" ")) val = val.slice(1);
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
    }
    if (data.length) yield { event: event || "message", id, data: data.join("\n") };
  } finally {
    try { await reader.cancel(); } catch { /* already closed */ }
  }
}

/** Client for rayflow's HTTP API. All methods reject with RayflowHTTPError on a non-2xx answer. */
export class RayflowClient {
  /**
   * @param {object} [opts]
   * @param {string} [opts.baseURL] server origin, default: the page's origin
   * @param {string} [opts.accessToken] secret key or public access token
   * @param {typeof fetch} [opts.fetch]
   */
  constructor({ baseURL, accessToken, fetch: fetchImpl } = {}) {
    const origin = typeof location !== "undefined" ? location.origin : "http://127.0.0.1:8000";
    this.baseURL = (baseURL || origin).replace(/\/+$/, "");
    this.accessToken = accessToken || null;
    this._fetch = fetchImpl || globalThis.fetch.bind(globalThis);
  }

  headers(extra = {}) {
    const h = { Accept: "application/json", ...extra };
    if (this.accessToken) h.Authorization = `Bearer ${this.accessToken}`;
    return h;
  }

  async request(method, path, { body, headers, signal } = {}) {
    const url = this.baseURL + path;
    const init = { method, headers: this.headers(headers), signal };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const res = await this._fetch(url, init);
    const text = await res.text();
    let parsed = text;
    try { parsed = text ? JSON.parse(text) : null; } catch { /* not JSON: keep the text */ }
    if (!res.ok) throw new RayflowHTTPError(res.status, parsed, url);
    return { data: parsed, headers: res.headers };
  }

  /**
   * Trigger a task. Resolves to `{id, isCached, publicAccessToken}`; the token
   * (scopes `read:runs:<id>`, `write:inputStreams:<id>`) comes from `x-trigger-jwt`.
   */
  async trigger(taskId, payload, options = {}) {
    const { data, headers } = await this.request(
      "POST", `/api/v1/tasks/${encodeURIComponent(taskId)}/trigger`, { body: { payload, options } },
    );
    return { ...data, publicAccessToken: headers.get("x-trigger-jwt") };
  }

  /** One run: `{id, status, taskIdentifier, output, error, createdAt, …}` (docs/wire.md "Runs"). */
  async retrieveRun(runId, { signal } = {}) {
    return (await this.request("GET", `/api/v3/runs/${encodeURIComponent(runId)}`, { signal })).data;
  }

  /** Runs, newest first. Filters: `status` (string or list), `taskIdentifier`, `limit`. */
  async listRuns({ status, taskIdentifier, limit, signal } = {}) {
    const q = new URLSearchParams();
    if (status) q.set("filter[status]", [].concat(status).join(","));
    if (taskIdentifier) q.set("filter[taskIdentifier]", taskIdentifier);
    if (limit) q.set("page[size]", String(limit));
    const qs = q.toString();
    const { data } = await this.request("GET", `/api/v1/runs${qs ? `?${qs}` : ""}`, { signal });
    return Array.isArray(data) ? data : data?.data || [];
  }

  /** Sessions, newest first (docs/wire.md "Sessions"): `{id, externalId, type, currentRunId, closedAt, …}`. */
  async listSessions({ limit, signal } = {}) {
    const q = limit ? `?page[size]=${limit}` : "";
    const { data } = await this.request("GET", `/api/v1/sessions${q}`, { signal });
    return data?.data || [];
  }

  /** One session by its id or external id (docs/wire.md "Sessions"). */
  async retrieveSession(sessionId, { signal } = {}) {
    return (await this.request("GET", `/api/v1/sessions/${encodeURIComponent(sessionId)}`, { signal })).data;
  }

  async cancelRun(runId) {
    return (await this.request("POST", `/api/v2/runs/${encodeURIComponent(runId)}/cancel`)).data;
  }

  /** Send `data` to the run's input stream `streamId`. Resolves to `{ok: true}`. */
  async sendInput(runId, streamId, data) {
    const path = `/realtime/v1/streams/${encodeURIComponent(runId)}/input/${encodeURIComponent(streamId)}`;
    return (await this.request("POST", path, { body: { data } })).data;
  }

  /**
   * rayflow's own addition: a run's output streams and input streams,
   * `{runId, outputs: [{key, length, sizeBytes, closed, createdAt, updatedAt}],
   *   inputs: [{id, messages, waiting}]}`.
   */
  async listStreams(runId, { signal } = {}) {
    const path = `/rayflow/v1/runs/${encodeURIComponent(runId)}/streams`;
    return (await this.request("GET", path, { signal })).data;
  }

  /** rayflow's own addition: the task ids that can be triggered, `[{id}]`. */
  async listTasks({ signal } = {}) {
    const { data } = await this.request("GET", "/rayflow/v1/tasks", { signal });
    return Array.isArray(data) ? data : data?.data || [];
  }

  /**
   * Read an output stream as an async iterator of `{index, data, id, timestamp}`,
   * from `startIndex` (a number, default 0, or "latest" for only new chunks)
   * and then live. Ends when the stream is closed (the run finished), after
   * `timeoutSeconds` without data, or when `signal` aborts. A dropped
   * connection is resumed with `Last-Event-ID`; no chunk is yielded twice.
   */
  async *readStream(runId, key = "default", opts = {}) {
    const path = `/realtime/v1/streams/${encodeURIComponent(runId)}/${encodeURIComponent(key)}`;
    yield* this._readSSE(path, opts);
  }

  /** Read the messages sent to an input stream, same shape and options as readStream. */
  async *readInput(runId, streamId, opts = {}) {
    const path = `/realtime/v1/streams/${encodeURIComponent(runId)}/input/${encodeURIComponent(streamId)}`;
    yield* this._readSSE(path, opts);
  }

  /**
   * Read a session's `.in` or `.out` (docs/wire.md "Sessions") as an async
   * iterator of `{index, data, id, headers, timestamp}` from `startIndex`,
   * live; same options as readStream. A control record (`trigger-control`)
   * or an S2 command record (`["", "trim"]`) has `data` undefined and its
   * `headers`.
   */
  async *readSession(sessionId, io, opts = {}) {
    const path = `/realtime/v1/sessions/${encodeURIComponent(sessionId)}/${encodeURIComponent(io)}`;
    yield* this._readSSE(path, opts);
  }

  async *_readSSE(path, { startIndex = 0, timeoutSeconds, signal, maxRetries = 8 } = {}) {
    let last = typeof startIndex === "number" && startIndex > 0 ? startIndex - 1 : -1;
    const latest = startIndex === "latest";
    const seen = new Set();
    let retries = 0;
    while (!signal?.aborted) {
      const headers = { Accept: "text/event-stream" };
      if (last >= 0) headers["Last-Event-ID"] = String(last);
      else if (latest) headers["X-Trigger-Stream-Start"] = "latest";
      if (timeoutSeconds) headers["Timeout-Seconds"] = String(timeoutSeconds);
      let res;
      try {
        res = await this._fetch(this.baseURL + path, { headers: this.headers(headers), signal });
      } catch (err) {
        if (signal?.aborted) return;
        if (++retries > maxRetries) throw err;
        await sleep(Math.min(250 * 2 ** retries, 5000), signal);
        continue;
      }
      if (!res.ok) {
        const text = await res.text();
        let body = text;
        try { body = JSON.parse(text); } catch { /* keep the text */ }
        if (FATAL_STATUSES.has(res.status) || ++retries > maxRetries) {
          throw new RayflowHTTPError(res.status, body, this.baseURL + path);
        }
        await sleep(Math.min(250 * 2 ** retries, 5000), signal);
        continue;
      }
      try {
        for await (const ev of parseSSE(res.body, signal)) {
          if (ev.data === "[DONE]") return;
          if (ev.event === "error") throw new RayflowHTTPError(500, ev.data, this.baseURL + path);
          if (ev.event !== "batch") continue;
          retries = 0;
          const { records = [] } = JSON.parse(ev.data);
          for (const rec of records) {
            const index = Number(rec.seq_num);
            if (index <= last) continue;
            let body = rec.body;
            // a session's control and command records carry headers, no body
            if (typeof body === "string") body = body === "" ? null : JSON.parse(body);
            last = index;
            if (body?.id != null) {
              if (seen.has(body.id)) continue;
              seen.add(body.id);
            }
            const chunk = { index, data: body?.data, id: body?.id ?? null, timestamp: rec.timestamp };
            if (rec.headers?.length) chunk.headers = rec.headers;
            yield chunk;
          }
        }
        return; // a clean end of the body means the stream finished: do not reconnect
      } catch (err) {
        if (signal?.aborted) return;
        if (err instanceof RayflowHTTPError || err instanceof SyntaxError) throw err;
        if (++retries > maxRetries) throw err;
        await sleep(Math.min(250 * 2 ** retries, 5000), signal);
      }
    }
  }

  /**
   * Callback form of readStream: calls `onChunk(chunk)` for each chunk and
   * `onEnd(error|null)` once. Returns `{close()}`.
   */
  subscribeStream(runId, key, onChunk, { onEnd, ...opts } = {}) {
    return this._subscribe((signal) => this.readStream(runId, key, { ...opts, signal }), onChunk, onEnd);
  }

  /** Callback form of readSession (`onRecord`, `onEnd`); returns `{close()}`. */
  subscribeSession(sessionId, io, onRecord, { onEnd, ...opts } = {}) {
    return this._subscribe((signal) => this.readSession(sessionId, io, { ...opts, signal }), onRecord, onEnd);
  }

  _subscribe(read, onChunk, onEnd) {
    const ctl = new AbortController();
    (async () => {
      try {
        for await (const chunk of read(ctl.signal)) onChunk(chunk);
        onEnd?.(null);
      } catch (err) {
        onEnd?.(err);
      }
    })();
    return { close: () => ctl.abort() };
  }

  /**
   * A run's state as it changes: an async iterator of run objects (the shape of
   * retrieveRun), ending after a finished status. Uses rayflow's run-events SSE
   * endpoint (`/rayflow/v1/runs/{id}/events`) and falls back to polling
   * `/api/v3/runs/{id}` every `pollMs` when the server has no such endpoint.
   */
  async *watchRun(runId, { signal, pollMs = 1000 } = {}) {
    const path = `/rayflow/v1/runs/${encodeURIComponent(runId)}/events`;
    let useSSE = true;
    let lastKey = null;
    while (!signal?.aborted) {
      if (useSSE) {
        let res = null;
        try {
          res = await this._fetch(this.baseURL + path, {
            headers: this.headers({ Accept: "text/event-stream" }), signal,
          });
        } catch {
          if (signal?.aborted) return;
        }
        if (res && res.ok) {
          let finished = false;
          try {
            for await (const ev of parseSSE(res.body, signal)) {
              if (ev.data === "[DONE]") { finished = true; break; }
              if (ev.event !== "run") continue;
              const run = JSON.parse(ev.data);
              lastKey = `${run.status}:${run.updatedAt}`;
              yield run;
              if (isFinished(run)) { finished = true; break; }
            }
          } catch {
            if (signal?.aborted) return;
          }
          if (finished) return;
          await sleep(500, signal);
          continue;
        }
        if (res && (res.status === 401 || res.status === 403)) {
          throw new RayflowHTTPError(res.status, await res.text(), this.baseURL + path);
        }
        useSSE = false; // no such endpoint (or it failed): poll
      }
      const run = await this.retrieveRun(runId, { signal });
      const key = `${run.status}:${run.updatedAt}`;
      if (key !== lastKey) {
        lastKey = key;
        yield run;
      }
      if (isFinished(run)) return;
      await sleep(pollMs, signal);
    }
  }
}

export default RayflowClient;
