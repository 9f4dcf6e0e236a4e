// The web client's DOM: the conversation list, the open chat, the sign-in form, the status and
// the toast. It reads a ClientState (state.js) and changes nothing in it; what the user does
// goes back through the handlers the View is made with. Rendering is batched by the caller into
// one pass per task, and DOM nodes are reused by key.

const TICKS = { sending: '◷', sent: '✓', delivered: '✓✓', read: '✓✓' };
/** How long a toast stays up. */
const TOAST_MS = 4000;
/** Within this many pixels of the bottom the view follows new messages. */
const FOLLOW_PX = 60;
/** A view less than this much taller than its content asks for older messages. */
const FILL_PX = 40;

export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function ago(ms) {
  const minutes = Math.round((Date.now() - ms) / 60000), hours = Math.round(minutes / 60);
  const days = Math.round(hours / 24);
  if (minutes < 1) return 'just now';
  if (minutes < 60) return minutes === 1 ? '1 minute ago' : `${minutes} minutes ago`;
  if (hours < 24) return hours === 1 ? '1 hour ago' : `${hours} hours ago`;
  return days === 1 ? 'yesterday' : days < 7 ? `${days} days ago` : `on ${new Date(ms).toLocaleDateString()}`;
}

function formatTime(ms) {
  const date = new Date(ms);
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return date.toDateString() === new Date().toDateString() ? time : `${date.toLocaleDateString()} ${time}`;
}

export class View {
  /** `onOpen(id)`: a conversation was clicked; `onOlder(id)`: the chat wants older messages. */
  constructor({ onOpen, onOlder }) {
    this.onOpen = onOpen;
    this.onOlder = onOlder;
    this.listItems = new Map();    // conversation id -> li
    this.messageNodes = new Map(); // key ("s<seq>", or "c<client_seq>" for sends of this page) -> div
    this.renderedConvId = null;
    /** Jump to the newest message at the next render (after a send, or opening a chat). */
    this.scrollToBottom = true;
    this.toastTimer = null;
  }

  render(state) {
    const conv = state.openConversation();
    this.renderList(state);
    this.renderChat(state, conv);
    const unread = state.unreadTotal();
    document.title = unread ? `(${unread}) natter` : 'natter';
  }

  renderList(state) {
    const ul = $('conversations');
    state.sortedConversations().forEach((conv, index) => {
      let li = this.listItems.get(conv.id);
      if (!li) {
        this.listItems.set(conv.id, li = el('li', 'conversation'));
        li.dataset.id = conv.id;
        li.append(el('span', 'title'), el('span', 'preview'), el('span', 'unread'));
        li.addEventListener('click', () => this.onOpen(conv.id));
      }
      const other = state.otherMember(conv);
      let dot = li.querySelector('.presence-dot');
      if (other && !dot) li.prepend(dot = el('span', 'presence-dot'));
      if (!other && dot) dot.remove();
      if (other) dot.dataset.status = dot.title = state.presenceOf(other).status;
      li.querySelector('.title').textContent = state.convName(conv);
      li.querySelector('.preview').textContent = conv.preview || '';
      const unread = state.unread(conv), badge = li.querySelector('.unread');
      badge.textContent = String(unread);
      badge.hidden = unread === 0;
      li.classList.toggle('active', conv.id === state.openId);
      if (ul.children[index] !== li) ul.insertBefore(li, ul.children[index] || null);
    });
  }

  renderChat(state, conv) {
    $('chat-empty').hidden = Boolean(conv);
    $('chat-header').hidden = $('messages').hidden = !conv;
    $('message-input').disabled = $('send-button').disabled = !conv;
    this.renderTyping(state, conv);
    if (!conv) return this.renderMessages(state, null);
    $('chat-title').textContent = state.convName(conv);
    const other = state.otherMember(conv), header = $('chat-presence');
    header.hidden = !other;
    $('chat-members').hidden = Boolean(other);
    $('message-list').classList.toggle('direct', Boolean(other)); // A 1:1 needs no sender names.
    $('chat-members').textContent = `${conv.members.length} members: ${conv.members.join(', ')}`;
    if (other) {
      // As messengers do: "online" or "away" while connected, else when the user was last seen.
      const { status, last_seen: lastSeen, custom } = state.presenceOf(other);
      header.querySelector('.presence-dot').dataset.status = status;
      const text = status !== 'offline' ? status : lastSeen != null ? `last seen ${ago(lastSeen)}` : 'offline';
      header.querySelector('.last-seen').textContent = text + (custom ? ` · ${custom}` : '');
    }
    const older = $('load-older');
    older.hidden = !state.hasOlder(conv);
    older.disabled = Boolean(conv.historyPending);
    older.textContent = conv.historyPending ? 'Loading…' : 'Load older messages';
    this.renderMessages(state, conv);
    // Page back until the view is full, so a short conversation never needs a scroll to load.
    const box = $('messages');
    if (box.scrollHeight <= box.clientHeight + FILL_PX) this.onOlder(conv.id);
  }

