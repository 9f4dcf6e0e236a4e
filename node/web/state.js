// The web client's state: conversations and their cursors, sends waiting for send_ok, receipts,
// presence and typing. A pure core in the shape of natter-client's (client-cli/src/client/
// state.rs): no DOM, no network, no storage, no clock. The shell (app.js) feeds it frames and
// user actions with the time in milliseconds (`now`), then carries out what it asks for:
//   takeFrames()    client frames to send, in order (only ever queued while connected)
//   takeNotices()   what the shell must do beyond sending: {type: 'welcome' | 'open' | 'toast' |
//                   'unauthenticated' | 'reconnect' | 'hold_off', ...}
//   takeSaves()     which persisted values changed: 'pending', 'read', 'client_seq'
//   nextDeadline()  when handleTimeout(now) is due next, or null

/** Messages asked for per page when paging back. */
export const HISTORY_PAGE_MESSAGES = 50;
/** Most messages one gap-filling `history` asks for (the protocol's page limit). */
export const GAP_FILL_MESSAGES_MAX = 200;
/** Cursor frames go out at most once per this: one ack and one read per conversation. */
export const CURSOR_BATCH_MS = 500;
/** Our own `typing: true` is renewed this often while keys are pressed. */
export const TYPING_RENEW_MS = 3000;
/** Our own typing stops after this long without a key. */
export const TYPING_IDLE_MS = 4000;
/** Someone else's typing indicator is dropped when not renewed within this (the protocol's 6 s). */
export const TYPING_TTL_MS = 6000;
/** Retries of a send refused with a retryable code before it is shown as failed. */
export const SEND_RETRIES_MAX = 5;
/** Wait before a retry of a send refused without `retry_after_ms`, times the retry's number. */
export const SEND_RETRY_STEP_MS = 1000;
/** How long to hold off reconnecting after a `rate_limited` refusal without `retry_after_ms`. */
export const RATE_LIMITED_HOLD_OFF_MS = 5000;
/** Largest message body, in UTF-8 bytes. */
export const BODY_BYTES_MAX = 65536;

const RETRYABLE_CODES = new Set(['rate_limited', 'unavailable', 'internal']);
const USER_ID = /^[A-Za-z0-9_.-]{1,64}$/;

/** Throws when an invariant does not hold: a bug here, never the server's or the user's fault. */
function invariant(condition, message) {
  if (!condition) throw new Error(`natter state invariant: ${message}`);
}

/**
 * The members named in the "new conversation" field, without `me` and duplicates:
 * `{members}`, or `{error}` saying what is wrong.
 */
export function parseMembers(text, me) {
  const names = text.split(',').map((s) => s.trim()).filter(Boolean);
  const members = [...new Set(names)].filter((m) => m !== me), invalid = members.find((m) => !USER_ID.test(m));
  if (invalid) return { error: `"${invalid}" is not a valid user id.` };
  if (!members.length) return { error: 'Name at least one other user.' };
  return { members };
}

let requestCounter = 0;
const countedRequestId = (prefix) => `${prefix}-${++requestCounter}`;

export class ClientState {
  /**
   * `me` and `device` name this session; `readCursors` ({conversation: seq}) and `pending`
   * ([{conversation, client_seq, body, created}]) are what an earlier page saved; `visible`
   * whether the page is shown; `newRequestId(prefix)` makes request ids.
   */
  constructor({ me, device, readCursors = {}, pending = [], visible = true, newRequestId = countedRequestId }) {
    this.me = me;
    this.device = device;
    this.visible = visible;
    this.newRequestId = newRequestId;
    /** Between welcome and the transport going down. */
    this.connected = false;
    this.openId = null;
    this.convs = new Map();           // id -> conversation (see ensureConv)
    this.pending = new Map();         // client_seq -> send of this device waiting for send_ok
    this.presence = new Map();        // user -> {status, last_seen, custom}
    this.historyRequests = new Map(); // request_id -> conversation id, paging back
    this.gapRequests = new Map();     // request_id -> conversation id, filling a gap
    this.createRequests = new Map();  // request_id -> {frame, sent}
    this.readCursors = { ...readCursors };
    /** The highest client_seq this state handed out. */
    this.clientSeq = 0;
    this.convOrder = 0;
    this.typingOut = { conv: null, lastSentMs: 0, idleAtMs: null };
    this.cursorFlushAtMs = null;
    this.lastCursorFlushMs = null;
    this.frames = [];
    this.notices = [];
    this.saves = new Set();
    // Sends still unconfirmed at the last reload are resent with their client_seq.
    for (const p of pending) {
      this.pending.set(p.client_seq, { ...p, key: `c${p.client_seq}`, retries: 0, failed: false, error: null, retryAtMs: null });
    }
  }

