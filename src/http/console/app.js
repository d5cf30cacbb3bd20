// switchboard agent console. Plain JavaScript, no build step: it talks to
// the server's own `/api` with the bearer token the agent enters once (kept
// in sessionStorage, i.e. for this tab only). Every piece of customer text
// goes into the page through textContent, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "switchboard.token";
const UNREAD_KEY = "switchboard.unread";
const CHART_POINTS = 60; // 2 minutes at one sample every 2 s
const OPS_EVERY_MS = 2000;
const PAGE = 50; // messages per page of history
const NEAR_TOP_PX = 40; // this close to the top, the page before is read

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  admin: null, // whether the token may read the operations figures (an agent's may not)
  open: null, // the phone of the open conversation
  conversation: null, // its last fetched answer (the newest page of its history)
  messages: [], // every message shown: older pages the agent read, then the newest page
  olderBefore: null, // the id to page back from (`older_before`); null: the start is shown
  olderLoad: null, // the page-back request in flight (one at a time)
  pending: [], // agent messages not in the last fetch: {key, text, status, error, ackedAt}
  templateList: null, // the template list the form's <select> was built from (JSON)
  templateShown: null, // the template whose parameter inputs are shown
  templateChosen: null, // the template picked in the form: {name, language, parameters}
  templateError: "", // why the last template send failed, kept across refreshes
  unread: JSON.parse(sessionStorage.getItem(UNREAD_KEY) || "{}"),
  states: new Set(),
  numbers: new Map(), // business number id → its name (or the id)
  mediaUrls: new Map(), // media id → object URL of the fetched file
  stream: null, // AbortController of the event stream
  samples: [], // {rate, p99}
  lastProcessed: null,
  timers: {},
};

// ---------- HTTP ----------

class HttpError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (state.token) headers.Authorization = "Bearer " + state.token;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: options.signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new HttpError(0, "the server cannot be reached");
  }
  let data = null;
  try {
    data = await res.json();
  } catch (_) {
    data = null;
  }
  if (!res.ok) {
    const reason = (data && data.error) || res.statusText || "request failed";
    if (res.status === 401 && !options.probe) signOut("The token was refused (401): " + reason);
    throw new HttpError(res.status, reason);
  }
  return data;
}

function describe(e) {
  if (e instanceof HttpError) return e.status ? `${e.message} (${e.status})` : e.message;
  return String(e && e.message ? e.message : e);
}

// ---------- sign in / out ----------