  renderMessages(state, conv) {
    const list = $('message-list'), box = $('messages');
    if (!conv || this.renderedConvId !== conv.id) {
      list.replaceChildren();
      this.messageNodes.clear();
      this.renderedConvId = conv ? conv.id : null;
      if (!conv) return;
    }
    const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < FOLLOW_PX;
    const anchor = list.firstElementChild, anchorTop = anchor ? anchor.offsetTop : 0;
    const wanted = new Set();
    state.timeline(conv).forEach((item, index) => {
      wanted.add(item.key);
      let node = this.messageNodes.get(item.key);
      if (!node) this.messageNodes.set(item.key, node = buildMessage(item.sender === state.me));
      updateMessage(state, node, item, conv);
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
    });
    for (const [key, node] of this.messageNodes) if (!wanted.has(key)) { node.remove(); this.messageNodes.delete(key); }
    // Follow new messages when the reader is at the bottom; otherwise keep what they read in place.
    if (this.scrollToBottom || nearBottom) {
      box.scrollTop = box.scrollHeight;
      this.scrollToBottom = false;
    } else if (anchor && anchor.isConnected) {
      box.scrollTop += anchor.offsetTop - anchorTop;
    }
  }

  renderTyping(state, conv) {
    const users = conv ? state.typingUsers(conv) : [], indicator = $('typing-indicator');
    indicator.hidden = users.length === 0;
    indicator.textContent = users.length === 0 ? ''
      : users.length === 1 ? `${users[0]} is typing…`
      : users.length === 2 ? `${users[0]} and ${users[1]} are typing…`
      : `${users[0]}, ${users[1]} and ${users.length - 2} more are typing…`;
  }

  setStatus(text) {
    $('status').textContent = $('status').dataset.state = text;
  }

  setTransport(name) {
    $('transport').textContent = name;
  }

  toast(text) {
    const node = $('toast');
    node.textContent = text;
    node.hidden = false;
    clearTimeout(this.toastTimer);
    this.toastTimer = setTimeout(() => { node.hidden = true; }, TOAST_MS);
  }

  showSignIn(message) {
    $('app').hidden = true;
    $('signin').hidden = false;
    $('signin-error').textContent = message || '';
    $('signin-error').hidden = !message;
    $('token-input').focus();
  }

  /** Shows the (empty) app for `user` on `device`. */
  showApp(user, device) {
    this.listItems.clear();
    $('conversations').replaceChildren();
    $('signin').hidden = true;
    $('app').hidden = false;
    $('me').replaceChildren(user, ' ', el('small', null, device));
  }

  /** Clears what the signed-out user saw and shows the sign-in form. */
  showSignedOut(message) {
    this.renderMessages(null, null);
    this.setStatus('offline');
    $('transport').textContent = $('token-input').value = '';
    document.title = 'natter';
    this.showSignIn(message);
  }
}

function buildMessage(mine) {
  const node = el('div', 'message');
  const parts = node.parts = {
    sender: el('div', 'sender'), body: el('div', 'body'), meta: el('div', 'meta'), time: el('span', 'time'),
    error: el('div', 'error'), tick: mine ? el('span', 'tick') : null,
  };
  parts.meta.append(parts.time, ...(mine ? [parts.tick] : []));
  node.append(parts.sender, parts.body, parts.meta, parts.error);
  return node;
}

function updateMessage(state, node, item, conv) {
  const { parts } = node, mine = item.sender === state.me;
  node.className = `message${mine ? ' mine' : ''}${item.failed ? ' failed' : ''}`;
  if (item.seq != null) node.dataset.seq = item.seq; else node.removeAttribute('data-seq');
  node.dataset.sender = item.sender;
  if (mine && item.sender_device === state.device) node.dataset.clientSeq = item.client_seq;
  else node.removeAttribute('data-client-seq');
  parts.sender.textContent = item.sender;
  if (parts.body.textContent !== item.body) parts.body.textContent = item.body;
  parts.time.textContent = formatTime(item.ts);
  parts.time.title = new Date(item.ts).toLocaleString();
  if (parts.tick) {
    const tick = item.seq == null ? 'sending' : state.tickState(conv, item.seq);
    parts.tick.dataset.state = parts.tick.title = tick;
    parts.tick.textContent = TICKS[tick];
    parts.tick.hidden = Boolean(item.failed);
  }
  parts.error.hidden = !item.failed;
  parts.error.textContent = item.failed ? `Not sent: ${item.error}` : '';
}
