// Open-loop load for the Restate side of benches/restate_compare.sh, shaped
// as switchboard's `load --scenario steady`: each phone says the script
// hola → refrigerador → 1234567890 → si in a loop, a random phone per
// message, sent at its intended time whatever the answers (latency counted
// from that time, so a stall is not hidden), at most --connections on the
// wire. Each delivery is Meta's webhook body, signed as Meta signs it, sent
// to Restate's ingress as a one-way send with `idempotency-key` = the
// message id: the ack is the ingress accepting it (202), once the
// invocation is durably in Restate's log.
//
// The generator also hosts the fake send API: end-to-end latency is from a
// message's intended send time to its first reply arriving here. Prints one
// JSON line. Node's own modules only, so it runs with any Node >= 18.
//
//   node generator.mjs --ingress http://127.0.0.1:8080 --send-port 19999 \
//     --rate 250 --duration 30 --phones 2000 --drain 60 [--app-secret S]

import http from "node:http";
import { createHmac } from "node:crypto";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";

const { values: o } = parseArgs({
  options: {
    ingress: { type: "string", default: "http://127.0.0.1:8080" },
    admin: { type: "string", default: "http://127.0.0.1:9070" },
    "send-port": { type: "string", default: "19999" },
    rate: { type: "string", default: "250" },
    duration: { type: "string", default: "30" },
    phones: { type: "string", default: "2000" },
    drain: { type: "string", default: "60" },
    connections: { type: "string", default: "512" },
    seed: { type: "string", default: "1" },
    "app-secret": { type: "string", default: "" },
  },
});
const [rate, duration, phones, drain, connections, seed] = ["rate", "duration", "phones", "drain", "connections", "seed"].map((k) => Number(o[k]));

// As the harness: its first request is due 200 ms after the start, so it is not late already.
const START_DELAY_MS = 200;
// A request's whole time at most (the harness's REQUEST_TIMEOUT); past it, an error.
const REQUEST_TIMEOUT_MS = 30_000;
const SCRIPT = ["hola", "refrigerador", "1234567890", "si"];
const phone = (i) => `5215${String(100_000_000 + i).padStart(9, "0")}`;

// splitmix64: a seeded, well-spread choice of phone per message (not the
// harness's StdRng sequence, the same distribution).
let state = BigInt(seed);
function random() {
  state = (state + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
  let z = state;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
  return Number((z ^ (z >> 31n)) >> 11n) / 2 ** 53;
}

// ---- the plan ------------------------------------------------------------
const total = Math.round(rate * duration);
const turn = new Uint32Array(phones);
const plan = Array.from({ length: total }, (_, n) => {
  const p = Math.floor(random() * phones);
  return { at: (n / rate) * 1000, p, text: SCRIPT[turn[p]++ % SCRIPT.length], id: `wamid.load.${seed}.${n}` };
});

/** A delivery of one text from contact `p`, as payloads::delivery_body makes it. */
function deliveryBody(p, id, text) {
  const from = phone(p);
  const value = {
    messaging_product: "whatsapp",
    metadata: { display_phone_number: "15550001111", phone_number_id: "1098765432" },
    contacts: [{ profile: { name: "Carga" }, wa_id: from }],
    messages: [{ id, timestamp: String(Math.floor(Date.now() / 1000)), from, type: "text", text: { body: text } }],
  };
  return JSON.stringify({ object: "whatsapp_business_account", entry: [{ id: "102290129340398", changes: [{ value, field: "messages" }] }] });
}

// ---- measuring -------------------------------------------------------------
const ackMs = [];
const e2eMs = [];
const waiting = new Map(); // message id → intended send time (ms, performance clock), until its first reply
let sent = 0, acked = 0, errors = 0, applied = 0, outbound = 0, receipts = 0, inFlight = 0, lastApplied = 0;
const errorSamples = [];
const fail = (e) => {
  errors++;
  if (errorSamples.length < 10) errorSamples.push(String(e));
};

// ---- the fake send API -----------------------------------------------------
let outId = 0;
const fake = http.createServer((req, res) => {
  let body = "";
  req.setEncoding("utf8").on("data", (c) => (body += c)).on("end", () => {
    const m = JSON.parse(body || "{}");
    if (m.status === "read") {
      receipts++;
      return res.writeHead(200, { "content-type": "application/json" }).end('{"success":true}');
    }
    outbound++;
    // The tracking data is `<message id>:<part>`: the message's first reply times it.
    const id = String(m.biz_opaque_callback_data ?? "").replace(/:\d+$/, "");
    const intended = waiting.get(id);
    if (intended !== undefined) {
      const now = performance.now();
      waiting.delete(id);
      e2eMs.push(now - intended);
      applied++;
      lastApplied = now;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ messaging_product: "whatsapp", contacts: [{ input: m.to, wa_id: m.to }], messages: [{ id: `wamid.out.${++outId}` }] }));
  });
});
fake.keepAliveTimeout = 60_000;
await new Promise((ok) => fake.listen(Number(o["send-port"]), "127.0.0.1", ok));

