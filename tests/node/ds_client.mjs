// Reads a Durable Streams stream with the published @durable-streams/client:
// node ds_client.mjs '{"url": ..., "token": ..., "live": "sse", "cut_after": 5}'
// Reads until `cut_after` items, stops (the connection is cut), then resumes
// from the last batch's offset with a new session until the stream closes.
// Prints one JSON line per batch ({"type": "batch", "items", "offset"}),
// {"type": "cut"} at the cut and {"type": "end"} at EOF.
import { stream } from "@durable-streams/client"

const args = JSON.parse(process.argv[2])
const headers = args.token ? { Authorization: `Bearer ${args.token}` } : {}
const out = (line) => console.log(JSON.stringify(line))

async function read(offset, stopAfter) {
  const res = await stream({ url: args.url, offset, live: args.live, headers })
  let seen = 0
  let last = offset
  await new Promise((resolve, reject) => {
    const unsubscribe = res.subscribeJson(async (batch) => {
      out({ type: "batch", items: batch.items, offset: batch.offset })
      seen += batch.items.length
      last = batch.offset
      if ((stopAfter !== null && seen >= stopAfter) || batch.streamClosed) {
        unsubscribe()
        res.cancel()
        resolve()
      }
    })
    res.closed?.then?.(resolve, reject)
  })
  return last
}

try {
  const offset = await read(undefined, args.cut_after)
  out({ type: "cut", offset })
  await read(offset, null)
  out({ type: "end" })
} catch (e) {
  out({ type: "error", message: String(e?.stack || e) })
  process.exit(1)
}
