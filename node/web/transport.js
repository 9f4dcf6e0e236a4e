// How the web client reaches the node: WebSocket, SSE or long-poll behind one interface, and the
// connection manager that picks one, says hello and reconnects with backoff.
//
// Each transport has connect(onFrame, onOpen, onClose, onStatus), send(frame) and close().
// onClose gets {opened, reason?, message?, retryAfter?}, fires at most once, and never after
// close(). onStatus gets 'connecting' or 'connected' while an established session's stream
// reconnects by itself, or ('rate_limited', wait_ms) when the node asks the client to slow down.

/** Transports in the order they are tried. */
export const TRANSPORTS = ['ws', 'sse', 'poll'];
/** A WebSocket ping this often; one unanswered a whole interval later means the socket is dead. */
export const PING_MS = 20000;
/** Reconnect backoff: the first wait, and the most it grows to. */
export const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 15000;
/** Tries of a frame POST that failed with no answer before the session is given up. */
export const SEND_TRIES_MAX = 5;
/** A transport that has not opened by then has failed; a session with no welcome by then too. */
export const OPEN_TIMEOUT_MS = 10000, HELLO_TIMEOUT_MS = 15000;
/** HTTP sessions expire ~60 s after their last connection, so a stream down this long is given up. */
export const SESSION_GRACE_MS = 45000;
/** The server holds a poll for up to 25 s. */
export const POLL_TIMEOUT_MS = 35000;
/** Transports that fail to open this many times in a row are tried down the list again. */
const OPEN_FAILURES_MAX = 3;

export const parseJson = (text) => { try { return JSON.parse(text); } catch { return null; } };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function wsTransport(token) {
  let socket = null, done = false, onCloseHandler = null, pingTimer = null, openTimer = null;
  let nonce = 0, lastPingAt = 0, lastFrameAt = 0;

  function finish(info) {
    if (done) return;
    done = true;
    clearInterval(pingTimer);
    clearTimeout(openTimer);
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      try { socket.close(); } catch { /* already closed */ }
    }
    if (info && onCloseHandler) onCloseHandler(info);
  }

  const api = {
    name: 'ws',
    connect(onFrame, onOpen, onClose) {
      onCloseHandler = onClose;
      let opened = false;
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      socket = new WebSocket(`${scheme}//${location.host}/v1/ws?token=${encodeURIComponent(token)}`);
      openTimer = setTimeout(() => finish({ opened: false }), OPEN_TIMEOUT_MS);
      socket.onopen = () => {
        opened = true;
        clearTimeout(openTimer);
        // Pings keep proxies from closing an idle socket. A ping still unanswered one interval
        // later means the socket is dead even if the OS has not noticed; comparing against the
        // last ping rather than a fixed timeout stays right when background tabs throttle timers.
        pingTimer = setInterval(() => {
          if (lastPingAt && lastFrameAt < lastPingAt) return finish({ opened: true });
          lastPingAt = Date.now();
          api.send({ type: 'ping', nonce: ++nonce });
        }, PING_MS);
        onOpen();
      };
      socket.onmessage = (event) => {
        lastFrameAt = Date.now();
        const frame = parseJson(event.data);
        if (frame) onFrame(frame);
      };
      socket.onclose = () => finish({ opened });
    },
    send(frame) {
      if (done || !socket || socket.readyState !== WebSocket.OPEN) return false;
      socket.send(JSON.stringify(frame));
      return true;
    },
    close() { finish(null); },
  };
  return api;
}