async function signIn(token) {
  state.token = token;
  // Any protected read tells whether the token is good; this one also
  // whether it is an admin's: an agent's is good but refused it (403).
  try {
    await api("/api/admin/overview", { probe: true });
    state.admin = true;
  } catch (e) {
    if (e.status !== 403) throw e;
    state.admin = false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("app").hidden = false;
  $("login-error").textContent = "";
  startApp();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  state.admin = null;
  stopApp();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

// ---------- conversation list ----------

// A contact as it may show in a list: a phone masked to its first two and
// last four digits; a BSUID (`US.1349…`) to its country and last four.
function maskContact(c) {
  const s = String(c);
  const bsuid = /^([A-Z]{2})\.(?:ENT\.)?([A-Za-z0-9]+)$/.exec(s);
  if (bsuid) return bsuid[1] + ".…" + bsuid[2].slice(-4);
  return maskPhone(s);
}

function shownContact(c) {
  return /^\d+$/.test(c) ? "+" + c : c;
}

function maskPhone(p) {
  const d = String(p).replace(/\D/g, "");
  if (d.length < 7) return "*".repeat(Math.max(d.length, 4));
  return "+" + d.slice(0, 2) + "*".repeat(d.length - 6) + d.slice(-4);
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function listQuery() {
  const q = new URLSearchParams({ limit: "100" });
  const s = $("filter-state").value;
  const h = $("filter-handoff").value;
  const p = $("search").value.replace(/[^\d]/g, "");
  const n = $("filter-number").value;
  if (s) q.set("state", s);
  if (n) q.set("number", n);
  if (h) q.set("handoff", h);
  if (p) q.set("phone", p);
  return q.toString();
}

// Only the newest request's answer is shown: an older one (events arrive
// while the filters change) must not overwrite it.
let listSeq = 0;
async function refreshList() {
  const seq = ++listSeq;
  try {
    const data = await api("/api/conversations?" + listQuery());
    if (seq !== listSeq) return;
    $("list-error").textContent = "";
    renderList(data.conversations);
  } catch (e) {
    if (e.status !== 401) $("list-error").textContent = "Conversations: " + describe(e);
  }
}

function renderList(rows) {
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of rows) {
    state.states.add(c.flow_state);
    const li = el("li", "conv" + (c.phone === state.open ? " open" : ""));
    li.dataset.phone = c.phone;
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    if (c.number) state.numbers.set(c.number, c.number_name || c.number);
    const contact = c.contact || c.phone;
    li.append(el("span", "name", c.contact_name || c.contact_username || "—"));
    const unread = state.unread[c.phone] || 0;
    const badge = el("span", "unread", unread ? String(unread) : "");
    badge.hidden = !unread;
    li.append(badge);
    li.append(el("span", "phone", c.phone === state.open ? shownContact(contact) : maskContact(contact)));
    const tags = el("span", "tags");
    if (state.numbers.size > 1 && c.number) tags.append(el("span", "tag number", c.number_name || c.number));
    tags.append(el("span", "tag state", c.flow_state));
    tags.append(el("span", "tag" + (c.handoff ? " agent" : ""), c.handoff ? "agent" : "bot"));
    li.append(tags);
    if (c.last_message) {
      const who = ORIGIN_LABEL[c.last_origin] || c.last_origin;
      li.append(el("span", "preview", (who ? who + ": " : "") + c.last_message));
    }
    li.addEventListener("click", () => openConversation(c.phone));
    li.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        openConversation(c.phone);
      }
    });
    ul.append(li);
  }
  $("list-empty").hidden = rows.length > 0;
  // Keep the state filter's choices current.
  const select = $("filter-state");
  const have = new Set(Array.from(select.options).map((o) => o.value));
  for (const s of Array.from(state.states).sort()) {
    if (!have.has(s)) select.append(new Option(s, s));
  }
  // The number filter shows once the list has several numbers.
  const numbers = $("filter-number");
  const known = new Set(Array.from(numbers.options).map((o) => o.value));
  for (const [id, name] of state.numbers) {
    if (!known.has(id)) numbers.append(new Option(name, id));
  }
  numbers.hidden = state.numbers.size < 2;
}

function saveUnread() {
  sessionStorage.setItem(UNREAD_KEY, JSON.stringify(state.unread));
}

// ---------- one conversation ----------

async function openConversation(phone) {
  state.open = phone;
  state.pending = [];
  state.conversation = null;
  forgetHistory();
  delete state.unread[phone];
  saveUnread();
  $("app").classList.add("open");
  $("conversation").hidden = false;
  $("placeholder").hidden = true;
  $("messages").replaceChildren();
  $("conv-error").textContent = "";
  $("conv-phone").textContent = "";
  $("conv-name").textContent = "";
  resetTemplateForm();
  await refreshConversation();
  refreshList();
  ($("reply-text").disabled ? $("template-name") : $("reply-text")).focus();
}

function closeConversation() {
  clearTimeout(state.timers.window);
  delete state.timers.window;
  state.open = null;
  state.conversation = null;
  state.pending = [];
  forgetHistory();
  $("app").classList.remove("open");
  $("conversation").hidden = true;
  $("placeholder").hidden = false;
  refreshList();
}

