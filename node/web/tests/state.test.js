// Unit tests of the web client's state (../state.js): no DOM, no network, time passed in.
// Run with `node --test node/web/tests/` (Node 20+, no packages); node/tests/web_client.rs runs
// them under `cargo test`.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  ClientState, CURSOR_BATCH_MS, GAP_FILL_MESSAGES_MAX, HISTORY_PAGE_MESSAGES, RATE_LIMITED_HOLD_OFF_MS,
  SEND_RETRIES_MAX, SEND_RETRY_STEP_MS, TYPING_IDLE_MS, TYPING_RENEW_MS, TYPING_TTL_MS, parseMembers,
} from '../state.js';

const ALICE = 'alice', BOB = 'bob', DEVICE = 'web-1';
const C1 = 'aaaqeayeaudaocajbifqydiob4', C2 = 'baaqeayeaudaocajbifqydiob4';

/** A state with deterministic request ids (r-1, r-2, …). */
function fresh(options = {}) {
  let requests = 0;
  return new ClientState({ me: ALICE, device: DEVICE, newRequestId: () => `r-${++requests}`, ...options });
}

const summary = (id, lastSeq, members = [ALICE, BOB]) => ({ id, last_seq: lastSeq, members, title: null });
const welcome = (...conversations) => ({ type: 'welcome', user: ALICE, device: DEVICE, conversations });

/** A state past welcome with `conversations`, its welcome frames taken. */
function welcomed(conversations = [summary(C1, 0)], options = {}) {
  const state = fresh(options);
  state.handleFrame(welcome(...conversations), 0);
  state.takeFrames();
  state.takeNotices();
  return state;
}

function message(seq, { conversation = C1, sender = BOB, device = 'web-b', clientSeq = seq, body = `m${seq}` } = {}) {
  return { type: 'message', conversation, seq, sender, sender_device: device, client_seq: clientSeq, ts: 1000 + seq, body };
}

const historyAnswer = (requestId, seqs, conversation = C1) => ({
  type: 'history', request_id: requestId, conversation,
  messages: seqs.map((seq) => { const { type, ...record } = message(seq, { conversation }); return record; }),
});

const ofType = (frames, type) => frames.filter((f) => f.type === type);

test('welcome starts an unknown conversation at its newest seq and hello resumes from the cursors', () => {
  const state = fresh();
  assert.deepEqual(state.helloFrame(), { type: 'hello', device: DEVICE, resume: {} });
  state.handleFrame(welcome(summary(C1, 7), summary(C2, 0)), 0);
  assert.deepEqual(state.takeNotices(), [{ type: 'welcome' }]);
  assert.equal(state.convs.get(C1).cursor, 7);
  state.handleFrame(message(8), 1);
  assert.deepEqual(state.helloFrame().resume, { [C1]: 8, [C2]: 0 });
  // A known conversation keeps its cursor across sessions: the server replays what follows it.
  state.handleDisconnected();
  state.handleFrame(welcome(summary(C1, 12), summary(C2, 0)), 2);
  assert.equal(state.convs.get(C1).cursor, 8);
  assert.equal(state.convs.get(C1).lastSeq, 12);
});

test('duplicates and live messages at or below the cursor are dropped', () => {
  const state = welcomed([summary(C1, 3)]);
  state.handleFrame(message(4), 1);
  state.handleFrame({ ...message(4), body: 'again' }, 2);
  state.handleFrame(message(2), 3);
  const conv = state.convs.get(C1);
  assert.deepEqual([...conv.messages.keys()], [4]);
  assert.equal(conv.messages.get(4).body, 'm4');
  assert.equal(conv.cursor, 4);
  // History below the cursor is still shown: it is how older messages are paged in.
  state.handleFrame(historyAnswer('x', [2, 3]), 4);
  assert.deepEqual([...conv.messages.keys()].sort(), [2, 3, 4]);
  assert.equal(conv.cursor, 4);
});