// SSE and long-poll share the HTTP session and POST /v1/send; only the download differs.
export function httpTransport(token, mode) {
  let session = null, done = false, opened = false, source = null, pollAbort = null, handlers = null;
  let flushing = false;
  const queue = [];
  const url = (path, params = {}) => `${path}?${new URLSearchParams({ ...params, token })}`;

  function finish(info) {
    if (done) return;
    done = true;
    if (source) source.close();
    if (pollAbort) pollAbort.abort();
    if (info && handlers) handlers.onClose(info);
  }

  // 401 (token refused), 404 (session expired) and 410 (its frames were dropped) end the session.
  const sessionLost = (res) => res && [401, 404, 410].includes(res.status);

  // Turns a refused HTTP answer into what the connection manager acts on.
  async function refusal(res) {
    const body = parseJson(await res.text().catch(() => '')) || {};
    if (res.status === 401) return { reason: 'unauthenticated', message: body.message };
    if (res.status === 429) {
      const retryAfter = body.retry_after_ms ?? (Number(res.headers.get('Retry-After')) * 1000 || undefined);
      return { reason: 'rate_limited', retryAfter, message: body.message };
    }
    return { reason: sessionLost(res) ? 'expired' : `http_${res.status}` };
  }

  async function start() {
    let res;
    try { res = await fetch(url('/v1/sessions'), { method: 'POST' }); } catch { return finish({ opened: false }); }
    if (done) return;
    if (!res.ok) return finish({ opened: false, ...(await refusal(res)) });
    const body = parseJson(await res.text().catch(() => ''));
    if (done) return;
    if (!body || !body.session) return finish({ opened: false });
    session = body.session;
    if (mode === 'sse') return openEvents();
    opened = true;
    handlers.onOpen();
    poll();
  }

  function openEvents() {
    source = new EventSource(url('/v1/events', { session }));
    let downSince = null;
    const openTimer = setTimeout(() => { if (!opened) finish({ opened: false }); }, OPEN_TIMEOUT_MS);
    source.onopen = () => {
      clearTimeout(openTimer);
      downSince = null;
      if (!opened) { opened = true; handlers.onOpen(); } else handlers.onStatus('connected');
    };
    source.onmessage = (event) => {
      const frame = parseJson(event.data);
      if (frame) handlers.onFrame(frame);
    };
    // A refused (re)connect, such as 404 for an expired session, closes the EventSource for
    // good; otherwise it retries by itself and resumes with Last-Event-ID. The state is read a
    // task later because some implementations fire the error before they close.
    source.onerror = () => setTimeout(() => {
      if (done) return;
      if (source.readyState === EventSource.CLOSED) return finish({ opened });
      if (!opened) return;
      handlers.onStatus('connecting');
      if (downSince === null) downSince = Date.now();
      else if (Date.now() - downSince > SESSION_GRACE_MS) finish({ opened });
    }, 0);
  }

  async function poll() {
    let after = 0, failures = 0, lastOk = Date.now();
    while (!done) {
      pollAbort = new AbortController();
      const timer = setTimeout(() => pollAbort.abort(), POLL_TIMEOUT_MS);
      let res = null, body = null;
      try {
        res = await fetch(url('/v1/poll', { session, after }), { signal: pollAbort.signal, cache: 'no-store' });
        if (res.ok) body = parseJson(await res.text());
      } catch { /* counted as a failure below */ }
      clearTimeout(timer);
      if (done) return;
      if (sessionLost(res)) return finish({ opened: true, ...(await refusal(res)) });
      if (body && Array.isArray(body.frames)) {
        if (failures) handlers.onStatus('connected');
        failures = 0;
        lastOk = Date.now();
        if (typeof body.next === 'number') after = body.next;
        body.frames.forEach(handlers.onFrame);
        continue;
      }
      handlers.onStatus('connecting');
      if (Date.now() - lastOk > SESSION_GRACE_MS) return finish({ opened: true });
      await sleep(Math.min(5000, 250 * 2 ** ++failures));
    }
  }

  // Frames are posted one at a time so they reach the server in the order they were sent.
  async function flush() {
    if (flushing || !session) return;
    flushing = true;
    let failures = 0;
    while (queue.length && !done) {
      const init = { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(queue[0]) };
      const res = await fetch(url('/v1/send', { session }), init).catch(() => null);
      if (done) break;
      if (res && res.ok) { queue.shift(); failures = 0; continue; }
      if (sessionLost(res)) {
        finish({ opened: true, ...(await refusal(res)) });
        break;
      }
      if (res && res.status === 429) {
        const wait = (await refusal(res)).retryAfter || 1000;
        handlers.onStatus('rate_limited', wait);
        await sleep(wait);
      } else if (res && res.status >= 400 && res.status < 500) {
        // The server refused this frame for good; its error frame is handled like any other.
        queue.shift();
        const body = parseJson(await res.text().catch(() => ''));
        if (body && body.type === 'error') handlers.onFrame(body);
      } else if (++failures > SEND_TRIES_MAX) {
        finish({ opened: true });
      } else {
        await sleep(500 * failures);
      }
    }
    flushing = false;
  }

  return {
    name: mode,
    connect(onFrame, onOpen, onClose, onStatus) {
      handlers = { onFrame, onOpen, onClose, onStatus };
      start();
    },
    send(frame) {
      if (done) return false;
      queue.push(frame);
      flush();
      return true;
    },
    close() { finish(null); },
  };
}

