// Two users chat through natter's web client in headless Chromium, over one forced transport.
//
// Run by node/tests/browser.rs, which starts the node and makes the tokens. Environment:
//   BASE_URL      the node's HTTP address, such as http://127.0.0.1:41234
//   TOKEN_ALICE   JWT of the user who starts the conversation
//   TOKEN_BOB     JWT of the user who answers
//   TRANSPORT     ws | sse | poll, forced with ?transport=
//   ARTIFACT_DIR  where chat-<TRANSPORT>.png goes (and screenshots of a failed run)
//   CHROMIUM      the browser (default /usr/bin/chromium, Debian's package)
//
// Prints one line per step. On failure it names the step, prints what both pages showed,
// saves their screenshots, and exits 1. The browser is always closed.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

/** Longest any one wait (a launch, a navigation, a selector) may take. */
const STEP_TIMEOUT_MS = 15_000;
/** Longest closing the browser may take before the process exits anyway. */
const CLOSE_TIMEOUT_MS = 10_000;
/** Pause between keystrokes, so typing looks like a person's and fires an input per key. */
const KEY_DELAY_MS = 30;
const TRANSPORTS = ['ws', 'sse', 'poll'];

function required(name) {
  const value = process.env[name];
  if (!value) fail('setup', `environment variable ${name} is not set`);
  return value;
}

function fail(step, message) {
  console.error(`FAILED at step "${step}": ${message}`);
  process.exit(1);
}

// The user id is the token's `sub` claim, as the web client itself reads it.
function subject(token) {
  try {
    const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));
    if (typeof claims.sub === 'string' && claims.sub) return claims.sub;
  } catch { /* reported below */ }
  return fail('setup', 'a token is not a JWT with a "sub" claim');
}

const baseUrl = required('BASE_URL').replace(/\/+$/, '');
const transport = required('TRANSPORT');
if (!TRANSPORTS.includes(transport)) fail('setup', `TRANSPORT is ${transport}, expected one of ${TRANSPORTS.join(', ')}`);
const artifactDir = required('ARTIFACT_DIR');
const users = {
  alice: { token: required('TOKEN_ALICE') },
  bob: { token: required('TOKEN_BOB') },
};
for (const user of Object.values(users)) user.id = subject(user.token);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

// Bodies name the transport, so a screenshot says which run it came from.
const FIRST = `Hello ${users.bob.id}, this is ${users.alice.id} over ${transport}.`;
const SECOND = `Typing this one key by key (${transport}).`;
const REPLY = `Hi ${users.alice.id}! Got both over ${transport}.`;

let currentStep = 'setup';
async function step(name, action) {
  currentStep = name;
  const started = Date.now();
  await action();
  console.log(`ok   ${transport}: ${name} (${Date.now() - started} ms)`);
}

/** Waits until `predicate(argument)` holds in `page`; the condition is evaluated in the page. */
async function until(page, predicate, argument) {
  await page.waitForFunction(predicate, argument, { timeout: STEP_TIMEOUT_MS, polling: 50 });
}

/** The message of `page` whose body is exactly `body`. */
const messageWith = (page, selector, body) =>
  page.locator(selector).filter({ has: page.locator('.body', { hasText: body }) });

async function waitForTick(page, body, state) {
  await messageWith(page, 'div.message.mine', body).locator(`.tick[data-state="${state}"]`).waitFor();
}