// The API path of a conversation, with `query` (e.g. a page of its
// history) when given. The phone is the key the list gave, which already
// names its business number: no `?number=` goes with it.
function conversationPath(phone, query) {
  const path = "/api/conversations/" + encodeURIComponent(phone);
  return query ? path + "?" + new URLSearchParams(query) : path;
}

function forgetHistory() {
  state.messages = [];
  state.olderBefore = null;
  state.olderLoad = null;
}

// Reads the newest page again (on every event of the conversation).
async function refreshConversation() {
  const phone = state.open;
  if (!phone) return;
  const started = performance.now();
  try {
    const data = await api(conversationPath(phone));
    if (state.open !== phone) return;
    state.conversation = data;
    mergeNewest(data);
    // Messages acknowledged before this read began are in it now.
    state.pending = state.pending.filter((p) => !(p.status === "sent" && p.ackedAt <= started));
    $("conv-error").textContent = state.templateError;
    renderConversation();
    maybeLoadOlder();
  } catch (e) {
    if (state.open === phone && e.status !== 401) $("conv-error").textContent = describe(e);
  }
}

// The newest page into what is shown: the older pages the agent paged back
// through stay; the newest messages (their statuses may have moved) are
// replaced by the page's.
function mergeNewest(data) {
  const page = data.messages;
  const had = state.messages;
  const first = page.length ? page[0].id : null;
  const last = had.length ? had[had.length - 1].id : null;
  // A page that does not reach back to what was shown (a page or more
  // arrived meanwhile) could leave a hole between them: start from it alone.
  if (first === null || last === null || first > last) {
    state.messages = page.slice();
    state.olderBefore = data.older_before;
    return;
  }
  const kept = had.filter((m) => m.id < first);
  state.messages = kept.concat(page);
  if (!kept.length) state.olderBefore = data.older_before;
}

// A list not laid out (hidden) is at no top: paging back would not stop.
function nearTop() {
  const ol = $("messages");
  return ol.clientHeight > 0 && ol.scrollTop < NEAR_TOP_PX;
}

// At the top of the list with more history behind it: read the page before.
function maybeLoadOlder() {
  if (state.conversation && state.olderBefore !== null && !state.olderLoad && nearTop()) loadOlder();
}

// Reads the page before the oldest message shown and puts it on top, the
// message the agent was looking at staying where it was on screen.
async function loadOlder() {
  const phone = state.open;
  const before = state.olderBefore;
  if (!phone || before === null || state.olderLoad) return;
  const load = { phone, before };
  state.olderLoad = load;
  renderHistoryMark();
  let data = null;
  try {
    data = await api(conversationPath(phone, { before: String(before), limit: String(PAGE) }));
  } catch (e) {
    // No retry by itself: the next scroll to the top (or the button) asks again.
    if (state.olderLoad === load && e.status !== 401) $("conv-error").textContent = "Older messages: " + describe(e);
  }
  // Another conversation opened meanwhile: its own state is not touched.
  if (state.olderLoad !== load) return;
  state.olderLoad = null;
  // A refresh that started over meanwhile has its own place to page back from.
  if (!data || state.olderBefore !== before) {
    renderHistoryMark();
    return;
  }
  const ol = $("messages");
  // Messages put on top leave the distance from the bottom as it was.
  const fromBottom = ol.scrollHeight - ol.scrollTop;
  const have = new Set(state.messages.map((m) => m.id));
  const older = data.messages.filter((m) => m.id < before && !have.has(m.id));
  state.messages = older.concat(state.messages);
  state.olderBefore = data.older_before;
  renderConversation();
  ol.scrollTop = ol.scrollHeight - fromBottom;
  // A page too short to scroll leaves the agent at the top still.
  maybeLoadOlder();
}

const ORIGIN_LABEL = { user: "customer", bot: "bot", agent: "agent" };

const STATUS_LABEL = {
  queued: "✓ sent",
  sent: "✓ sent",
  delivered: "✓✓ delivered",
  read: "✓✓ read",
  failed: "✗ failed",
  skipped: "not sent: outside the 24-hour window",
  received: "",
};

