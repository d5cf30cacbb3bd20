// The example flow (flows/reporte.toml) as a Restate virtual object: one
// object per conversation (key = the contact's phone), its session in the
// object's K/V state, each reply sent to the fake send API inside `ctx.run`
// (a durable side effect, as switchboard's outbox sends are), the flow's
// timers as delayed self-sends that a later step cancels (as switchboard
// replaces a conversation's timer rows in each step).
//
// Plain JavaScript, so it runs without a build step:
//   node service.mjs   (env: PORT, FLOW, SEND_API, APP_SECRET, READ_RECEIPTS)
//
// The flow engine below is a port of src/flow/machine.rs, src/ai/rules.rs
// (the `rules` provider the harness's server uses) and, in brief, of
// src/flow/fire.rs; it reads the same TOML file, so the states, slots and
// replies are the same ones.

import * as restate from "@restatedev/restate-sdk";
import { parse as parseToml } from "smol-toml";
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";

const PORT = Number(process.env.PORT ?? 9080);
const SEND_API = process.env.SEND_API ?? "http://127.0.0.1:9999";
const APP_SECRET = process.env.APP_SECRET ?? "";
// Switchboard marks each stepped message read (with the typing indicator) by
// default, best-effort; so does this, unless READ_RECEIPTS=0.
const READ_RECEIPTS = process.env.READ_RECEIPTS !== "0";
const flow = parseToml(readFileSync(process.env.FLOW ?? new URL("../../flows/reporte.toml", import.meta.url), "utf8"));
flow.fallback ??= "Perdón, no te entendí.";
// The Rust flow keeps intents, globals and `on` in BTreeMaps: candidates
// are tried in sorted order, globals first.
const sortedKeys = (o) => Object.keys(o ?? {}).sort();

// ---- the flow engine (pure) ------------------------------------------------

const ACCENTS = { á: "a", à: "a", ä: "a", â: "a", é: "e", è: "e", ë: "e", ê: "e", í: "i", ì: "i", ï: "i", î: "i", ó: "o", ò: "o", ö: "o", ô: "o", ú: "u", ù: "u", ü: "u", û: "u", ñ: "n" };
const words = (s) =>
  [...s.toLowerCase()].map((c) => ACCENTS[c] ?? c).join("").split(/[^\p{L}\p{N}]+/u).filter(Boolean);
const keywords = Object.fromEntries(Object.entries(flow.intents ?? {}).map(([k, v]) => [k, v.map(words)]));

/** The first candidate intent one of whose keywords (a word sequence) occurs in `text`. */
function detect(text, candidates) {
  const w = words(text);
  const occurs = (k) => k.length > 0 && w.some((_, i) => k.every((kw, j) => w[i + j] === kw));
  return candidates.find((c) => (keywords[c] ?? []).some(occurs)) ?? null;
}

const slotRules = (slot) => ({
  pattern: slot.pattern ? new RegExp(slot.pattern, "u") : null,
  min: slot.min_len ?? 1,
  max: slot.max_len ?? 4096,
});
const accepts = (slot, v) => {
  const { pattern, min, max } = slotRules(slot);
  const n = [...v].length;
  return n >= min && n <= max && (!pattern || pattern.test(v));
};
/** The whole text, or else its first word, that the slot accepts (rules::extract). */
function extract(slot, text) {
  const whole = text.trim();
  if (accepts(slot, whole)) return whole;
  if (!slot.pattern) return null;
  return whole.split(/\s+/).map((w) => w.replace(/^[^\p{L}\p{N}]+|[^\p{L}\p{N}]+$/gu, "")).find((w) => accepts(slot, w)) ?? null;
}

const current = (name) => flow.states[name] ?? flow.states[flow.initial];
const nameOf = (name) => (flow.states[name] ? name : flow.initial);
const fill = (text, data) => Object.entries(data).reduce((t, [k, v]) => (typeof v === "string" ? t.replaceAll(`{${k}}`, v) : t), text);
const prompt = (state, data) => ({ text: fill(state.prompt, data), choices: state.choices ?? [] });
const text = (t) => ({ text: t, choices: [] });

/** Moves to `target`; a terminal state records its outcome and goes back to the start (machine::enter). */
function enter(target, out, ticket) {
  const state = current(target);
  if (state.outcome) {
    const { _attempts, ...data } = out.data;
    out.replies.push(prompt(state, { ...data, ticket }));
    out.outcome = { kind: state.outcome, ticket, data };
    out.state = flow.initial;
    out.data = {};
  } else {
    out.replies.push(prompt(state, out.data));
    out.state = nameOf(target);
  }
}

