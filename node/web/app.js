// The web client's shell: wires the state (state.js), the connection (transport.js) and the
// view (render.js) to the page, the clock and localStorage. Every input goes into the state
// through act(); pump() then sends its frames, saves what changed, carries out its notices,
// arms its next deadline and schedules one render.

import { BODY_BYTES_MAX, ClientState, parseMembers } from './state.js';
import { Connection, TRANSPORTS, parseJson } from './transport.js';
import { $, View } from './render.js';

const TOKEN_KEY = 'natter.token';
/** Relative times ("last seen 5 minutes ago") are redrawn this often while the page is open. */
const RERENDER_MS = 30000;

const FORCED = [new URLSearchParams(location.search).get('transport')].find((t) => TRANSPORTS.includes(t)) || null;

const randomId = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => (b % 36).toString(36)).join('');

// localStorage can throw (private mode, quota), and losing a cached value is never fatal here.
const store = {
  get(key, fallback) { try { return parseJson(localStorage.getItem(key)) ?? fallback; } catch { return fallback; } },
  set(key, value) { try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* best effort */ } },
  remove(key) { try { localStorage.removeItem(key); } catch { /* best effort */ } },
};

const keys = {
  device: (user) => `natter.device.${user}`,
  read: (user) => `natter.read.${user}`,
  pending: (user, device) => `natter.pending.${user}.${device}`,
  clientSeq: (user, device) => `natter.client_seq.${user}.${device}`,
};

// The page only needs the user id for display and storage keys; the server verifies the token.
function jwtSub(token) {
  try {
    const part = token.split('.')[1];
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4);
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(base64), (c) => c.charCodeAt(0))));
    return typeof claims.sub === 'string' && claims.sub ? claims.sub : null;
  } catch { return null; }
}

const isVisible = () => document.visibilityState === 'visible';

/** Signed in: the state and its connection; null while signed out. */
let state = null, connection = null;
let deadlineTimer = null, renderQueued = false;

const view = new View({
  onOpen: (id) => openConversation(id),
  // Called from a render: only a request that went out may schedule another one.
  onOlder: (id) => { if (state && state.requestHistory(id)) pump(); },
});

/** Runs `change(now)` against the state, then carries out what it asks for; returns its result. */
function act(change) {
  if (!state) return undefined;
  const result = change(Date.now());
  pump();
  return result;
}

function pump() {
  if (!state) return;
  // Notices first: a welcome marks the connection ready for the frames that follow it.
  for (const notice of state.takeNotices()) {
    handleNotice(notice);
    if (!state) return;
  }
  for (const frame of state.takeFrames()) connection.send(frame);
  const saves = state.takeSaves();
  if (saves.has('pending')) store.set(keys.pending(state.me, state.device), state.savedPending());
  if (saves.has('read')) store.set(keys.read(state.me), state.readCursors);
  if (saves.has('client_seq')) store.set(keys.clientSeq(state.me, state.device), state.clientSeq);
  clearTimeout(deadlineTimer);
  const at = state.nextDeadline();
  if (at != null) deadlineTimer = setTimeout(() => act((now) => state.handleTimeout(now)), Math.max(0, at - Date.now()));
  scheduleRender();
}

function handleNotice(notice) {
  switch (notice.type) {
    case 'welcome': {
      connection.markWelcomed();
      const fromHash = decodeURIComponent(location.hash.slice(1));
      if (!state.openId && state.convs.has(fromHash)) openConversation(fromHash);
      break;
    }
    case 'open': openConversation(notice.id); break;
    case 'toast': view.toast(notice.text); break;
    case 'unauthenticated': signOut(notice.message || 'The server refused the token.'); break;
    case 'reconnect': connection.drop({ opened: true }); break;
    case 'hold_off': connection.holdOff(notice.ms); break;
    default: break;
  }
}

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  // A microtask rather than requestAnimationFrame, which stops in hidden tabs.
  queueMicrotask(() => {
    renderQueued = false;
    if (state) view.render(state);
  });
}