// What a page shows, printed when a step fails so the failure can be read without a rerun.
async function describe(page) {
  return page.evaluate(() => {
    const text = (id) => document.getElementById(id)?.textContent.trim() ?? null;
    const hidden = (id) => document.getElementById(id)?.hidden ?? null;
    return {
      url: location.href,
      status: text('status'),
      transport: text('transport'),
      signin_error: hidden('signin-error') ? null : text('signin-error'),
      toast: hidden('toast') ? null : text('toast'),
      typing: hidden('typing-indicator') ? null : text('typing-indicator'),
      visibility: document.visibilityState,
      conversations: [...document.querySelectorAll('li.conversation')].map((li) => ({
        id: li.dataset.id,
        title: li.querySelector('.title')?.textContent,
        unread: li.querySelector('.unread')?.hidden ? 0 : Number(li.querySelector('.unread')?.textContent),
        active: li.classList.contains('active'),
      })),
      messages: [...document.querySelectorAll('div.message')].map((div) => ({
        seq: div.dataset.seq ?? null,
        sender: div.dataset.sender,
        body: div.querySelector('.body')?.textContent,
        tick: div.querySelector('.tick')?.dataset.state ?? null,
        error: div.querySelector('.error')?.hidden ? null : div.querySelector('.error')?.textContent,
      })),
    };
  });
}

/** The transcript a page shows: [seq, sender, body] of every message, in order. */
const transcript = (page) =>
  page.$$eval('div.message', (divs) => divs.map((div) => [div.dataset.seq, div.dataset.sender, div.querySelector('.body').textContent]));

mkdirSync(artifactDir, { recursive: true });
const screenshot = path.join(artifactDir, `chat-${transport}.png`);
const pages = {};
const pageErrors = [];
const consoleErrors = [];
let browser = null;