  // ----- Outputs -------------------------------------------------------------------------------

  takeFrames() { return this.frames.splice(0); }
  takeNotices() { return this.notices.splice(0); }
  takeSaves() { const saves = this.saves; this.saves = new Set(); return saves; }

  /** When handleTimeout is due next (ms), or null when nothing waits for time. */
  nextDeadline() {
    let at = Infinity;
    for (const conv of this.convs.values()) for (const expiresAt of conv.typing.values()) at = Math.min(at, expiresAt);
    for (const p of this.pending.values()) if (p.retryAtMs != null) at = Math.min(at, p.retryAtMs);
    if (this.typingOut.idleAtMs != null) at = Math.min(at, this.typingOut.idleAtMs);
    if (this.cursorFlushAtMs != null) at = Math.min(at, this.cursorFlushAtMs);
    return at === Infinity ? null : at;
  }

  /** The `hello` that starts a session: every conversation resumes after its cursor. */
  helloFrame() {
    const resume = {};
    for (const conv of this.convs.values()) resume[conv.id] = conv.cursor;
    return { type: 'hello', device: this.device, resume };
  }

  /** Unconfirmed sends as saved for the next page load (failed ones are not resent). */
  savedPending() {
    return [...this.pending.values()].filter((p) => !p.failed)
      .map(({ conversation, client_seq, body, created }) => ({ conversation, client_seq, body, created }));
  }

  // ----- Getters for the view ------------------------------------------------------------------

  openConversation() { return this.openId ? this.convs.get(this.openId) || null : null; }

  presenceOf(user) { return this.presence.get(user) || { status: 'offline', last_seen: null, custom: null }; }

  /** The other member of a 1:1 (no title, exactly two members), else null: a group. */
  otherMember(conv) {
    if (conv.title || conv.members.length !== 2 || !conv.members.includes(this.me)) return null;
    return conv.members.find((m) => m !== this.me) || null;
  }

  convName(conv) {
    const others = conv.members.filter((m) => m !== this.me);
    return conv.title || (others.length ? others.join(', ') : conv.members.length ? this.me : conv.id.slice(0, 10));
  }

  /** Conversations as listed: newest activity first, then in the order they became known. */
  sortedConversations() {
    return [...this.convs.values()].sort((a, b) => (b.lastTs - a.lastTs) || (a.order - b.order));
  }

  unread(conv) { return Math.max(0, conv.lastSeq - conv.readCursor); }

  unreadTotal() {
    let unread = 0;
    for (const conv of this.convs.values()) unread += this.unread(conv);
    return unread;
  }

  lowestSeq(conv) {
    let low = Infinity;
    for (const seq of conv.messages.keys()) low = Math.min(low, seq);
    return low;
  }

  hasOlder(conv) {
    const low = this.lowestSeq(conv);
    return !conv.noOlder && (low === Infinity ? conv.lastSeq > 0 : low > 1);
  }

  /** 'read', 'delivered' or 'sent': how far the other members got with our message `seq`. */
  tickState(conv, seq) {
    let state = 'sent';
    for (const [user, receipt] of conv.receipts) {
      if (user === this.me) continue;
      if (receipt.read >= seq) return 'read';
      if (receipt.delivered >= seq) state = 'delivered';
    }
    return state;
  }

  typingUsers(conv) { return [...conv.typing.keys()]; }

