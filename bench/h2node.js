// Load generator: N closed-loop gRPC callers on Node's HTTP/2 client (nghttp2).
//
// Why not h2load alone: h2load repeats one fixed request per process, so every
// caller re-sent the same challenge. An x402 proof is new each time (a random
// nonce), but an MPP Tempo transaction signed twice within one second is the
// same transaction, and Teller rightly answers the repeats with the payment it
// already made: the MPP points measured mostly that. Here every call takes the
// next request of the list, so each MPP Sign pays a challenge no call before it
// in that second paid.
//
// Input (JSON file, argv[2]): {targets, callers, seconds, warmup, jobs: [{token,
// request (base64 of a serialized SignRequest)}]}. Caller i keeps one HTTP/2
// connection to targets[i % targets.length] and one call in flight on it.
// Output (JSON on stdout): calls (OK, measured), errors by gRPC status name,
// throughput, p50/p95/p99 ms.
"use strict";

const fs = require("fs");
const http2 = require("http2");
const { monitorEventLoopDelay } = require("perf_hooks");

const SIGN = "/teller.v1.PaymentService/Sign";
const CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

function frame(message) {
  // gRPC length-prefixed message: not compressed, 4-byte big-endian length.
  const out = Buffer.alloc(5 + message.length);
  out.writeUInt32BE(message.length, 1);
  message.copy(out, 5);
  return out;
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0;
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const jobs = spec.jobs.map((j) => ({ body: frame(Buffer.from(j.request, "base64")), auth: `Bearer ${j.token}` }));
  spec.jobs = null; // the base64 text: garbage from here on, collected before the run
  if (global.gc) global.gc();
  // How late this client's own event loop ran: its stalls (garbage collection)
  // add to the latencies it measures, so the report gives them beside.
  const loopDelay = monitorEventLoopDelay({ resolution: 1 });
  const latencies = [];
  const errors = {};
  let measuring = false;
  let stop = false;
  let next = 0;

  function call(session, job) {
    return new Promise((resolve) => {
      const req = session.request({
        ":method": "POST", ":path": SIGN, "content-type": "application/grpc", te: "trailers",
        authorization: job.auth,
      });
      let status = null;
      req.on("response", (headers) => {
        if (headers["grpc-status"] !== undefined) status = Number(headers["grpc-status"]); // trailers-only
      });
      req.on("trailers", (trailers) => {
        if (trailers["grpc-status"] !== undefined) status = Number(trailers["grpc-status"]);
      });
      req.on("data", () => {});
      req.on("error", () => resolve("TRANSPORT"));
      req.on("close", () => resolve(status === null ? "TRANSPORT" : CODES[status] || `CODE_${status}`));
      req.end(job.body);
    });
  }

  async function caller(i) {
    const session = http2.connect(`http://${spec.targets[i % spec.targets.length]}`);
    session.on("error", () => {});
    while (!stop) {
      const job = jobs[next++ % jobs.length];
      const started = process.hrtime.bigint();
      const code = await call(session, job);
      if (!measuring) continue;
      if (code === "OK") latencies.push(Number(process.hrtime.bigint() - started) / 1e6);
      else errors[code] = (errors[code] || 0) + 1;
    }
    session.close();
  }

  const callers = Array.from({ length: spec.callers }, (_, i) => caller(i));
  await new Promise((r) => setTimeout(r, spec.warmup * 1000));
  measuring = true;
  loopDelay.enable();
  const t0 = process.hrtime.bigint();
  await new Promise((r) => setTimeout(r, spec.seconds * 1000));
  measuring = false;
  loopDelay.disable();
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  stop = true;
  await Promise.all(callers);
  latencies.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({
    calls: latencies.length, errors, seconds: elapsed, throughput: latencies.length / elapsed,
    p50_ms: percentile(latencies, 0.5), p95_ms: percentile(latencies, 0.95), p99_ms: percentile(latencies, 0.99),
    driver: "node-http2",
    client_loop_delay_ms: { p99: loopDelay.percentile(99) / 1e6, max: loopDelay.max / 1e6 },
  }));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err));
  process.exit(1);
});