/** One inbound text applied to the session (machine::step with the rules provider's understanding). */
function step(session, msgText, ticket) {
  const out = { state: nameOf(session.state), data: { ...session.data }, handoff: session.handoff, replies: [], outcome: null };
  if (session.handoff) return out; // a person holds the conversation: the bot stays silent
  const cur = current(session.state);
  const globals = sortedKeys(flow.global);
  const intent = detect(msgText, [...globals, ...sortedKeys(cur.on)]);
  const setAttempts = (n) => (n ? (out.data._attempts = n) : delete out.data._attempts);
  if (intent && globals.includes(intent)) {
    const g = flow.global[intent];
    out.replies.push(text(g.reply));
    setAttempts(0);
    if (g.handoff) out.handoff = true;
    if (g.target) {
      if (g.target === flow.initial) out.data = {};
      enter(g.target, out, ticket);
    } else if (!g.handoff) out.replies.push(prompt(cur, out.data));
  } else if (cur.slot) {
    const slot = cur.slot;
    const value = extract(slot, msgText);
    if (value !== null && accepts(slot, value.trim())) {
      out.data[slot.name] = value.trim();
      setAttempts(0);
      enter(cur.next ?? flow.initial, out, ticket);
    } else {
      const attempts = (out.data._attempts ?? 0) + 1;
      if (attempts >= (slot.max_attempts ?? 3)) {
        setAttempts(0);
        out.replies.push(text(slot.exhausted_reply ?? "No pude validar el dato. Empecemos de nuevo."));
        if (slot.exhausted_handoff) out.handoff = true;
        else {
          const target = slot.exhausted_target ?? flow.initial;
          if (target === flow.initial) out.data = {};
          enter(target, out, ticket);
        }
      } else {
        setAttempts(attempts);
        out.replies.push(text(slot.invalid ?? "Ese dato no es válido."), prompt(cur, out.data));
      }
    }
  } else if (intent && cur.on?.[intent]) {
    enter(cur.on[intent], out, ticket);
  } else {
    out.replies.push(text(flow.fallback), prompt(cur, out.data));
  }
  return out;
}

const UNIT_MS = { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 };
const ms = (d) => Number(d.slice(0, -1)) * UNIT_MS[d.slice(-1)];

/** The timers of where a step leaves the conversation (time::resting_timers). */
function restingTimers(state, handoff) {
  if (handoff) return flow.handoff_timeout ? [{ kind: "handoff", delay: ms(flow.handoff_timeout) }] : [];
  const after = Object.entries(current(state).after ?? {}).map(([label, rule]) => ({ kind: "after", delay: ms(label), state, label, rule }));
  if (flow.expire_after && state !== flow.initial) after.push({ kind: "expire", delay: ms(flow.expire_after) });
  return after;
}