  /**
   * What the conversation shows, in order: its messages by seq, then this device's sends still
   * waiting (seq null). Each item has a `key` that stays the same when a send is confirmed.
   */
  timeline(conv) {
    const items = [...conv.messages.values()].sort((a, b) => a.seq - b.seq);
    const pending = [...this.pending.values()].filter((p) => p.conversation === conv.id);
    pending.sort((a, b) => a.client_seq - b.client_seq);
    for (const p of pending) items.push({ ...p, seq: null, sender: this.me, sender_device: this.device, ts: p.created });
    return items;
  }

  // ----- Inputs --------------------------------------------------------------------------------

  /** A frame from the server. */
  handleFrame(f, now) {
    switch (f.type) {
      case 'welcome': this.onWelcome(f); break;
      case 'conversation': this.onConversation(f, now); break;
      case 'message': this.addMessage(f, true); break;
      case 'send_ok': this.onSendOk(f); break;
      case 'receipt': this.onReceipt(f); break;
      case 'history': this.onHistory(f); break;
      case 'typing': this.onTyping(f, now); break;
      case 'presence': this.presence.set(f.user, { status: f.status, last_seen: f.last_seen, custom: f.custom }); break;
      case 'error': this.onError(f, now); break;
      default: break; // pong, and frame types added later, need nothing.
    }
    this.settle(now);
  }

  /** The transport went down: answers to requests in flight are lost with the session. */
  handleDisconnected() {
    this.connected = false;
    this.frames = [];
    this.historyRequests.clear();
    this.gapRequests.clear();
    for (const conv of this.convs.values()) {
      conv.historyPending = null;
      conv.gapPending = null;
      conv.typing.clear();
    }
    this.typingOut.conv = null;
    this.cursorFlushAtMs = null;
  }

  /** Time passed: typing indicators expire, sends are retried, cursors go out. */
  handleTimeout(now) {
    for (const conv of this.convs.values()) {
      for (const [user, expiresAt] of conv.typing) if (expiresAt <= now) conv.typing.delete(user);
    }
    const due = [...this.pending.values()].filter((p) => p.retryAtMs != null && p.retryAtMs <= now);
    due.sort((a, b) => a.client_seq - b.client_seq);
    for (const p of due) {
      p.retryAtMs = null;
      this.transmit(p);
    }
    if (this.typingOut.idleAtMs != null && this.typingOut.idleAtMs <= now) this.stopTyping();
    if (this.cursorFlushAtMs != null && this.cursorFlushAtMs <= now) this.flushCursors(now);
    this.settle(now);
  }

  // ----- Commands ------------------------------------------------------------------------------

  /** Shows conversation `id` (read as long as the page is visible). */
  open(id, now) {
    if (this.openId !== id) this.stopTyping();
    this.openId = id;
    this.settle(now);
  }

  /** The page was shown or hidden: presence follows, and reading resumes or pauses. */
  setVisible(visible, now) {
    this.visible = visible;
    this.queuePresence();
    this.settle(now);
  }

  /**
   * Sends `body` to `conversation` now if connected, else after the next welcome; returns its
   * client_seq, above `storedClientSeq` (the highest any page of this device used) and every
   * client_seq this state used.
   */
  send(conversation, body, now, storedClientSeq = 0) {
    const clientSeq = Math.max(storedClientSeq, this.clientSeq, ...this.pending.keys(), 0) + 1;
    this.clientSeq = clientSeq;
    this.saves.add('client_seq');
    const p = {
      conversation, client_seq: clientSeq, body, created: now, key: `c${clientSeq}`,
      retries: 0, failed: false, error: null, retryAtMs: null,
    };
    this.pending.set(clientSeq, p);
    this.saves.add('pending');
    this.transmit(p);
    this.settle(now);
    return clientSeq;
  }

  /**
   * Asks for the page of messages before the oldest one held, unless one is on its way; false
   * when nothing was asked.
   */
  requestHistory(id) {
    const conv = this.convs.get(id);
    if (!conv || conv.historyPending || !this.connected || !this.hasOlder(conv)) return false;
    const low = this.lowestSeq(conv), requestId = this.newRequestId('h');
    conv.historyPending = requestId;
    this.historyRequests.set(requestId, conv.id);
    const before = low === Infinity ? null : low;
    return this.queue({ type: 'history', request_id: requestId, conversation: conv.id, before, limit: HISTORY_PAGE_MESSAGES });
  }