try {
  await step(`launch ${executablePath}`, async () => {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      timeout: STEP_TIMEOUT_MS,
      // CI runs as root, where Chromium's sandbox cannot start. The machine has no network
      // but loopback, so nothing may reach out on its own (QUIC, component updates).
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  });

  for (const [name, user] of Object.entries(users)) {
    await step(`${name} (${user.id}) opens the web client and connects over ${transport}`, async () => {
      const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
      context.setDefaultTimeout(STEP_TIMEOUT_MS);
      const page = (pages[name] = await context.newPage());
      page.on('pageerror', (error) => pageErrors.push(`${name}: ${error.message}`));
      page.on('console', (message) => {
        if (message.type() === 'error') consoleErrors.push(`${name}: ${message.text()}`);
      });
      const query = new URLSearchParams({ token: user.token, transport });
      await page.goto(`${baseUrl}/?${query}`, { timeout: STEP_TIMEOUT_MS });
      await page.locator('#status[data-state="connected"]').waitFor();
      await until(page, (want) => document.getElementById('transport').textContent === want, transport);
      await until(page, (want) => document.getElementById('me').textContent.startsWith(want), user.id);
      // The token is kept out of the address bar (and so out of screenshots and history).
      if (new URL(page.url()).searchParams.has('token')) throw new Error(`the token is still in the URL: ${page.url()}`);
    });
  }
  const { alice, bob } = pages;

  let conversation = null;
  await step('alice creates a 1:1 with bob and it opens', async () => {
    await alice.locator('#new-members').fill(users.bob.id);
    await alice.locator('#create-button').click();
    const item = alice.locator('li.conversation.active');
    await item.waitFor();
    conversation = await item.getAttribute('data-id');
    await until(alice, (want) => document.getElementById('chat-title').textContent === want, users.bob.id);
    await alice.locator('#message-input:enabled').waitFor();
  });

  await step('bob sees the conversation appear', async () => {
    const item = bob.locator(`li.conversation[data-id="${conversation}"]`);
    await item.waitFor();
    await until(bob, ([id, want]) => document.querySelector(`li.conversation[data-id="${id}"] .title`).textContent === want,
      [conversation, users.alice.id]);
  });

  await step('alice sends a message; bob gets an unread badge, alice a delivered tick', async () => {
    await alice.locator('#message-input').fill(FIRST);
    await alice.locator('#send-button').click();
    await bob.locator(`li.conversation[data-id="${conversation}"] .unread:visible`).filter({ hasText: /^1$/ }).waitFor();
    // Bob's page has the message but has not shown it: delivered, and not yet read.
    await waitForTick(alice, FIRST, 'delivered');
  });

  await step('bob opens the conversation and sees the message', async () => {
    await bob.locator(`li.conversation[data-id="${conversation}"]`).click();
    await messageWith(bob, `div.message[data-sender="${users.alice.id}"][data-seq="1"]:not(.mine)`, FIRST).waitFor();
    await bob.locator(`li.conversation[data-id="${conversation}"] .unread`).waitFor({ state: 'hidden' });
  });

  await step("alice's tick for it turns to read", async () => {
    await waitForTick(alice, FIRST, 'read');
  });

  // The indicator shows in the open conversation only, so bob had to open it first.
  await step("alice types; bob's typing indicator names her", async () => {
    await bob.locator('#typing-indicator').waitFor({ state: 'hidden' });
    await alice.locator('#message-input').pressSequentially(SECOND, { delay: KEY_DELAY_MS });
    await bob.locator('#typing-indicator', { hasText: `${users.alice.id} is typing` }).waitFor();
  });

  await step('alice sends it; bob sees it and the indicator goes', async () => {
    await alice.locator('#send-button').click();
    await messageWith(bob, `div.message[data-sender="${users.alice.id}"][data-seq="2"]`, SECOND).waitFor();
    await bob.locator('#typing-indicator').waitFor({ state: 'hidden' });
    // Bob has the conversation open, so it is read as it arrives.
    await waitForTick(alice, SECOND, 'read');
  });

  await step('bob replies; alice sees it, and bob gets a read tick', async () => {
    await bob.locator('#message-input').pressSequentially(REPLY, { delay: KEY_DELAY_MS });
    await bob.locator('#send-button').click();
    await messageWith(alice, `div.message[data-sender="${users.bob.id}"][data-seq="3"]:not(.mine)`, REPLY).waitFor();
    await waitForTick(bob, REPLY, 'read');
  });

  await step('both pages show the same transcript in order', async () => {
    const want = [['1', users.alice.id, FIRST], ['2', users.alice.id, SECOND], ['3', users.bob.id, REPLY]];
    for (const [name, page] of Object.entries(pages)) {
      const got = await transcript(page);
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        throw new Error(`${name} shows ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
      }
    }
  });

  await step('no page threw an uncaught error or broke its content security policy', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join('; '));
    // A refused script or style need not stop the chat, so violations are looked for here.
    const violations = consoleErrors.filter((text) => text.includes('Content Security Policy'));
    if (violations.length) throw new Error(violations.join('; '));
  });

  await step(`screenshot of alice's chat saved to ${screenshot}`, async () => {
    await alice.locator('#typing-indicator').waitFor({ state: 'hidden' });
    await alice.screenshot({ path: screenshot, timeout: STEP_TIMEOUT_MS });
  });
  console.log(`passed: ${transport}`);
} catch (error) {
  process.exitCode = 1;
  console.error(`FAILED at step "${currentStep}" (${transport}): ${error.message.split('\n')[0]}`);
  console.error(error.message);
  for (const [name, page] of Object.entries(pages)) {
    try {
      console.error(`${name} shows: ${JSON.stringify(await describe(page), null, 1)}`);
      await page.screenshot({ path: path.join(artifactDir, `chat-${transport}-failed-${name}.png`), timeout: 5_000 });
    } catch (inner) {
      console.error(`${name}: its page could not be read: ${inner.message.split('\n')[0]}`);
    }
  }
  if (pageErrors.length) console.error(`uncaught page errors:\n  ${pageErrors.join('\n  ')}`);
  if (consoleErrors.length) console.error(`console errors:\n  ${consoleErrors.join('\n  ')}`);
} finally {
  if (browser) {
    const timer = setTimeout(() => {
      console.error('the browser did not close in time');
      process.exit(process.exitCode || 1);
    }, CLOSE_TIMEOUT_MS);
    await browser.close().catch((error) => console.error(`closing the browser failed: ${error.message}`));
    clearTimeout(timer);
  }
}
