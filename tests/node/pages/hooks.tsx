// A React page driving @trigger.dev/react-hooks against rayflow: only
// baseURL and the token differ from Trigger.dev's cloud. Bundled by esbuild
// (tests/test_react_hooks.py) and opened in headless Chromium; each view
// writes what its hook returns into the DOM as JSON for the test to read.
//
//   hooks.html?view=run|tag|batch|trigger|token&baseURL=…&token=…&runId=…&tag=…&batchId=…&taskId=…&tokenId=…
import React, { useEffect } from "react";
import { createRoot } from "react-dom/client";
import {
  useInputStreamSend,
  useRealtimeBatch,
  useRealtimeRunWithStreams,
  useRealtimeRunsWithTag,
  useRealtimeStream,
  useRealtimeTaskTrigger,
  useWaitToken,
} from "@trigger.dev/react-hooks";
import type { HooksGo, HooksProgress } from "./rayflow-types";

const query = new URLSearchParams(window.location.search);
const baseURL = query.get("baseURL") ?? "";
const accessToken = query.get("token") ?? "";
const options = { accessToken, baseURL };

declare global {
  interface Window {
    statuses: string[];
  }
}
window.statuses = [];

function RunView({ runId }: { runId: string }) {
  const { run, streams, error } = useRealtimeRunWithStreams(runId, options);
  const { parts } = useRealtimeStream<HooksProgress>(runId, "hooks-progress", options);
  const { send, isLoading } = useInputStreamSend<HooksGo>("hooks-go", runId, options);
  useEffect(() => {
    if (run) window.statuses.push(run.status);
  }, [run?.status]);
  return (
    <div>
      <pre id="run">{JSON.stringify(run ?? null)}</pre>
      <pre id="streams">{JSON.stringify(streams)}</pre>
      <pre id="parts">{JSON.stringify(parts ?? [])}</pre>
      <pre id="error">{error ? String(error) : ""}</pre>
      <button id="send" disabled={isLoading} onClick={() => send({ approved: true })}>
        go
      </button>
    </div>
  );
}

function TagView({ tag }: { tag: string }) {
  const { runs, error } = useRealtimeRunsWithTag(tag, options);
  const rows = runs.map((r) => ({ id: r.id, status: r.status, metadata: r.metadata ?? null }));
  return (
    <div>
      <pre id="runs">{JSON.stringify(rows)}</pre>
      <pre id="error">{error ? String(error) : ""}</pre>
    </div>
  );
}

function BatchView({ batchId }: { batchId: string }) {
  const { runs, error } = useRealtimeBatch(batchId, options);
  const rows = runs.map((r) => ({ id: r.id, status: r.status, output: r.output ?? null }));
  return (
    <div>
      <pre id="runs">{JSON.stringify(rows)}</pre>
      <pre id="error">{error ? String(error) : ""}</pre>
    </div>
  );
}

function TriggerView({ taskId }: { taskId: string }) {
  const { submit, run, handle, error } = useRealtimeTaskTrigger(taskId, options);
  return (
    <div>
      <button id="trigger" onClick={() => submit({ n: 3 })}>
        trigger
      </button>
      <pre id="handle">{JSON.stringify(handle ?? null)}</pre>
      <pre id="run">{JSON.stringify(run ?? null)}</pre>
      <pre id="error">{error ? String(error) : ""}</pre>
    </div>
  );
}

function TokenView({ tokenId }: { tokenId: string }) {
  // useWaitToken completes a wait token with the token's own public access token
  const { complete, isLoading, isCompleted, error } = useWaitToken(tokenId, options);
  return (
    <div>
      <button id="complete" disabled={isLoading} onClick={() => complete({ approved: true, by: "browser" })}>
        complete
      </button>
      <pre id="completed">{JSON.stringify(isCompleted)}</pre>
      <pre id="error">{error ? String(error) : ""}</pre>
    </div>
  );
}

function App() {
  switch (query.get("view")) {
    case "run":
      return <RunView runId={query.get("runId") ?? ""} />;
    case "tag":
      return <TagView tag={query.get("tag") ?? ""} />;
    case "batch":
      return <BatchView batchId={query.get("batchId") ?? ""} />;
    case "trigger":
      return <TriggerView taskId={query.get("taskId") ?? ""} />;
    case "token":
      return <TokenView tokenId={query.get("tokenId") ?? ""} />;
    default:
      return <p>unknown view</p>;
  }
}

createRoot(document.getElementById("root")!).render(<App />);