  /** Creates a conversation; false when offline (it is then sent after the next welcome). */
  createConversation(members, title) {
    const requestId = this.newRequestId('c');
    const frame = { type: 'create_conversation', request_id: requestId, members, title };
    const sent = this.queue(frame);
    this.createRequests.set(requestId, { frame, sent });
    return sent;
  }

  /** The composer changed; `typed` whether it holds anything but blanks. */
  composerInput(typed, now) {
    const id = this.openId, out = this.typingOut;
    if (!id) return;
    if (!typed || out.conv !== id) this.stopTyping();
    if (!typed) return;
    if (out.conv !== id || now - out.lastSentMs >= TYPING_RENEW_MS) {
      if (this.queue({ type: 'typing', conversation: id, active: true })) Object.assign(out, { conv: id, lastSentMs: now });
    }
    out.idleAtMs = now + TYPING_IDLE_MS;
  }

  /** Our typing stopped (sent, emptied, blurred, idle, or another conversation opened). */
  stopTyping() {
    const out = this.typingOut;
    if (out.conv) this.queue({ type: 'typing', conversation: out.conv, active: false });
    Object.assign(out, { conv: null, lastSentMs: 0, idleAtMs: null });
  }

  // ----- Frames in -----------------------------------------------------------------------------

  onWelcome(f) {
    Object.assign(this, { me: f.user, connected: true });
    this.notices.push({ type: 'welcome' });
    for (const c of f.conversations) {
      const known = this.convs.has(c.id), conv = this.ensureConv(c.id);
      // Without a resume cursor the server starts this session at the newest message.
      if (!known) conv.cursor = c.last_seq;
      Object.assign(conv, { members: c.members, title: c.title ?? null, lastSeq: Math.max(conv.lastSeq, c.last_seq) });
    }
    // The previous session may have lost our cursor frames, so they are reported again.
    for (const conv of this.convs.values()) conv.ackSent = conv.readSent = 0;
    [...this.pending.values()].sort((a, b) => a.client_seq - b.client_seq).forEach((p) => this.transmit(p));
    for (const request of this.createRequests.values()) if (!request.sent) request.sent = this.queue(request.frame);
    this.queuePresence();
  }

  onConversation(f, now) {
    const known = this.convs.has(f.id), conv = this.ensureConv(f.id);
    Object.assign(conv, { members: f.members, title: f.title ?? null });
    // A new conversation keeps cursor 0, so a resume replays it from seq 1; it goes to the top
    // of the list until its messages bring real timestamps.
    if (!known) conv.lastTs = now;
    if (f.request_id && this.createRequests.delete(f.request_id)) this.notices.push({ type: 'open', id: f.id });
  }

  /**
   * A message: live (a `message` frame) or from a `history` page. A duplicate is dropped, and so
   * is a live one at or below the cursor (the server never sends those twice). A live one past a
   * hole in what the cursor covers asks for the hole with `history`.
   */
  addMessage(m, live) {
    const conv = this.ensureConv(m.conversation);
    if (conv.messages.has(m.seq)) return;
    const { seq, sender, sender_device, client_seq, ts, body } = m;
    // Our own message can arrive before its send_ok, e.g. replayed after a reconnect.
    const own = sender === this.me && sender_device === this.device && this.pending.has(client_seq);
    if (live && seq <= conv.cursor && !own) return;
    let key = `s${seq}`;
    if (own) {
      key = this.pending.get(client_seq).key;
      this.pending.delete(client_seq);
      this.saves.add('pending');
    }
    conv.messages.set(seq, { seq, sender, sender_device, client_seq, ts, body, key });
    this.noteSeq(conv, seq, ts, body);
    if (live) {
      conv.typing.delete(sender);
      this.fillGap(conv);
    }
  }

