// The Durable Streams benchmark's load: `producers` idempotent producers
// appending 100-byte JSON messages to one new stream at `base`, each sending
// its next append once the previous one is acknowledged, for `seconds`.
// node ds_load.mjs <base url> <producers> <seconds> [floor]  -> one JSON line
// With `floor`, the same requests go to <base url> itself, no stream created
// (`GET` when the URL ends in /healthz, else the same POST): what the server
// costs per request with nothing behind it.
const [base, producersArg, secondsArg, mode] = process.argv.slice(2)
const producers = Number(producersArg)
const seconds = Number(secondsArg)
const floor = mode === "floor"
const url = floor ? base : `${base}/v1/stream/bench-${process.pid}-${Date.now()}`
const method = floor && base.endsWith("/healthz") ? "GET" : "POST"
const body = JSON.stringify({ text: "x".repeat(89) })
if (body.length !== 100) throw new Error(`body is ${body.length} bytes`)

if (!floor) {
  const put = await fetch(url, { method: "PUT", headers: { "Content-Type": "application/json" } })
  if (put.status !== 201) throw new Error(`PUT answered ${put.status}`)
}
const latencies = []
const started = performance.now()
const deadline = started + seconds * 1000

async function producer(i) {
  for (let seq = 0; performance.now() < deadline; seq++) {
    const t = performance.now()
    const r = await fetch(url, {
      method,
      body: method === "POST" ? body : undefined,
      headers: {
        "Content-Type": "application/json",
        "Producer-Id": `p${i}`,
        "Producer-Epoch": "0",
        "Producer-Seq": String(seq),
      },
    })
    await r.arrayBuffer()
    if (r.status !== 200 && r.status !== 204) throw new Error(`POST answered ${r.status}`)
    latencies.push(performance.now() - t)
  }
}

await Promise.all(Array.from({ length: producers }, (_, i) => producer(i)))
const elapsed = (performance.now() - started) / 1000
latencies.sort((a, b) => a - b)
const at = (q) => latencies[Math.floor(q * (latencies.length - 1))]
console.log(JSON.stringify({
  appends: latencies.length,
  appends_per_s: latencies.length / elapsed,
  p50_ms: at(0.5),
  p99_ms: at(0.99),
}))