function renderConversation() {
  const data = state.conversation;
  if (!data) return;
  const s = data.session;
  $("conv-state").textContent = s.flow_state;
  $("conv-version").textContent = String(s.version);
  $("conv-handoff").textContent = handoffLabel(s);
  const hb = $("handoff-button");
  hb.textContent = s.handoff ? "Hand back to bot" : "Take over";
  hb.dataset.active = String(s.handoff);
  const who = [data.contact_name, data.contact_username].filter(Boolean).join(" · ");
  $("conv-name").textContent = who;
  $("conv-phone").textContent =
    shownContact(data.contact || state.open) + (data.number_name ? " → " + data.number_name : "");
  renderWindow(data.window || { open: true }, data.templates || []);

  const ol = $("messages");
  const atBottom = ol.scrollHeight - ol.scrollTop - ol.clientHeight < 40;
  const top = ol.scrollTop;
  ol.replaceChildren(historyMark());
  for (const m of state.messages) {
    const li = el("li", `msg ${m.direction} ${m.origin}`);
    li.dataset.id = String(m.id);
    li.append(originLabel(m.origin, m.name));
    if (m.context_id) li.append(el("div", "context", "↩ in reply to an earlier message"));
    if (m.reacts_to) li.append(el("div", "context", "reacted to a message"));
    li.append(el("div", "body", m.body));
    if (m.media) li.append(mediaItem(m.media));
    if (m.direction === "out") {
      const st = el("div", "status", STATUS_LABEL[m.status] ?? m.status);
      st.dataset.status = m.status;
      st.title = m.status === "queued" ? "stored; going out to WhatsApp" : m.status;
      if (m.status === "failed" && m.error) st.textContent += ": " + m.error;
      li.append(st);
    }
    ol.append(li);
  }
  for (const p of state.pending) ol.append(pendingItem(p));
  // Rebuilt, the list keeps its place (an agent reading older pages is not
  // moved by a new message), unless it was following the newest.
  ol.scrollTop = atBottom || state.pending.length ? ol.scrollHeight : top;
}

// Who has the conversation, and which named agent took it or handed it
// back (`_handoff_by`; not set when an anonymous token did).
function handoffLabel(s) {
  const by = s.data && typeof s.data._handoff_by === "string" ? s.data._handoff_by : "";
  if (s.handoff) return by ? by + " has it" : "an agent has it";
  return by ? "the bot has it (handed back by " + by + ")" : "the bot has it";
}

// Above a message: where it came from; for an agent's, the agent's name
// when the token that wrote it has one.
function originLabel(origin, author) {
  const label = el("div", "origin", ORIGIN_LABEL[origin] || origin);
  if (origin === "agent" && author) {
    label.append(" · ");
    label.append(el("span", "author", author));
  }
  return label;
}

// The first item of the list: more history to page back to, or its start.
function historyMark() {
  const li = el("li", "history");
  li.id = "history-mark";
  fillHistoryMark(li);
  return li;
}

function renderHistoryMark() {
  const li = $("history-mark");
  if (li) fillHistoryMark(li);
}

function fillHistoryMark(li) {
  const more = state.olderBefore !== null;
  li.dataset.older = String(more);
  li.replaceChildren();
  if (!more) {
    li.textContent = "start of the conversation";
  } else if (state.olderLoad) {
    li.textContent = "loading older messages…";
  } else {
    // Scrolling up loads them; the button does for a keyboard.
    const b = el("button", "older", "↑ older messages");
    b.type = "button";
    b.addEventListener("click", loadOlder);
    li.append(b);
  }
}

// ---------- the 24-hour window and templates ----------

const REPLY_PLACEHOLDER = "Reply… (Enter sends, Shift+Enter new line)";
const CLOSED_PLACEHOLDER = "Only templates can be sent outside the 24-hour customer-service window";