test('a gap is asked for with history, oldest first, and filling it moves the cursor', () => {
  const state = welcomed();
  state.handleFrame(message(1), 1);
  assert.deepEqual(ofType(state.takeFrames(), 'history'), [], 'no gap, no request');
  state.handleFrame(message(5), 2);
  const conv = state.convs.get(C1);
  assert.equal(conv.cursor, 1, 'the cursor stops before the gap');
  const [fill] = ofType(state.takeFrames(), 'history');
  assert.deepEqual(fill, { type: 'history', request_id: 'r-1', conversation: C1, before: 5, limit: 3 });
  // Another live message while the fill is out does not ask twice.
  state.handleFrame(message(6), 3);
  assert.deepEqual(ofType(state.takeFrames(), 'history'), []);
  state.handleFrame(historyAnswer('r-1', [2, 3, 4]), 4);
  assert.equal(conv.cursor, 6);
  assert.equal(conv.gapPending, null);
  assert.equal(conv.noOlder, false, 'a gap fill says nothing about older pages');
  assert.deepEqual(ofType(state.takeFrames(), 'history'), []);
});

test('a gap larger than a page is filled a page at a time from its oldest end', () => {
  const state = welcomed();
  const last = GAP_FILL_MESSAGES_MAX + 51;
  state.handleFrame(message(last), 1);
  const [first] = ofType(state.takeFrames(), 'history');
  assert.equal(first.limit, GAP_FILL_MESSAGES_MAX);
  assert.equal(first.before, GAP_FILL_MESSAGES_MAX + 1, 'seqs 1..=200 first');
  const page = Array.from({ length: GAP_FILL_MESSAGES_MAX }, (_, index) => index + 1);
  state.handleFrame(historyAnswer(first.request_id, page), 2);
  const [second] = ofType(state.takeFrames(), 'history');
  assert.deepEqual([second.before, second.limit], [last, 50]);
  state.handleFrame(historyAnswer(second.request_id, page.slice(0, 50).map((seq) => seq + GAP_FILL_MESSAGES_MAX)), 3);
  assert.equal(state.convs.get(C1).cursor, last);
  assert.deepEqual(state.takeFrames().filter((f) => f.type === 'history'), []);
});

test('a gap fill that does not reach the cursor is not asked again in a loop', () => {
  const state = welcomed();
  state.handleFrame(message(3), 1);
  const [fill] = ofType(state.takeFrames(), 'history');
  state.handleFrame(historyAnswer(fill.request_id, []), 2);
  assert.deepEqual(ofType(state.takeFrames(), 'history'), []);
  assert.equal(state.convs.get(C1).cursor, 0);
  // The next live message tries again.
  state.handleFrame(message(4), 3);
  assert.equal(ofType(state.takeFrames(), 'history').length, 1);
});

test('sends get increasing client_seqs, wait offline, and are resent in order after welcome', () => {
  const state = fresh();
  const first = state.send(C1, 'one', 10, 41);
  const second = state.send(C1, 'two', 11, 0);
  assert.deepEqual([first, second], [42, 43], 'above the stored client_seq and every one used');
  assert.deepEqual(state.takeFrames(), [], 'nothing is queued while offline');
  assert.deepEqual(state.savedPending().map((p) => p.client_seq), [42, 43]);
  assert.ok(state.takeSaves().has('client_seq'));
  state.handleFrame(welcome(summary(C1, 0)), 12);
  const sends = ofType(state.takeFrames(), 'send');
  assert.deepEqual(sends.map((f) => [f.client_seq, f.body]), [[42, 'one'], [43, 'two']]);
});

