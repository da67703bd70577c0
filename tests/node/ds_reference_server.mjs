// The Durable Streams reference server (@durable-streams/server) on
// 127.0.0.1: prints its URL, then serves until killed. In memory; with
// DATA_DIR set, in its durable mode (each append written to a segment file,
// concurrent appends sharing one fdatasync, metadata in LMDB). For the
// conformance calibration and the benchmark against rayflow.
import { DurableStreamTestServer } from "@durable-streams/server"

const options = { host: "127.0.0.1", port: Number(process.env.PORT || 0) }
if (process.env.DATA_DIR) options.dataDir = process.env.DATA_DIR
const server = new DurableStreamTestServer(options)
const url = await server.start()
console.log(url)
