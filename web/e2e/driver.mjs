// A headless Chromium driven over stdin/stdout, one JSON command per line, so the end-to-end
// tests (tests/web/, pytest) hold the steps and the assertions while Playwright does the
// browser work. Each reply is one JSON line: {"id", "ok", "value"} or {"id", "ok": false, "error"}.
//
// Config (environment): CHATPLANE_E2E_USER_DATA_DIR (a fresh, empty folder),
// CHATPLANE_E2E_CHROMIUM (default /usr/bin/chromium).
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const userDataDir = process.env.CHATPLANE_E2E_USER_DATA_DIR;
if (!userDataDir) {
  console.error("CHATPLANE_E2E_USER_DATA_DIR is required");
  process.exit(2);
}
// The flags Chromium needs on this machine: no sandbox as root, and no background traffic to
// hosts that a closed network refuses.
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHATPLANE_E2E_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: FLAGS,
  viewport: { width: 1100, height: 800 },
});
const consoleMessages = [];
// Named pages (tabs) of the one browser; commands act on the current one ("main" at first).
const pages = new Map();
function watched(newPage, name) {
  newPage.on("console", (message) => consoleMessages.push({ type: message.type(), text: `[${name}] ${message.text()}` }));
  newPage.on("pageerror", (error) => consoleMessages.push({ type: "pageerror", text: `[${name}] ${error}` }));
  pages.set(name, newPage);
  return newPage;
}
let page = watched(context.pages()[0] ?? (await context.newPage()), "main");

const DEFAULT_TIMEOUT_MS = 15_000;
// The DevTools session of throttleUpload while it throttles.
let throttling = null;

// `source` is a JavaScript function's source text, run in the page with one argument.
// Playwright treats a string as an expression, so it is wrapped in a function whose own source
// Playwright sends to the page (over the DevTools protocol, which the page's CSP allows).
const pageFunction = (source) => new Function("arg", `return (${source})(arg);`);

const operations = {
  goto: async ({ url }) => {
    const response = await page.goto(url, { waitUntil: "load" });
    return response ? response.status() : null;
  },
  reload: async () => (await page.reload({ waitUntil: "load" }))?.status() ?? null,
  // Element operations act on the LAST match of the selector: the newest message.
  fill: ({ selector, value }) => page.locator(selector).last().fill(value),
  click: ({ selector }) => page.locator(selector).last().click(),
  press: ({ selector, key }) => page.locator(selector).last().press(key),
  text: async ({ selector }) => {
    const locator = page.locator(selector);
    return (await locator.count()) === 0 ? null : locator.last().innerText();
  },
  texts: ({ selector }) => page.locator(selector).allInnerTexts(),
  attribute: async ({ selector, name }) => {
    const locator = page.locator(selector);
    return (await locator.count()) === 0 ? null : locator.last().getAttribute(name);
  },
  count: ({ selector }) => page.locator(selector).count(),
  waitFor: ({ selector, state = "visible", timeoutMs = DEFAULT_TIMEOUT_MS }) =>
    page.locator(selector).last().waitFor({ state, timeout: timeoutMs }),
  // `expression` is a function's source, called with `arg` until it returns a truthy value,
  // which is the result.
  waitForFunction: async ({ expression, arg = null, timeoutMs = DEFAULT_TIMEOUT_MS, pollingMs = 20 }) => {
    const handle = await page.waitForFunction(pageFunction(expression), arg, {
      timeout: timeoutMs,
      polling: pollingMs,
    });
    return handle.jsonValue();
  },
  evaluate: ({ expression, arg = null }) => page.evaluate(pageFunction(expression), arg),
  screenshot: async ({ path }) => {
    await page.screenshot({ path, fullPage: true });
    return path;
  },
  console: () => consoleMessages.splice(0),
  // Another tab (created on first use), e.g. the operator's next to the user's.
  usePage: async ({ name }) => {
    page = pages.get(name) ?? watched(await context.newPage(), name);
    await page.bringToFront();
    return name;
  },
  closePage: async ({ name }) => {
    const closing = pages.get(name);
    if (closing === undefined || name === "main") return null;
    pages.delete(name);
    if (page === closing) page = pages.get("main");
    await closing.close();
    return null;
  },
  setViewport: ({ width, height }) => page.setViewportSize({ width, height }),
  // A slow uplink (DevTools network emulation), e.g. to watch an upload's progress; 0: off
  // (the DevTools session is detached, so Playwright's own emulation, setOffline, applies again).
  throttleUpload: async ({ bytesPerSecond }) => {
    if (throttling !== null) {
      await throttling.send("Network.emulateNetworkConditions", {
        offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
      });
      await throttling.detach();
      throttling = null;
    }
    if (bytesPerSecond > 0) {
      throttling = await context.newCDPSession(page);
      await throttling.send("Network.enable");
      await throttling.send("Network.emulateNetworkConditions", {
        offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bytesPerSecond,
      });
    }
    return null;
  },
  // Files chosen in a file input, as if picked in the browser's dialog.
  setInputFiles: ({ selector, files }) => page.locator(selector).last().setInputFiles(files),
  // The keyboard, as a user without a mouse: press("Tab"), type("text").
  keyboard: ({ key }) => page.keyboard.press(key),
  type: ({ text }) => page.keyboard.type(text),
  // The accessibility tree (roles and accessible names) of a part of the page, as YAML.
  ariaSnapshot: ({ selector = "body" }) => page.locator(selector).first().ariaSnapshot(),
  // Network loss as the browser sees it: every request fails, navigator.onLine is false.
  setOffline: ({ offline }) => context.setOffline(offline),
  close: async () => {
    await context.close();
    return null;
  },
};

const lines = createInterface({ input: process.stdin });
const reply = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
reply({ id: 0, ok: true, value: "ready" });
for await (const line of lines) {
  if (!line.trim()) continue;
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    reply({ id: null, ok: false, error: `not JSON: ${error}` });
    continue;
  }
  const operation = operations[command.op];
  if (operation === undefined) {
    reply({ id: command.id, ok: false, error: `unknown op ${command.op}` });
    continue;
  }
  try {
    const value = await operation(command.args ?? {});
    reply({ id: command.id, ok: true, value: value ?? null });
  } catch (error) {
    reply({ id: command.id, ok: false, error: String(error?.message ?? error) });
  }
  if (command.op === "close") break;
}
await context.close().catch(() => {});
process.exit(0);