test('send_ok and our own message confirm a send once, under the key it was shown with', () => {
  const state = welcomed();
  const clientSeq = state.send(C1, 'hi', 5);
  const conv = state.convs.get(C1);
  assert.deepEqual(state.timeline(conv).map((item) => [item.seq, item.key]), [[null, `c${clientSeq}`]]);
  state.handleFrame({ type: 'send_ok', conversation: C1, client_seq: clientSeq, seq: 1, ts: 99 }, 6);
  assert.equal(state.pending.size, 0);
  assert.deepEqual(state.timeline(conv).map((item) => [item.seq, item.key]), [[1, `c${clientSeq}`]]);
  // Our message arriving after the send_ok is a duplicate.
  state.handleFrame(message(1, { sender: ALICE, device: DEVICE, clientSeq, body: 'hi' }), 7);
  assert.equal(conv.messages.size, 1);
  // Our message arriving before the send_ok (a replay) confirms the send the same way.
  const next = state.send(C1, 'again', 8);
  state.handleFrame(message(2, { sender: ALICE, device: DEVICE, clientSeq: next, body: 'again' }), 9);
  assert.equal(state.pending.size, 0);
  assert.equal(conv.messages.get(2).key, `c${next}`);
  assert.equal(conv.cursor, 2);
  assert.deepEqual(state.savedPending(), []);
});

test('a retryable refusal is retried at its deadline, and a send fails after the last retry', () => {
  const state = welcomed();
  const clientSeq = state.send(C1, 'hi', 0);
  state.takeFrames();
  const refusal = { type: 'error', request_id: null, conversation: C1, client_seq: clientSeq, code: 'unavailable', message: 'no leader', retry_after_ms: null };
  let now = 0;
  for (let retry = 1; retry <= SEND_RETRIES_MAX; retry += 1) {
    state.handleFrame(refusal, now);
    assert.equal(state.nextDeadline(), now + SEND_RETRY_STEP_MS * retry);
    state.handleTimeout(now + SEND_RETRY_STEP_MS * retry - 1);
    assert.deepEqual(ofType(state.takeFrames(), 'send'), [], 'not before its time');
    now += SEND_RETRY_STEP_MS * retry;
    state.handleTimeout(now);
    assert.equal(ofType(state.takeFrames(), 'send').length, 1, `retry ${retry} goes out`);
  }
  state.handleFrame(refusal, now);
  const p = state.pending.get(clientSeq);
  assert.equal(p.failed, true);
  assert.equal(p.error, 'no leader');
  assert.deepEqual(state.savedPending(), [], 'a failed send is not resent by the next page');
  state.handleFrame(welcome(summary(C1, 0)), now + 1);
  assert.deepEqual(ofType(state.takeFrames(), 'send'), [], 'nor by the next session');
});

test('a rate-limited send waits as told; a refusal that is not retryable fails at once', () => {
  const state = welcomed();
  const limited = state.send(C1, 'fast', 0);
  const refused = state.send(C1, 'x'.repeat(3), 0);
  state.takeFrames();
  state.handleFrame({ type: 'error', request_id: null, conversation: C1, client_seq: limited, code: 'rate_limited', message: 'slow down', retry_after_ms: 120 }, 0);
  assert.equal(state.nextDeadline(), 120);
  assert.deepEqual(state.takeNotices(), [{ type: 'toast', text: 'Sending too fast; retrying shortly.' }]);
  state.handleFrame({ type: 'error', request_id: null, conversation: C1, client_seq: refused, code: 'not_member', message: 'not a member', retry_after_ms: null }, 1);
  assert.equal(state.pending.get(refused).failed, true);
  state.handleTimeout(120);
  assert.deepEqual(ofType(state.takeFrames(), 'send').map((f) => f.client_seq), [limited]);
});

test('receipts only move forward and decide the ticks', () => {
  const state = welcomed();
  const conv = state.convs.get(C1);
  const receipt = (user, delivered, read) => ({ type: 'receipt', conversation: C1, user, delivered, read });
  state.handleFrame(receipt(BOB, 5, 3), 0);
  state.handleFrame(receipt(BOB, 4, 2), 1);
  assert.deepEqual(conv.receipts.get(BOB), { delivered: 5, read: 3 });
  assert.equal(state.tickState(conv, 3), 'read');
  assert.equal(state.tickState(conv, 5), 'delivered');
  assert.equal(state.tickState(conv, 6), 'sent');
  // Our own receipt moves our read cursor (read on another device), never back.
  state.handleFrame(receipt(ALICE, 9, 9), 2);
  state.handleFrame(receipt(ALICE, 9, 4), 3);
  assert.equal(conv.readCursor, 9);
  assert.equal(state.tickState(conv, 9), 'sent', 'our own receipt is no tick');
  assert.deepEqual(state.readCursors, { [C1]: 9 });
});