function openConversation(id) {
  if (!state) return;
  act((now) => state.open(id, now));
  view.scrollToBottom = true;
  // The hash lets a reload come back to the same conversation.
  history.replaceState(null, '', `${location.pathname}${location.search}#${encodeURIComponent(id)}`);
  queueMicrotask(() => $('message-input').focus());
}

function signIn(token) {
  const user = jwtSub(token);
  if (!user) return view.showSignIn('That is not a JWT with a "sub" claim.');
  store.set(TOKEN_KEY, token);
  const device = store.get(keys.device(user), null) || `web-${randomId(12)}`;
  store.set(keys.device(user), device);
  state = new ClientState({
    me: user, device, visible: isVisible(),
    readCursors: store.get(keys.read(user), {}),
    pending: store.get(keys.pending(user, device), []),
    newRequestId: (prefix) => `${prefix}-${randomId(10)}`,
  });
  view.showApp(user, device);
  connection = new Connection({
    token, forced: FORCED,
    hello: () => state.helloFrame(),
    onFrame: (frame) => {
      try {
        state.handleFrame(frame, Date.now());
      } catch (error) {
        console.error('natter: failed to handle frame', frame, error);
      }
      pump();
    },
    onDown: (info) => {
      act(() => state.handleDisconnected());
      if (info.reason === 'unauthenticated') signOut(info.message || 'The server refused the token.');
    },
    onStatus: (text) => view.setStatus(text),
    onTransport: (name) => view.setTransport(name),
    onRateLimited: (ms) => view.toast(`Rate limited; retrying in ${Math.ceil(ms / 1000)} s.`),
  });
  connection.start();
  scheduleRender();
}

function signOut(message) {
  if (connection) connection.close();
  clearTimeout(deadlineTimer);
  state = connection = null;
  store.remove(TOKEN_KEY);
  view.showSignedOut(message);
}

$('signin').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('token-input').value.trim();
  if (token) signIn(token);
});

$('sign-out').addEventListener('click', () => signOut());

$('composer').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('message-input'), body = input.value;
  if (!state || !state.openId || !body.trim()) return;
  if (new TextEncoder().encode(body).length > BODY_BYTES_MAX) return view.toast('A message can be at most 64 KiB.');
  input.value = '';
  input.focus();
  view.scrollToBottom = true;
  act((now) => {
    state.stopTyping();
    state.send(state.openId, body, now, store.get(keys.clientSeq(state.me, state.device), 0));
  });
});

$('message-input').addEventListener('input', () => {
  act((now) => state.composerInput(Boolean($('message-input').value.trim()), now));
});
$('message-input').addEventListener('blur', () => act(() => state.stopTyping()));

$('new-conversation').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!state) return;
  const parsed = parseMembers($('new-members').value, state.me);
  if (parsed.error) return view.toast(parsed.error);
  const title = $('new-title').value.trim() || null;
  const sent = act(() => state.createConversation(parsed.members, title));
  if (!sent) view.toast('Offline: the conversation will be created once reconnected.');
  event.target.reset();
});

$('load-older').addEventListener('click', () => act(() => state.requestHistory(state.openId)));
$('messages').addEventListener('scroll', () => {
  if ($('messages').scrollTop < 80) act(() => state.requestHistory(state.openId));
});

document.addEventListener('visibilitychange', () => act((now) => state.setVisible(isVisible(), now)));

// When the browser regains the network, retry at once instead of waiting out the backoff.
window.addEventListener('online', () => { if (connection) connection.retryNow(); });

setInterval(() => { if (state) scheduleRender(); }, RERENDER_MS);

(function start() {
  const url = new URL(location.href), fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    // Keep the token out of the address bar, bookmarks and screenshots.
    url.searchParams.delete('token');
    history.replaceState(null, '', `${url.pathname}${url.search}${url.hash}`);
  }
  const token = fromUrl || store.get(TOKEN_KEY, null);
  if (token) signIn(token); else view.showSignIn();
})();