// A moment in the agent's own time zone: the time alone when it is today.
function localTime(iso) {
  const d = new Date(iso);
  if (d.toDateString() === new Date().toDateString()) {
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return localDateTime(iso);
}

function localDateTime(iso) {
  return new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

// The window in the header; free text while it is open, templates once closed.
function renderWindow(w, templates) {
  const label = $("conv-window");
  label.dataset.open = String(!!w.open);
  if (w.open) label.textContent = w.closes_at ? "window open until " + localTime(w.closes_at) : "window open";
  else if (w.closes_at) label.textContent = "window closed " + localDateTime(w.closes_at) + " — templates only";
  else label.textContent = "no customer message yet — templates only";
  label.title = w.closes_at ? new Date(w.closes_at).toLocaleString() : "";
  const box = $("reply-text");
  box.disabled = !w.open;
  $("send").disabled = !w.open;
  box.placeholder = w.open ? REPLY_PLACEHOLDER : CLOSED_PLACEHOLDER;
  $("template-form").hidden = w.open;
  if (w.open && state.templateError) {
    state.templateError = "";
    $("conv-error").textContent = "";
  }
  if (!w.open) renderTemplates(templates);
  watchWindow(w);
}

// An open window closes with no event: read the conversation again then.
function watchWindow(w) {
  clearTimeout(state.timers.window);
  delete state.timers.window;
  if (!w.open || !w.closes_at) return;
  const ms = Math.max(1000, new Date(w.closes_at).getTime() - Date.now() + 1000);
  if (ms > 2 ** 31 - 1) return;
  state.timers.window = setTimeout(() => {
    delete state.timers.window;
    refreshConversation();
  }, ms);
}

function resetTemplateForm() {
  state.templateList = null;
  state.templateShown = null;
  state.templateChosen = null;
  state.templateError = "";
  $("template-name").replaceChildren();
  $("template-params").replaceChildren();
}

// The template choices, rebuilt only when the list itself changes (a
// refresh must not wipe what the agent is typing).
function renderTemplates(list) {
  const empty = list.length === 0;
  $("template-empty").hidden = !empty;
  $("template-fields").hidden = empty;
  const sig = JSON.stringify(list);
  if (sig === state.templateList) return;
  const select = $("template-name");
  const before = state.templateChosen;
  state.templateList = sig;
  select.replaceChildren();
  list.forEach((t, i) => select.append(new Option(`${t.name} (${t.language})`, String(i))));
  // Keep the agent's choice when it is still offered.
  const again = before ? list.findIndex((t) => t.name === before.name && t.language === before.language) : -1;
  if (again >= 0) select.value = String(again);
  renderTemplateParams();
}

function chosenTemplate() {
  const list = (state.conversation && state.conversation.templates) || [];
  return list[Number($("template-name").value)] || null;
}

// One input per body parameter of the chosen template.
function renderTemplateParams() {
  const t = chosenTemplate();
  state.templateChosen = t;
  const key = t ? JSON.stringify([t.name, t.language, t.parameters]) : "";
  if (key === state.templateShown) return;
  state.templateShown = key;
  const box = $("template-params");
  box.replaceChildren();
  for (let i = 0; i < (t ? t.parameters : 0); i++) {
    const input = el("input", "template-param");
    input.type = "text";
    input.placeholder = `{{${i + 1}}}`;
    input.setAttribute("aria-label", `Parameter ${i + 1} of ${t.name}`);
    box.append(input);
  }
}

async function sendTemplate() {
  const phone = state.open;
  const t = chosenTemplate();
  if (!phone || !t) return;
  const inputs = Array.from(document.querySelectorAll("#template-params .template-param"));
  const button = $("template-send");
  button.disabled = true;
  try {
    await api("/api/conversations/" + encodeURIComponent(phone) + "/template", {
      method: "POST",
      body: {
        name: t.name,
        language: t.language,
        parameters: inputs.map((i) => i.value.trim()),
        idempotency_key: newKey(),
      },
    });
    if (state.open !== phone) return;
    state.templateError = "";
    $("conv-error").textContent = "";
    for (const i of inputs) i.value = "";
    await refreshConversation();
  } catch (e) {
    if (state.open !== phone || e.status === 401) return;
    state.templateError = "Template: " + describe(e);
    $("conv-error").textContent = state.templateError;
  } finally {
    button.disabled = false;
  }
}

// A media file beside its message: fetched with the token (an <img src>
// could not carry it) and shown as an image, or offered as a download.
function mediaItem(media) {
  const box = el("div", "media");
  const label = `${media.kind}${media.mime_type ? " (" + media.mime_type + ")" : ""}`;
  if (media.status !== "downloaded") {
    const why = media.status === "failed" ? "could not be fetched: " + (media.error || "") : "downloading…";
    box.append(el("span", "media-status", `${label}: ${why}`));
    return box;
  }
  const cached = state.mediaUrls.get(media.id);
  if (cached) {
    box.append(mediaView(media, cached, label));
    return box;
  }
  const button = el("button", "media-open", "Show " + label);
  button.type = "button";
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const path = `/api/conversations/${encodeURIComponent(state.open)}/media/${encodeURIComponent(media.id)}`;
      const res = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
      if (!res.ok) throw new HttpError(res.status, res.statusText);
      const url = URL.createObjectURL(await res.blob());
      state.mediaUrls.set(media.id, url);
      box.replaceChildren(mediaView(media, url, label));
    } catch (e) {
      button.disabled = false;
      box.append(el("span", "error", describe(e)));
    }
  });
  box.append(button);
  return box;
}

