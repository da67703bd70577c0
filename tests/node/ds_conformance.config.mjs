// Runs the Durable Streams server conformance suite
// (@durable-streams/server-conformance-tests) against CONFORMANCE_TEST_URL.
// Its own CLI finds no tests when the package sits under node_modules, so
// vitest is pointed at its compiled runner here. Used by
// tests/test_durable_streams_conformance.py.
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["node_modules/@durable-streams/server-conformance-tests/dist/test-runner.js"],
    exclude: [],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ["default", "json"],
    outputFile: { json: process.env.CONFORMANCE_REPORT || "ds-conformance.json" },
  },
})