test('cursors are acked at most once per batch interval, and read only while open and visible', () => {
  const state = welcomed([summary(C1, 0), summary(C2, 0)]);
  state.handleFrame(message(1), 1000);
  assert.equal(state.nextDeadline(), 1000);
  state.handleFrame(message(1, { conversation: C2 }), 1000);
  state.handleTimeout(1000);
  assert.deepEqual(state.takeFrames(), [
    { type: 'ack', conversation: C1, seq: 1 },
    { type: 'ack', conversation: C2, seq: 1 },
  ], 'one ack per conversation, no read: nothing is open');
  state.handleFrame(message(2), 1100);
  assert.equal(state.nextDeadline(), 1000 + CURSOR_BATCH_MS, 'the next batch waits out the interval');
  state.handleTimeout(1000 + CURSOR_BATCH_MS);
  assert.deepEqual(state.takeFrames(), [{ type: 'ack', conversation: C1, seq: 2 }]);
  // Opening the conversation while the page is hidden reads nothing.
  state.setVisible(false, 2000);
  state.open(C1, 2000);
  assert.equal(state.convs.get(C1).readCursor, 0);
  assert.deepEqual(state.takeFrames(), [{ type: 'presence', status: 'away', custom: null }]);
  assert.equal(state.nextDeadline(), null);
  state.handleFrame(message(3), 2100);
  state.handleTimeout(state.nextDeadline());
  assert.deepEqual(state.takeFrames(), [{ type: 'ack', conversation: C1, seq: 3 }], 'delivered, not read');
  assert.equal(state.convs.get(C1).readCursor, 0);
  state.setVisible(true, 3000);
  assert.equal(state.convs.get(C1).readCursor, 3);
  state.handleTimeout(state.nextDeadline());
  assert.deepEqual(state.takeFrames(), [
    { type: 'presence', status: 'active', custom: null },
    { type: 'read', conversation: C1, seq: 3 },
  ]);
  assert.ok(state.takeSaves().has('read'));
});

test('a new session reports every cursor again', () => {
  const state = welcomed([summary(C1, 0)]);
  state.handleFrame(message(1), 0);
  state.handleTimeout(0);
  assert.equal(ofType(state.takeFrames(), 'ack').length, 1);
  state.handleDisconnected();
  assert.equal(state.nextDeadline(), null);
  state.handleFrame(welcome(summary(C1, 1)), 1000);
  state.handleTimeout(state.nextDeadline());
  assert.deepEqual(ofType(state.takeFrames(), 'ack'), [{ type: 'ack', conversation: C1, seq: 1 }]);
});

test('a typing indicator lasts until its TTL, a renewal, a stop or the typist\'s message', () => {
  const state = welcomed();
  const conv = state.convs.get(C1);
  const typing = (active) => ({ type: 'typing', conversation: C1, user: BOB, active });
  state.handleFrame(typing(true), 0);
  assert.deepEqual(state.typingUsers(conv), [BOB]);
  state.handleFrame(typing(true), 4000);
  state.handleTimeout(TYPING_TTL_MS);
  assert.deepEqual(state.typingUsers(conv), [BOB], 'renewed at 4 s');
  state.handleTimeout(4000 + TYPING_TTL_MS);
  assert.deepEqual(state.typingUsers(conv), []);
  state.handleFrame(typing(true), 20000);
  state.handleFrame(message(1), 20001);
  assert.deepEqual(state.typingUsers(conv), [], 'their message ends it');
  state.handleFrame(typing(true), 20002);
  state.handleFrame(typing(false), 20003);
  assert.deepEqual(state.typingUsers(conv), []);
  state.handleFrame({ ...typing(true), user: ALICE }, 20004);
  assert.deepEqual(state.typingUsers(conv), [], 'our own typing on another device is not shown');
});