// ---- sending ---------------------------------------------------------------
// A request due while every connection is busy waits in the agent's queue;
// its latency still counts from when it was due (as the harness's semaphore).
const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
const ingress = new URL(o.ingress);

function send(step, intended) {
  const body = deliveryBody(step.p, step.id, step.text);
  const headers = { "content-type": "application/json", "idempotency-key": step.id };
  if (o["app-secret"]) headers["x-hub-signature-256"] = "sha256=" + createHmac("sha256", o["app-secret"]).update(body).digest("hex");
  sent++;
  inFlight++;
  waiting.set(step.id, intended);
  const done = (err) => {
    inFlight--;
    if (err) {
      waiting.delete(step.id);
      return fail(err);
    }
    acked++;
    ackMs.push(performance.now() - intended);
  };
  const req = http.request(
    { host: ingress.hostname, port: ingress.port, path: `/Conversation/${phone(step.p)}/message/send`, method: "POST", agent, headers, timeout: REQUEST_TIMEOUT_MS },
    (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (c) => (text += c)).on("end", () => done(res.statusCode >= 200 && res.statusCode < 300 ? null : `HTTP ${res.statusCode}: ${text}`));
    },
  );
  req.on("timeout", () => req.destroy(new Error("timed out")));
  req.on("error", (e) => done(`request failed: ${e.message}`));
  req.end(body);
}

const cpuBefore = process.cpuUsage();
const start = performance.now() + START_DELAY_MS;
const startEpochS = (Date.now() + START_DELAY_MS) / 1000;
await new Promise((finished) => {
  let n = 0;
  (function tick() {
    const now = performance.now();
    while (n < total && start + plan[n].at <= now) send(plan[n], start + plan[n++].at);
    if (n < total) setTimeout(tick, Math.min(1, start + plan[n].at - now));
    else finished();
  })();
});
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
while (inFlight > 0) await sleep(5);
const sendsDone = performance.now();
// The drain: until every acked message has its reply, or the limit.
const deadline = performance.now() + drain * 1000;
while (waiting.size > 0 && performance.now() < deadline) await sleep(20);
const cpu = process.cpuUsage(cpuBefore);

// What Restate itself says: invocations of `message` completed (journal done, state committed).
let completed = null;
try {
  const r = await fetch(`${o.admin}/query`, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "application/json" },
    body: JSON.stringify({ query: "SELECT count(*) AS n FROM sys_invocation WHERE target_handler_name = 'message' AND status = 'completed'" }),
  });
  completed = Number((await r.json()).rows?.[0]?.n ?? NaN);
} catch {}

function percentiles(v) {
  if (v.length === 0) return { p50: 0, p90: 0, p99: 0, p999: 0, max: 0, count: 0 };
  const s = Float64Array.from(v).sort();
  const q = (x) => +s[Math.max(0, Math.ceil(x * s.length) - 1)].toFixed(3);
  return { p50: q(0.5), p90: q(0.9), p99: q(0.99), p999: q(0.999), max: q(1), count: s.length };
}
// As the harness: from the first intended send to the last message seen applied (or answered).
const elapsedS = (Math.max(lastApplied, sendsDone) - start) / 1000;
console.log(
  JSON.stringify({
    engine: "restate",
    rate, duration_s: duration, phones, connections,
    sent, acked, errors, applied,
    completed_invocations: completed,
    throughput_msgs_per_s: applied / Math.max(elapsedS, 1e-9),
    ack_latency_ms: percentiles(ackMs),
    e2e_latency_ms: percentiles(e2eMs),
    outbound_requests: outbound,
    read_receipts: receipts,
    start_epoch_s: startEpochS,
    elapsed_s: elapsedS,
    generator_cpu_s: (cpu.user + cpu.system) / 1e6,
    error_samples: errorSamples,
  }),
);
fake.close();
agent.destroy();
process.exit(0);
