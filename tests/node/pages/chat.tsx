// AI SDK `useChat` with Trigger.dev's `TriggerChatTransport` against a
// rayflow chat agent (Python): only baseURL and the token differ from
// Trigger.dev's cloud. Bundled by esbuild (tests/test_chat_browser.py) and
// opened in headless Chromium; the page writes its state into the DOM as JSON.
//
// Like a real app, it keeps what a reload needs in localStorage: the
// transport's session state (its `onSessionChange`: token, `.out` cursor —
// the turn's start while one streams) and the messages of finished turns;
// `resume: true` has useChat reconnect to a turn that was streaming.
// `useSessionStream` follows the session's `.out` records beside it, and
// `useSessionStreamChannel` its `chat.snapshot` side channel.
//
//   chat.html?baseURL=…&token=…&chatId=…&task=…&clientData=<JSON>
import React, { useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { useChat } from "@ai-sdk/react";
import type { UIMessage } from "ai";
import { useTriggerChatTransport } from "@trigger.dev/sdk/chat/react";
import { useSessionStream, useSessionStreamChannel } from "@trigger.dev/react-hooks";

const query = new URLSearchParams(window.location.search);
const baseURL = query.get("baseURL") ?? "";
const accessToken = query.get("token") ?? "";
const chatId = query.get("chatId") ?? "";
const task = query.get("task") ?? "";
const clientData = JSON.parse(query.get("clientData") ?? "{}") as Record<string, unknown>;
const sessionKey = `chat-session:${chatId}`;
const messagesKey = `chat-messages:${chatId}`;

declare global {
  interface Window {
    events: string[];
  }
}
window.events = [];

function load<T>(key: string): T | undefined {
  const raw = localStorage.getItem(key);
  return raw ? (JSON.parse(raw) as T) : undefined;
}

function textOf(m: UIMessage): string {
  return m.parts.map((p) => (p.type === "text" ? p.text : "")).join("");
}

function Chat() {
  const stored = load<Record<string, unknown>>(sessionKey);
  const transport = useTriggerChatTransport({
    task,
    baseURL,
    accessToken: async () => accessToken,
    clientData,
    sessions: stored ? { [chatId]: stored as never } : undefined,
    onSessionChange: (id, session) => {
      if (id === chatId && session) localStorage.setItem(sessionKey, JSON.stringify(session));
    },
    onEvent: (event) => window.events.push(event.type),
  });
  const { messages, sendMessage, stop, status, error } = useChat({
    id: chatId,
    transport,
    messages: load<UIMessage[]>(messagesKey) ?? [],
    resume: stored !== undefined,
  });
  useEffect(() => {
    // what the turn answers is kept once sent; the answer once it finished
    if (status === "ready" || status === "submitted") {
      localStorage.setItem(messagesKey, JSON.stringify(messages));
    }
  }, [status, messages]);
  const [text, setText] = useState("");
  const shown = messages.map((m) => ({
    id: m.id,
    role: m.role,
    text: textOf(m),
    parts: m.parts.map((p) => p.type),
  }));
  return (
    <div>
      <pre id="messages">{JSON.stringify(shown)}</pre>
      <pre id="status">{JSON.stringify(status)}</pre>
      <pre id="error">{error ? String(error) : ""}</pre>
      <input id="text" value={text} onChange={(e) => setText(e.target.value)} />
      <button id="send" onClick={() => sendMessage({ text })}>
        send
      </button>
      <button id="stop" onClick={() => stop()}>
        stop
      </button>
    </div>
  );
}

function Records() {
  const { records, lastControl, error } = useSessionStream<{ type: string; delta?: string }>(chatId, {
    accessToken,
    baseURL,
    from: "beginning",
  });
  const kinds = records.map((r) => r?.type ?? "?");
  return (
    <div>
      <pre id="records">{JSON.stringify(kinds)}</pre>
      <pre id="control">{JSON.stringify(lastControl ?? null)}</pre>
      <pre id="records-error">{error ? String(error) : ""}</pre>
    </div>
  );
}

// the agent keeps the conversation on the session's `chat.snapshot` side
// channel after every turn (what a run continuing the session starts from)
function Snapshot() {
  const { records, error } = useSessionStreamChannel("chat.snapshot", {
    sessionId: chatId,
    accessToken,
    baseURL,
    from: "beginning",
  });
  const last = records.at(-1) as { messages?: unknown[] } | undefined;
  return (
    <div>
      <pre id="snapshot">{JSON.stringify(last?.messages?.length ?? null)}</pre>
      <pre id="snapshot-error">{error ? String(error) : ""}</pre>
    </div>
  );
}

createRoot(document.getElementById("root")!).render(
  <>
    <Chat />
    <Records />
    <Snapshot />
  </>,
);