/**
 * Keeps one session up: picks a transport, says `hello()` when it opens, and after it drops
 * tries again, down the transport list or after a backoff. Callbacks:
 *   onFrame(frame)         a server frame of the current session
 *   onDown(info)           the session ended (info as the transports' onClose); for
 *                          info.reason 'unauthenticated' no retry follows
 *   onStatus(text)         'connecting', 'connected' or 'offline'
 *   onTransport(name)      the transport now tried
 *   onRateLimited(wait_ms) the node asked to slow down
 */
export class Connection {
  constructor({ token, forced = null, hello, onFrame, onDown, onStatus, onTransport, onRateLimited }) {
    Object.assign(this, { token, forced, hello, onFrame, onDown, onStatus, onTransport, onRateLimited });
    this.transport = null;
    this.welcomed = false;
    this.closed = false;
    /** The transport a session last worked over (kept while it keeps opening). */
    this.working = null;
    this.chainIndex = 0;
    this.attempt = 0;
    this.openFailures = 0;
    this.holdOffMs = 0;
    this.retryTimer = null;
    this.helloTimer = null;
  }

  /**
   * Until a transport has worked, fall down the list; afterwards a failure means the network or
   * the server is down, so the transport known to work is kept (until it fails to open three
   * times in a row, as when the page moves to a network whose proxy blocks it).
   */
  chain() {
    return this.forced ? [this.forced] : this.working ? [this.working] : TRANSPORTS;
  }

  start() {
    if (this.closed || this.transport) return;
    clearTimeout(this.retryTimer);
    const names = this.chain();
    const name = names[Math.min(this.chainIndex, names.length - 1)];
    const transport = this.transport = name === 'ws' ? wsTransport(this.token) : httpTransport(this.token, name);
    this.onTransport(name);
    this.onStatus('connecting');
    // Callbacks of a transport that has since been replaced must not touch anything.
    const current = (fn) => (...args) => { if (!this.closed && this.transport === transport) fn(...args); };
    transport.connect(current(this.onFrame), current(() => {
      transport.send(this.hello());
      this.helloTimer = setTimeout(current(() => this.drop({ opened: true })), HELLO_TIMEOUT_MS);
    }), current((info) => this.drop(info)), current((state, detail) => {
      if (state === 'rate_limited') this.onRateLimited(detail || 1000);
      else if (this.welcomed) this.onStatus(state);
    }));
  }

  /** Sends a frame of the established session; false when it cannot go. */
  send(frame) {
    return Boolean(this.welcomed && this.transport && this.transport.send(frame));
  }

  /** The server welcomed the session: the transport works, and backoff starts over. */
  markWelcomed() {
    clearTimeout(this.helloTimer);
    Object.assign(this, { welcomed: true, attempt: 0, chainIndex: 0, openFailures: 0 });
    if (!this.forced) this.working = this.transport.name;
    this.onStatus('connected');
  }

  /** The next reconnect waits at least `ms` (the server said so). */
  holdOff(ms) {
    this.holdOffMs = ms;
  }

  /** Ends the current session and tries again: down the list, or after a backoff. */
  drop(info) {
    if (this.transport) this.transport.close();
    this.transport = null;
    this.welcomed = false;
    clearTimeout(this.helloTimer);
    this.onDown(info);
    if (this.closed || info.reason === 'unauthenticated') return;
    this.openFailures = info.opened ? 0 : this.openFailures + 1;
    if (this.openFailures >= OPEN_FAILURES_MAX) this.working = null;
    if (!info.opened && info.reason !== 'rate_limited' && this.chainIndex + 1 < this.chain().length) {
      this.chainIndex += 1;
      return this.start();
    }
    this.chainIndex = 0;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt++);
    const wait = Math.max(base * (0.5 + Math.random()), info.retryAfter || 0, this.holdOffMs);
    this.retryTimer = setTimeout(() => this.start(), wait);
    this.holdOffMs = 0;
    this.onStatus('offline');
  }

  /** The browser is back online: retry at once instead of waiting out the backoff. */
  retryNow() {
    if (this.closed || this.transport) return;
    this.attempt = 0;
    this.start();
  }

  /** Ends the session for good (signing out). */
  close() {
    this.closed = true;
    if (this.transport) this.transport.close();
    this.transport = null;
    clearTimeout(this.retryTimer);
    clearTimeout(this.helloTimer);
  }
}
