// The Durable Streams reference server (@durable-streams/server), in memory,
// on 127.0.0.1: prints its URL, then serves until killed. For the
// conformance calibration and the benchmark against rayflow.
import { DurableStreamTestServer } from "@durable-streams/server"

const server = new DurableStreamTestServer({ host: "127.0.0.1", port: Number(process.env.PORT || 0) })
const url = await server.start()
console.log(url)