function mediaView(media, url, label) {
  if ((media.mime_type || "").startsWith("image/")) {
    const img = el("img", "media-image");
    img.src = url;
    img.alt = media.caption || label;
    return img;
  }
  const a = el("a", "media-link", "Download " + label);
  a.href = url;
  a.download = media.id;
  return a;
}

function pendingItem(p) {
  const li = el("li", "msg out agent pending");
  li.dataset.key = p.key;
  li.append(el("div", "origin", "agent"));
  li.append(el("div", "body", p.text));
  const label = p.status === "sending" ? "sending…" : p.status === "sent" ? "✓ sent" : "✗ failed: " + p.error;
  const st = el("div", "status", label);
  st.dataset.status = p.status;
  li.append(st);
  if (p.status === "failed") {
    const retry = el("button", "retry", "Retry");
    retry.type = "button";
    retry.addEventListener("click", () => deliver(p));
    st.append(retry);
  }
  return li;
}

function newKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return "console-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

async function sendReply() {
  const box = $("reply-text");
  const text = box.value.trim();
  if (!text || !state.open || box.disabled) return;
  box.value = "";
  // The key makes a retry of this very message harmless.
  const p = { key: newKey(), text, status: "sending", error: null, ackedAt: 0, phone: state.open };
  state.pending.push(p);
  renderConversation();
  await deliver(p);
}

async function deliver(p) {
  p.status = "sending";
  p.error = null;
  if (state.open === p.phone) renderConversation();
  try {
    await api("/api/conversations/" + encodeURIComponent(p.phone) + "/messages", {
      method: "POST",
      body: { text: p.text, idempotency_key: p.key },
    });
    p.status = "sent";
    p.ackedAt = performance.now();
  } catch (e) {
    p.status = "failed";
    p.error = describe(e);
    // 409: the window has closed meanwhile; show it (and the templates).
    if (e.status === 409 && state.open === p.phone) schedule("conversation", refreshConversation, 0);
  }
  if (state.open === p.phone) renderConversation();
}