test('our typing is renewed while keys are pressed and stops when idle, sent or switched away', () => {
  const state = welcomed([summary(C1, 0), summary(C2, 0)]);
  state.open(C1, 0);
  state.takeFrames();
  const typingFrames = () => ofType(state.takeFrames(), 'typing').map((f) => [f.conversation, f.active]);
  state.composerInput(true, 0);
  state.composerInput(true, TYPING_RENEW_MS - 1);
  assert.deepEqual(typingFrames(), [[C1, true]]);
  state.composerInput(true, TYPING_RENEW_MS);
  assert.deepEqual(typingFrames(), [[C1, true]], 'renewed');
  assert.equal(state.nextDeadline(), TYPING_RENEW_MS + TYPING_IDLE_MS);
  state.handleTimeout(TYPING_RENEW_MS + TYPING_IDLE_MS);
  assert.deepEqual(typingFrames(), [[C1, false]], 'idle');
  state.composerInput(true, 10000);
  state.open(C2, 10001);
  assert.deepEqual(typingFrames(), [[C1, true], [C1, false]], 'switching conversations stops it');
  state.composerInput(true, 10002);
  state.composerInput(false, 10003);
  assert.deepEqual(typingFrames(), [[C2, true], [C2, false]], 'emptying the composer stops it');
  state.composerInput(true, 10004);
  state.handleDisconnected();
  state.stopTyping();
  assert.deepEqual(typingFrames(), [], 'a lost session needs no stop');
});

test('the transport going down forgets requests in flight and queues nothing until welcome', () => {
  const state = welcomed([summary(C1, 10)]);
  state.requestHistory(C1);
  const [page] = state.takeFrames();
  assert.deepEqual(page, { type: 'history', request_id: 'r-1', conversation: C1, before: null, limit: HISTORY_PAGE_MESSAGES });
  state.handleFrame({ type: 'typing', conversation: C1, user: BOB, active: true }, 0);
  state.handleDisconnected();
  const conv = state.convs.get(C1);
  assert.equal(conv.historyPending, null);
  assert.deepEqual(state.typingUsers(conv), []);
  state.requestHistory(C1);
  state.setVisible(true, 1);
  assert.deepEqual(state.takeFrames(), []);
  // After the next welcome, paging back asks again.
  state.handleFrame(welcome(summary(C1, 10)), 2);
  state.takeFrames();
  state.requestHistory(C1);
  assert.equal(ofType(state.takeFrames(), 'history').length, 1);
});

test('paging back asks before the oldest message held and stops at seq 1', () => {
  const state = welcomed([summary(C1, 60)]);
  state.requestHistory(C1);
  const [newest] = state.takeFrames();
  assert.equal(newest.before, null);
  assert.equal(state.requestHistory(C1), false);
  assert.deepEqual(state.takeFrames(), [], 'one page at a time');
  const seqs = Array.from({ length: 50 }, (_, index) => index + 11);
  state.handleFrame(historyAnswer(newest.request_id, seqs), 1);
  const conv = state.convs.get(C1);
  assert.ok(state.hasOlder(conv));
  state.requestHistory(C1);
  const [older] = state.takeFrames();
  assert.equal(older.before, 11);
  state.handleFrame(historyAnswer(older.request_id, Array.from({ length: 10 }, (_, index) => index + 1)), 2);
  assert.equal(state.hasOlder(conv), false);
  assert.equal(conv.noOlder, true);
});

test('a conversation created offline is sent after welcome and opens when answered', () => {
  const state = fresh();
  assert.equal(state.createConversation([BOB], null), false);
  state.handleFrame(welcome(), 0);
  const [create] = ofType(state.takeFrames(), 'create_conversation');
  assert.deepEqual(create, { type: 'create_conversation', request_id: 'r-1', members: [BOB], title: null });
  state.takeNotices();
  state.handleFrame({ type: 'conversation', id: C1, members: [ALICE, BOB], title: null, request_id: 'r-1' }, 5000);
  assert.deepEqual(state.takeNotices(), [{ type: 'open', id: C1 }]);
  const conv = state.convs.get(C1);
  assert.equal(conv.cursor, 0, 'a new conversation resumes from seq 1');
  assert.equal(conv.lastTs, 5000, 'and is listed first');
  assert.equal(state.otherMember(conv), BOB);
  assert.equal(state.convName(conv), BOB);
  // Added by someone else: listed, not opened.
  state.handleFrame({ type: 'conversation', id: C2, members: [ALICE, BOB, 'carol'], title: 'team', request_id: null }, 6000);
  assert.deepEqual(state.takeNotices(), []);
  assert.deepEqual(state.sortedConversations().map((c) => c.id), [C2, C1]);
  assert.equal(state.otherMember(state.convs.get(C2)), null);
});

