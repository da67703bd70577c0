// Trigger.dev's own `sessions` API (@trigger.dev/sdk) against a rayflow server
// and a Python inbox agent (tests/test_http_sessions.py): only baseURL and token change.
//
//   node session_client.mjs '{"baseURL", "token", "externalId", "taskId"}'
//
// One scenario, each step printed as one JSON line:
//   start twice (the second is cached) -> open(externalId).in.send -> .out.read the echo
//   -> a side channel: channel.in.send, the agent answers on channel.out
//   -> "bye" ends the run -> a send continues the session on a fresh run
//   -> out.writeControl + out.trimTo (S2 appends) -> a reader from seq 0 starts past the trim
//   -> close -> a send is refused with 409 session_closed.
// The last line is {"type": "end"} or {"type": "error", ...}.
import { auth, runs, sessions } from "@trigger.dev/sdk";

const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");

/** The first record of `stream` that `pick` accepts (its index among records read). */
async function first(stream, pick) {
  for await (const record of stream) {
    if (pick(record)) return record;
  }
  throw new Error("the stream ended before the record arrived");
}

async function untilFinished(runId) {
  for (let i = 0; i < 600; i++) {
    const run = await runs.retrieve(runId);
    if (run.isCompleted) return run;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`run ${runId} did not finish`);
}

async function scenario(cmd) {
  const body = {
    type: "inbox",
    externalId: cmd.externalId,
    taskIdentifier: cmd.taskId,
    triggerConfig: { basePayload: { greeting: "hi" }, tags: ["node"] },
    tags: ["node-session"],
    metadata: { owner: "node" },
  };
  const started = await sessions.start(body);
  const again = await sessions.start(body);
  out({ type: "started", first: started, again });

  // the session's own token from here on: what a browser would hold
  await auth.withAuth({ baseURL: cmd.baseURL, accessToken: started.publicAccessToken }, async () => {
    const session = sessions.open(cmd.externalId);
    await session.in.send({ text: "hello" });
    const reply = await first(
      await session.out.read({ timeoutInSeconds: 30 }),
      (r) => r.type === "reply",
    );
    out({ type: "reply", reply });

    const side = session.channel("side");
    await side.in.send({ note: "n1" });
    await session.in.send({ text: "side" });
    const sideReply = await first(await side.out.read({ timeoutInSeconds: 30 }), () => true);
    out({ type: "side", reply: sideReply });

    const retrieved = await sessions.retrieve(cmd.externalId);
    out({ type: "retrieved", session: retrieved });
    await session.in.send({ text: "bye" });
  });

  const ended = await untilFinished(started.runId);
  out({ type: "ended", status: ended.status, output: ended.output ?? null });

  await auth.withAuth({ baseURL: cmd.baseURL, accessToken: started.publicAccessToken }, async () => {
    const session = sessions.open(started.id);
    await session.in.send({ text: "again" });
    const reply = await first(await session.out.read({ timeoutInSeconds: 30 }), (r) => {
      return r.type === "reply" && r.text === "echo: again";
    });
    out({ type: "continued", reply });
    const continued = await sessions.retrieve(started.id);
    out({ type: "retrieved", session: continued });

    // the one-shot S2 writes, as a backend (PUT .../out hands the secret key's
    // holder S2 credentials for rayflow's S2 append route): a control record,
    // then a trim back to it; the session's own token may not write .out
    let refusedPut = null;
    try {
      await session.out.writeControl("turn-complete");
    } catch (err) {
      refusedPut = err.status ?? String(err);
    }
    const control = await auth.withAuth({ baseURL: cmd.baseURL, accessToken: cmd.token }, async () => {
      const backend = sessions.open(started.id);
      const written = await backend.out.writeControl("turn-complete", [["note", "from-node"]]);
      await backend.out.trimTo(Number(written.lastEventId));
      return written;
    });
    await session.in.send({ text: "post-trim" });
    // a reader resuming from before the trim point starts at the first record left
    const resumed = await first(
      await session.out.read({ timeoutInSeconds: 30, lastEventId: "0" }),
      () => true,
    );
    out({ type: "trimmed", lastEventId: control.lastEventId, resumed, refusedPut });

    const closed = await sessions.close(started.id, { reason: "done" });
    out({ type: "closed", session: closed });
    try {
      await session.in.send({ text: "late" });
      out({ type: "late-send", refused: false });
    } catch (err) {
      out({ type: "late-send", refused: true, status: err.status, code: err.code ?? null,
            closedReason: err.closedReason ?? err.body?.closedReason ?? null });
    }
  });

  const listed = [];
  for await (const s of sessions.list({ type: "inbox", tag: "node-session", limit: 1 })) {
    listed.push({ id: s.id, externalId: s.externalId, closedAt: s.closedAt });
  }
  out({ type: "listed", sessions: listed });
}

async function main() {
  const cmd = JSON.parse(process.argv[2] ?? "{}");
  await auth.withAuth({ baseURL: cmd.baseURL, accessToken: cmd.token }, () => scenario(cmd));
  out({ type: "end" });
}

main().then(
  () => process.exit(0),
  (err) => {
    out({ type: "error", name: err?.name, status: err?.status, message: String(err?.message ?? err) });
    process.exit(1);
  },
);
