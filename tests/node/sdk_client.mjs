// Trigger.dev's own SDK pointed at a rayflow server: only baseURL and token change.
//
//   node sdk_client.mjs '<json command>'
//
// Commands (JSON): {"op": "read" | "send" | "trigger" | "pipe", "baseURL", "token", ...}
//   read:    runId, key, startIndex?, timeoutInSeconds?  — streams.read(), the SDK's SSE reader
//   send:    runId, streamId, data                       — streams.input({id}).send()
//   trigger: taskId, payload                             — tasks.trigger(); prints the run's token
//   pipe:    runId, key, chunks[]                        — the SDK's v1 NDJSON stream writer
//   subscribe: runId                       — runs.subscribeToRun(): one line per run update
//   subscribeTag: tag, until                — runs.subscribeToRunsWithTag(): until `until` runs finished
//   subscribeBatch: batchId, until          — runs.subscribeToBatch(): likewise
//   createToken: timeout?, idempotencyKey?, tags? — wait.createToken(): prints id, url, token
//   completeToken: tokenId, data            — wait.completeToken() (with the token's own JWT)
//   retrieveToken: tokenId                  — wait.retrieveToken(): status, output, error
//   listTokens: status?, tags?              — wait.listTokens(): every page
// Output: one JSON object per line; the last is {"type": "end"} or {"type": "error", ...}.
import { auth, runs, streams, tasks, wait } from "@trigger.dev/sdk";
import { apiClientManager } from "@trigger.dev/core/v3";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

// The SDK's realtime-streams manager (what `streams.pipe()` runs inside a
// task) is not in the package's exports map; load the published file itself.
async function loadStreamsManager() {
  const require = createRequire(import.meta.url);
  const core = dirname(require.resolve("@trigger.dev/core/package.json"));
  const file = join(core, "dist", "esm", "v3", "realtimeStreams", "manager.js");
  return (await import(pathToFileURL(file).href)).StandardRealtimeStreamsManager;
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

async function read(cmd) {
  const options = {};
  if (cmd.startIndex !== undefined) options.startIndex = cmd.startIndex;
  if (cmd.timeoutInSeconds !== undefined) options.timeoutInSeconds = cmd.timeoutInSeconds;
  const stream = await streams.read(cmd.runId, cmd.key ?? "default", options);
  let n = 0;
  for await (const chunk of stream) {
    out({ type: "chunk", data: chunk });
    n += 1;
    if (cmd.max !== undefined && n >= cmd.max) break;
  }
}

async function send(cmd) {
  await streams.input({ id: cmd.streamId }).send(cmd.runId, cmd.data);
  out({ type: "sent" });
}

async function trigger(cmd) {
  const handle = await tasks.trigger(cmd.taskId, cmd.payload);
  out({ type: "triggered", id: handle.id, publicAccessToken: handle.publicAccessToken });
}

async function pipe(cmd) {
  const client = apiClientManager.clientOrThrow();
  const Manager = await loadStreamsManager();
  const manager = new Manager(client, cmd.baseURL);
  async function* source() {
    for (const chunk of cmd.chunks) yield chunk;
  }
  const piped = manager.pipe(cmd.key, source(), { target: cmd.runId });
  await piped.wait();
  out({ type: "piped", count: cmd.chunks.length });
}

const runLine = (run) => ({
  type: "run",
  id: run.id,
  status: run.status,
  isCompleted: run.isCompleted,
  isSuccess: run.isSuccess,
  finishedAt: run.finishedAt ?? null,
  metadata: run.metadata ?? null,
  tags: run.tags,
  output: run.output ?? null,
  error: run.error ?? null,
  realtimeStreams: run.realtimeStreams,
  taskIdentifier: run.taskIdentifier,
  receivedAt: Date.now(),
});

async function subscribe(cmd) {
  for await (const run of runs.subscribeToRun(cmd.runId)) out(runLine(run));
}

async function subscribeMany(subscription, until) {
  const finished = new Set();
  for await (const run of subscription) {
    out(runLine(run));
    if (run.finishedAt) finished.add(run.id);
    if (finished.size >= until) break;
  }
}

const subscribeTag = (cmd) => subscribeMany(runs.subscribeToRunsWithTag(cmd.tag), cmd.until);
const subscribeBatch = (cmd) => subscribeMany(runs.subscribeToBatch(cmd.batchId), cmd.until);

async function createToken(cmd) {
  const options = {};
  for (const k of ["timeout", "idempotencyKey", "idempotencyKeyTTL", "tags"]) {
    if (cmd[k] !== undefined) options[k] = cmd[k];
  }
  const token = await wait.createToken(options);
  out({ type: "token", id: token.id, url: token.url, isCached: token.isCached, publicAccessToken: token.publicAccessToken });
}

async function completeToken(cmd) {
  const result = await wait.completeToken(cmd.tokenId, cmd.data);
  out({ type: "completed", success: result.success });
}

async function retrieveToken(cmd) {
  const t = await wait.retrieveToken(cmd.tokenId);
  out({
    type: "token",
    id: t.id,
    status: t.status,
    output: t.output ?? null,
    error: t.error ? { name: t.error.name, message: t.error.message } : null,
    tags: t.tags,
    idempotencyKey: t.idempotencyKey ?? null,
    createdAt: t.createdAt.toISOString(),
    completedAt: t.completedAt ? t.completedAt.toISOString() : null,
    timeoutAt: t.timeoutAt ? t.timeoutAt.toISOString() : null,
  });
}

async function listTokens(cmd) {
  const params = { limit: cmd.limit ?? 2 };
  if (cmd.status !== undefined) params.status = cmd.status;
  if (cmd.tags !== undefined) params.tags = cmd.tags;
  for await (const t of wait.listTokens(params)) out({ type: "token", id: t.id, status: t.status, tags: t.tags });
}

const ops = {
  read, send, trigger, pipe, subscribe, subscribeTag, subscribeBatch,
  createToken, completeToken, retrieveToken, listTokens,
};

async function main() {
  const cmd = JSON.parse(process.argv[2] ?? "{}");
  const op = ops[cmd.op];
  if (!op) throw new Error(`unknown op ${cmd.op}`);
  await auth.withAuth({ baseURL: cmd.baseURL, accessToken: cmd.token }, () => op(cmd));
  out({ type: "end" });
}

main().then(
  () => process.exit(0),
  (err) => {
    out({ type: "error", name: err?.name, status: err?.status, message: String(err?.message ?? err) });
    process.exit(1);
  },
);