// ---- I/O --------------------------------------------------------------------

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
/** POSTs JSON to the fake send API; resolves with its answer, rejects on a failure (so `ctx.run` retries). */
function post(path, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${SEND_API}${path}`, { method: "POST", agent, headers: { "content-type": "application/json", authorization: "Bearer load" } }, (res) => {
      let buf = "";
      res.setEncoding("utf8").on("data", (c) => (buf += c)).on("end", () => {
        if (res.statusCode >= 200 && res.statusCode < 300) resolve(buf ? JSON.parse(buf) : {});
        else reject(new Error(`send API: HTTP ${res.statusCode} ${buf}`));
      });
    });
    req.on("error", reject).end(JSON.stringify(body));
  });
}

/** The send API's body of one reply part (whatsapp/sender.rs: buttons for up to 3 choices). */
function graphBody(to, reply, tracking) {
  const base = { messaging_product: "whatsapp", recipient_type: "individual", to, biz_opaque_callback_data: tracking };
  if (reply.choices.length === 0) return { ...base, type: "text", text: { preview_url: false, body: reply.text } };
  const buttons = reply.choices.slice(0, 3).map((c) => ({ type: "reply", reply: { id: `choice:${c}`, title: c.slice(0, 20) } }));
  return { ...base, type: "interactive", interactive: { type: "button", body: { text: reply.text.slice(0, 1024) }, action: { buttons } } };
}

/** Whether the delivery carries Meta's signature of its raw body (X-Hub-Signature-256). */
function signed(ctx) {
  if (!APP_SECRET) return true;
  const got = ctx.request().headers.get("x-hub-signature-256") ?? "";
  const want = "sha256=" + createHmac("sha256", APP_SECRET).update(ctx.request().body).digest("hex");
  return got.length === want.length && timingSafeEqual(Buffer.from(got), Buffer.from(want));
}

const EMPTY = { state: flow.initial, data: {}, handoff: false, version: 0, lastStepAt: 0, timers: [] };

/**
 * Commits a step: the session, the outcome, the timers of where it rests
 * (the old ones cancelled), then each reply through a durable side effect.
 */
async function commit(ctx, session, r, { at, tracking, replaceTimers }) {
  let timers = session.timers;
  if (replaceTimers) {
    for (const id of timers) ctx.invocation(id).cancel();
    timers = [];
    for (const t of restingTimers(r.state, r.handoff)) {
      const handle = ctx.objectSendClient(Conversation, ctx.key).timer(t, restate.rpc.sendOpts({ delay: t.delay }));
      timers.push(await handle.invocationId);
    }
  }
  ctx.set("session", { state: r.state, data: r.data, handoff: r.handoff, version: session.version + 1, lastStepAt: at, timers });
  if (r.outcome) ctx.set(`outcome:${r.outcome.ticket}`, r.outcome);
  for (const [i, reply] of r.replies.entries()) {
    const body = graphBody(ctx.key, reply, `${tracking}:${i}`);
    await ctx.run(`send ${i}`, async () => (await post("/v21.0/1098765432/messages", body)).messages?.[0]?.id ?? null);
  }
}

const Conversation = restate.object({
  name: "Conversation",
  handlers: {
    /** One webhook delivery (Meta's shape) of one contact's text message. */
    message: async (ctx, delivery) => {
      if (!signed(ctx)) throw new restate.TerminalError("bad signature");
      const msg = delivery.entry?.[0]?.changes?.[0]?.value?.messages?.[0];
      if (!msg || msg.type !== "text") throw new restate.TerminalError("not a text message");
      let session = (await ctx.get("session")) ?? EMPTY;
      const at = Number(msg.timestamp) * 1000;
      // An expiry overdue when the message was sent: it meets a fresh start (time::met_expired).
      const idle = flow.expire_after ? ms(flow.expire_after) : Infinity;
      if (session.lastStepAt && at - session.lastStepAt > idle && !session.handoff && session.state !== flow.initial)
        session = { ...session, state: flow.initial, data: {} };
      // Best-effort, never awaited, not journaled: as switchboard's read receipts.
      if (READ_RECEIPTS && !session.handoff)
        post("/v21.0/1098765432/messages", { messaging_product: "whatsapp", status: "read", message_id: msg.id, typing_indicator: { type: "text" } }).catch(() => {});
      const r = step(session, msg.text?.body ?? "", `R${msg.id}`);
      // A held conversation keeps its timers (the hand-off timeout runs on).
      await commit(ctx, session, r, { at, tracking: msg.id, replaceTimers: !session.handoff });
    },

    /** A due timer; one no longer in the session's list was replaced (moot). */
    timer: async (ctx, t) => {
      const session = (await ctx.get("session")) ?? EMPTY;
      if (!session.timers.includes(ctx.request().id)) return;
      const out = { state: nameOf(session.state), data: { ...session.data }, handoff: session.handoff, replies: [], outcome: null };
      let replace = false;
      if (t.kind === "after" && !session.handoff && t.state === out.state) {
        if (t.rule.reply) out.replies.push(text(t.rule.reply));
        if (t.rule.handoff) (out.handoff = true), (replace = true);
        if (t.rule.target) {
          if (t.rule.target === flow.initial) out.data = {};
          enter(t.rule.target, out, `T${ctx.request().id}`);
          replace = true;
        }
      } else if (t.kind === "expire" && !session.handoff) {
        if (flow.expire_reply) out.replies.push(text(flow.expire_reply));
        Object.assign(out, { state: flow.initial, data: {} });
        replace = true;
      } else if (t.kind === "handoff" && session.handoff) {
        if (flow.handoff_timeout_reply) out.replies.push(text(flow.handoff_timeout_reply));
        out.handoff = false;
        replace = true;
      }
      const fired = { ...session, timers: session.timers.filter((id) => id !== ctx.request().id) };
      await commit(ctx, fired, out, { at: fired.lastStepAt, tracking: ctx.request().id, replaceTimers: replace });
    },
  },
});

export { step, EMPTY };

if (process.argv[1] === new URL(import.meta.url).pathname) {
  // HTTP/2 on loopback only (`endpoint().listen` binds every interface).
  http2.createServer(restate.endpoint().bind(Conversation).http2Handler()).listen(PORT, "127.0.0.1");
}