  onSendOk(f) {
    const p = this.pending.get(f.client_seq);
    if (!p || p.conversation !== f.conversation) return;
    this.pending.delete(f.client_seq);
    this.saves.add('pending');
    const conv = this.ensureConv(f.conversation);
    if (!conv.messages.has(f.seq)) {
      const { seq, client_seq, ts } = f;
      conv.messages.set(seq, { seq, sender: this.me, sender_device: this.device, client_seq, ts, body: p.body, key: p.key });
    }
    this.noteSeq(conv, f.seq, f.ts, p.body);
  }

  /** Receipts only move forward, whatever order they arrive in. */
  onReceipt(f) {
    const conv = this.ensureConv(f.conversation);
    const old = conv.receipts.get(f.user) || { delivered: 0, read: 0 };
    conv.receipts.set(f.user, { delivered: Math.max(old.delivered, f.delivered), read: Math.max(old.read, f.read) });
    if (f.user === this.me) this.setReadCursor(conv, f.read);
  }

  onHistory(f) {
    const gapConvId = this.gapRequests.get(f.request_id);
    if (gapConvId !== undefined) return this.onGapFilled(f, gapConvId);
    const conv = this.ensureConv(this.historyRequests.get(f.request_id) || f.conversation);
    this.historyRequests.delete(f.request_id);
    if (conv.historyPending === f.request_id) conv.historyPending = null;
    const messages = f.messages || [];
    for (const m of messages) this.addMessage({ ...m, conversation: conv.id }, false);
    if (!messages.length || this.lowestSeq(conv) <= 1) conv.noOlder = true;
  }

  onGapFilled(f, id) {
    this.gapRequests.delete(f.request_id);
    const conv = this.ensureConv(id);
    if (conv.gapPending === f.request_id) conv.gapPending = null;
    const cursor = conv.cursor;
    for (const m of f.messages || []) this.addMessage({ ...m, conversation: conv.id }, false);
    // A page that did not move the cursor is not asked for again in a loop: the next live
    // message, or the resume of the next session, tries again.
    if (conv.cursor > cursor) this.fillGap(conv);
  }

  onTyping(f, now) {
    const conv = this.convs.get(f.conversation);
    if (f.user === this.me || !conv) return;
    conv.typing.delete(f.user);
    if (f.active) conv.typing.set(f.user, now + TYPING_TTL_MS);
  }

  onError(f, now) {
    if (f.code === 'unauthenticated') return this.notices.push({ type: 'unauthenticated', message: f.message });
    if (f.code === 'hello_required') return this.notices.push({ type: 'reconnect' });
    const p = f.client_seq != null ? this.pending.get(f.client_seq) : null;
    if (p && (f.conversation == null || f.conversation === p.conversation)) {
      // Retrying a send is safe: the server answers a known client_seq with the original send_ok.
      if (RETRYABLE_CODES.has(f.code) && p.retries < SEND_RETRIES_MAX) {
        p.retries += 1;
        p.retryAtMs = now + (f.retry_after_ms || SEND_RETRY_STEP_MS * p.retries);
        if (f.code === 'rate_limited') this.notices.push({ type: 'toast', text: 'Sending too fast; retrying shortly.' });
        return;
      }
      Object.assign(p, { failed: true, error: f.message || f.code, retryAtMs: null });
      this.saves.add('pending');
      return;
    }
    // A refused history request stops the paging back, so it is not asked again in a loop.
    const conv = this.convs.get(this.historyRequests.get(f.request_id));
    if (conv) Object.assign(conv, { historyPending: null, noOlder: true });
    const gapConv = this.convs.get(this.gapRequests.get(f.request_id));
    if (gapConv && gapConv.gapPending === f.request_id) gapConv.gapPending = null;
    this.historyRequests.delete(f.request_id);
    this.gapRequests.delete(f.request_id);
    this.createRequests.delete(f.request_id);
    if (f.code === 'rate_limited' && f.client_seq == null) {
      this.notices.push({ type: 'hold_off', ms: f.retry_after_ms || RATE_LIMITED_HOLD_OFF_MS });
    }
    this.notices.push({ type: 'toast', text: f.message ? `${f.message} (${f.code})` : f.code });
  }

  // ----- Internals -----------------------------------------------------------------------------