async function toggleHandoff() {
  if (!state.conversation) return;
  const active = !state.conversation.session.handoff;
  try {
    await api("/api/conversations/" + encodeURIComponent(state.open) + "/handoff", {
      method: "POST",
      body: { active },
    });
    await refreshConversation();
    refreshList();
  } catch (e) {
    $("conv-error").textContent = "Hand-off: " + describe(e);
  }
}

// ---------- realtime ----------

// EventSource cannot send a bearer header, so the stream is read with fetch.
async function runStream() {
  let delay = 500;
  while (state.token) {
    const ctl = new AbortController();
    state.stream = ctl;
    try {
      // Back with the last event's id: the server replays what we missed.
      const headers = { Authorization: "Bearer " + state.token, Accept: "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const res = await fetch("/api/events", { headers, signal: ctl.signal });
      if (res.status === 401) {
        signOut("The token was refused (401).");
        return;
      }
      if (!res.ok || !res.body) throw new Error("stream answered " + res.status);
      setLive(true);
      delay = 500;
      // Whatever happened while we were away: read the state again.
      schedule("list", refreshList, 0);
      schedule("conversation", refreshConversation, 0);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const frame = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const lines = frame.split("\n");
          const id = lines.find((l) => l.startsWith("id:"));
          if (id) state.lastEventId = id.slice(3).trim();
          const data = lines
            .filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trim())
            .join("\n");
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function setLive(on) {
  const l = $("live");
  l.className = "live " + (on ? "on" : "off");
  l.textContent = on ? "live" : "reconnecting…";
}

function schedule(name, fn, ms) {
  if (state.timers[name]) return;
  state.timers[name] = setTimeout(() => {
    delete state.timers[name];
    fn();
  }, ms);
}

// Feed events (`type`, `conversation.key`) and, with the feed off, the
// live events (`kind`, `phone`).
function onEvent(e) {
  if (e.kind === "breaker_state") {
    if (state.admin !== false) schedule("ops", refreshOps, 100);
    return;
  }
  const phone = e.conversation ? e.conversation.key : e.phone;
  const fresh = e.type ? e.type === "message.received" : e.kind === "transition";
  if (fresh && phone !== state.open) {
    state.unread[phone] = (state.unread[phone] || 0) + 1;
    saveUnread();
  }
  schedule("list", refreshList, 150);
  if (phone === state.open) schedule("conversation", refreshConversation, 50);
}

// ---------- operations ----------

async function refreshOps() {
  let ready;
  try {
    const o = await api("/api/admin/overview");
    ready = o.ready ? "ready" : "not ready: " + (o.not_ready_reason || "unknown");
    $("ops-ready").className = o.ready ? "" : "bad";
    $("ops-actors").textContent = String(o.live_sessions);
    $("ops-backlog").textContent = String(o.outbox_backlog);
    $("ops-dead").textContent = o.dead_letters_pending === null ? "unknown" : String(o.dead_letters_pending);
    $("ops-dead").className = o.dead_letters_pending > 0 ? "bad" : "";
    const now = performance.now();
    let rate = 0;
    if (state.lastProcessed) {
      const dt = (now - state.lastProcessed.at) / 1000;
      rate = dt > 0 ? Math.max(0, (o.processed - state.lastProcessed.n) / dt) : 0;
    }
    state.lastProcessed = { n: o.processed, at: now };
    $("ops-rate").textContent = rate.toFixed(1);
    $("ops-p99").textContent = o.acks.p99_ms === null ? "no traffic" : o.acks.p99_ms.toFixed(1) + " ms";
    const ul = $("ops-breakers");
    ul.replaceChildren();
    for (const b of o.breakers) {
      const li = el("li");
      li.dataset.breaker = b.name;
      li.append(el("span", "", b.name));
      li.append(el("span", b.state, b.state.replace("_", "-")));
      ul.append(li);
    }
    state.samples.push({ rate, p99: o.acks.p99_ms || 0 });
    if (state.samples.length > CHART_POINTS) state.samples.shift();
    drawChart();
  } catch (e) {
    if (e.status === 401) return;
    // The token became an agent's (a configuration reload): no more asking.
    if (e.status === 403) {
      state.admin = false;
      clearInterval(state.timers.opsInterval);
      delete state.timers.opsInterval;
      applyRole();
      return;
    }
    ready = "unreachable: " + describe(e);
    $("ops-ready").className = "bad";
  }
  $("ops-ready").textContent = ready;
}

function drawChart() {
  const svg = $("ops-chart");
  const W = 240, H = 90, pad = 12;
  const n = state.samples.length;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (n < 2) return;
  const line = (key, cls) => {
    const max = Math.max(1, ...state.samples.map((s) => s[key]));
    const pts = state.samples.map((s, i) => {
      const x = pad + ((W - 2 * pad) * (i + CHART_POINTS - n)) / (CHART_POINTS - 1);
      const y = H - pad - ((H - 2 * pad) * s[key]) / max;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const pl = document.createElementNS(ns, "polyline");
    pl.setAttribute("class", cls);
    pl.setAttribute("points", pts.join(" "));
    svg.append(pl);
    return max;
  };
  const maxRate = line("rate", "rate");
  const maxP99 = line("p99", "p99");
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "9");
  label.textContent = `max ${maxRate.toFixed(0)}/s · ${maxP99.toFixed(1)} ms`;
  svg.append(label);
}

// ---------- wiring ----------

// The operations panel sits beside the conversation on a wide screen and
// over it on a narrow one: shown by default only when there is room.
const WIDE = window.matchMedia("(min-width: 761px)");
function fitOps() {
  $("app").classList.toggle("show-ops", WIDE.matches && state.admin !== false);
}

// An agent's token may not read the operations figures (403): the panel and
// its button give way to a note, instead of an error every two seconds.
function applyRole() {
  const admin = state.admin !== false;
  $("ops").hidden = !admin;
  $("ops-toggle").hidden = !admin;
  $("ops-note").hidden = admin;
  fitOps();
}

function startApp() {
  applyRole();
  refreshList();
  if (state.admin !== false) {
    refreshOps();
    state.timers.opsInterval = setInterval(refreshOps, OPS_EVERY_MS);
  }
  runStream();
}

function stopApp() {
  if (state.stream) state.stream.abort();
  for (const [k, t] of Object.entries(state.timers)) {
    clearTimeout(t);
    clearInterval(t);
    delete state.timers[k];
  }
  state.open = null;
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    $("login-error").textContent = "";
    try {
      await signIn(token);
    } catch (e) {
      state.token = "";
      $("login-error").textContent =
        e.status === 401 ? "The token was refused (401): " + e.message : "Cannot open the console: " + describe(e);
    }
  });
  $("logout").addEventListener("click", () => signOut(""));
  $("reply").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendReply();
  });
  $("reply-text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendReply();
    }
  });
  $("template-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sendTemplate();
  });
  $("template-name").addEventListener("change", renderTemplateParams);
  $("back").addEventListener("click", closeConversation);
  $("messages").addEventListener("scroll", maybeLoadOlder, { passive: true });
  $("handoff-button").addEventListener("click", toggleHandoff);
  $("ops-toggle").addEventListener("click", () => $("app").classList.toggle("show-ops"));
  WIDE.addEventListener("change", fitOps);
  let searchTimer = null;
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refreshList, 200);
  });
  $("filter-state").addEventListener("change", refreshList);
  $("filter-handoff").addEventListener("change", refreshList);
  $("filter-number").addEventListener("change", refreshList);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && state.open) closeConversation();
  });
  // A token kept from earlier in this tab, or none (a server without
  // tokens lets the console in directly).
  signIn(state.token).catch((e) => {
    $("app").hidden = true;
    $("login").hidden = false;
    if (state.token) $("login-error").textContent = describe(e);
    state.token = "";
    $("token").focus();
  });
});