test('errors become notices: sign out, reconnect, hold off, toast', () => {
  const state = welcomed();
  const error = (code, extra = {}) => ({ type: 'error', request_id: null, conversation: null, client_seq: null, code, message: `${code} happened`, retry_after_ms: null, ...extra });
  state.handleFrame(error('unauthenticated'), 0);
  state.handleFrame(error('hello_required'), 0);
  state.handleFrame(error('rate_limited', { request_id: 'x' }), 0);
  state.handleFrame(error('rate_limited', { request_id: 'y', retry_after_ms: 250 }), 0);
  assert.deepEqual(state.takeNotices(), [
    { type: 'unauthenticated', message: 'unauthenticated happened' },
    { type: 'reconnect' },
    { type: 'hold_off', ms: RATE_LIMITED_HOLD_OFF_MS },
    { type: 'toast', text: 'rate_limited happened (rate_limited)' },
    { type: 'hold_off', ms: 250 },
    { type: 'toast', text: 'rate_limited happened (rate_limited)' },
  ]);
});

test('a refused page stops paging back; a refused gap fill may be asked again', () => {
  const state = welcomed([summary(C1, 10)]);
  state.requestHistory(C1);
  const [page] = state.takeFrames();
  state.handleFrame({ type: 'error', request_id: page.request_id, conversation: null, client_seq: null, code: 'unavailable', message: 'later', retry_after_ms: null }, 0);
  const conv = state.convs.get(C1);
  assert.equal(conv.noOlder, true);
  state.handleFrame(message(13), 1);
  const [fill] = ofType(state.takeFrames(), 'history');
  state.handleFrame({ type: 'error', request_id: fill.request_id, conversation: null, client_seq: null, code: 'unavailable', message: 'later', retry_after_ms: null }, 2);
  assert.equal(conv.gapPending, null);
  state.handleFrame(message(14), 3);
  assert.equal(ofType(state.takeFrames(), 'history').length, 1);
});

test('saved sends of an earlier page are resent with their client_seq', () => {
  const pending = [{ conversation: C1, client_seq: 7, body: 'from before', created: 1 }];
  const state = fresh({ pending, readCursors: { [C1]: 3 } });
  state.handleFrame(welcome(summary(C1, 5)), 10);
  assert.deepEqual(ofType(state.takeFrames(), 'send'), [{ type: 'send', conversation: C1, client_seq: 7, body: 'from before' }]);
  assert.equal(state.convs.get(C1).readCursor, 3);
  assert.equal(state.unread(state.convs.get(C1)), 2);
  assert.equal(state.send(C1, 'new', 11), 8, 'a new send never reuses a saved client_seq');
});

test('presence defaults to offline until the server says otherwise', () => {
  const state = welcomed();
  assert.deepEqual(state.presenceOf(BOB), { status: 'offline', last_seen: null, custom: null });
  state.handleFrame({ type: 'presence', user: BOB, status: 'online', last_seen: 5, custom: 'at lunch' }, 0);
  assert.deepEqual(state.presenceOf(BOB), { status: 'online', last_seen: 5, custom: 'at lunch' });
});

test('member lists are parsed, deduplicated and checked', () => {
  assert.deepEqual(parseMembers(' bob, carol ,bob,alice,', ALICE), { members: [BOB, 'carol'] });
  assert.deepEqual(parseMembers('alice', ALICE), { error: 'Name at least one other user.' });
  assert.deepEqual(parseMembers('bob, no spaces', ALICE), { error: '"no spaces" is not a valid user id.' });
});