  ensureConv(id) {
    if (!this.convs.has(id)) {
      this.convs.set(id, {
        id, members: [], title: null, order: this.convOrder++, lastSeq: 0, lastTs: 0, preview: '',
        cursor: 0,           // highest contiguous seq received: what hello resumes from and ack reports
        messages: new Map(), // seq -> message record
        receipts: new Map(), // user -> {delivered, read}
        typing: new Map(),   // user -> when their indicator expires (ms)
        noOlder: false, historyPending: null, gapPending: null, ackSent: 0, readSent: 0,
        readCursor: this.readCursors[id] || 0,
      });
    }
    return this.convs.get(id);
  }

  /** Queues a frame if connected; false when it cannot go now. */
  queue(frame) {
    if (!this.connected) return false;
    this.frames.push(frame);
    return true;
  }

  queuePresence() {
    this.queue({ type: 'presence', status: this.visible ? 'active' : 'away', custom: null });
  }

  transmit(p) {
    if (this.pending.get(p.client_seq) !== p || p.failed) return;
    this.queue({ type: 'send', conversation: p.conversation, client_seq: p.client_seq, body: p.body });
  }

  noteSeq(conv, seq, ts, body) {
    if (seq >= conv.lastSeq) conv.preview = body;
    conv.lastSeq = Math.max(conv.lastSeq, seq);
    conv.lastTs = Math.max(conv.lastTs, ts || 0);
    while (conv.messages.has(conv.cursor + 1)) conv.cursor += 1;
  }

  /** Asks for the messages between the cursor and the next one held, a page at a time. */
  fillGap(conv) {
    if (conv.gapPending || !this.connected) return;
    let next = Infinity;
    for (const seq of conv.messages.keys()) if (seq > conv.cursor && seq < next) next = seq;
    if (next === Infinity) return;
    invariant(next > conv.cursor + 1, `seq ${conv.cursor + 1} is held but the cursor is ${conv.cursor}`);
    // `history` returns the newest `limit` messages below `before`: the oldest part of the gap.
    const limit = Math.min(GAP_FILL_MESSAGES_MAX, next - conv.cursor - 1);
    const requestId = this.newRequestId('g');
    conv.gapPending = requestId;
    this.gapRequests.set(requestId, conv.id);
    this.queue({ type: 'history', request_id: requestId, conversation: conv.id, before: conv.cursor + 1 + limit, limit });
  }

  setReadCursor(conv, seq) {
    if (seq <= conv.readCursor) return;
    conv.readCursor = this.readCursors[conv.id] = seq;
    this.saves.add('read');
  }

  /** Something to report: a cursor past its last ack, or the open conversation read further. */
  cursorsToReport() {
    for (const conv of this.convs.values()) if (conv.cursor > conv.ackSent) return true;
    const open = this.openConversation();
    return Boolean(open && this.visible && open.cursor > open.readSent);
  }

  /** After every input: the open, visible conversation is read; cursor frames get a time. */
  settle(now) {
    const conv = this.openConversation();
    if (conv && this.visible) this.setReadCursor(conv, conv.cursor);
    if (!this.connected || this.cursorFlushAtMs != null || !this.cursorsToReport()) return;
    const earliest = this.lastCursorFlushMs == null ? now : this.lastCursorFlushMs + CURSOR_BATCH_MS;
    this.cursorFlushAtMs = Math.max(now, earliest);
  }

  flushCursors(now) {
    this.cursorFlushAtMs = null;
    if (!this.connected) return;
    this.lastCursorFlushMs = now;
    for (const conv of this.convs.values()) {
      const { id, cursor } = conv;
      if (cursor > conv.ackSent && this.queue({ type: 'ack', conversation: id, seq: cursor })) conv.ackSent = cursor;
      // read may not pass delivered, so it reports the same contiguous cursor as the ack.
      if (this.visible && id === this.openId && cursor > conv.readSent) {
        invariant(conv.ackSent >= cursor, `read ${cursor} would pass delivered ${conv.ackSent}`);
        if (this.queue({ type: 'read', conversation: id, seq: cursor })) conv.readSent = cursor;
      }
    }
  }
}
