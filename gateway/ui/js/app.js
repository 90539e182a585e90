// The console's shell: navigation by the URL's hash, the admin key form, and the live loop
// (each page's refresh runs every few seconds while the tab is visible; nothing reloads).

import { AuthError, getKey, setKey } from "./api.js";
import { h } from "./dom.js";
import { overviewPage } from "./overview.js";
import { experimentPage } from "./experiment.js";
import { adaptersPage } from "./adapters.js";
import { inferencesPage, inferencePage } from "./inferences.js";

const POLL_MS = 2000;
const PAGES = {
  "": overviewPage,
  overview: overviewPage,
  route: experimentPage,
  adapters: adaptersPage,
  inferences: inferencesPage,
  inference: inferencePage,
};

const main = document.getElementById("main");
const live = document.getElementById("live");
const pause = document.getElementById("pause");
const forget = document.getElementById("forget");
let current = null;
let timer = null;
let paused = false;
let busy = false;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, q] = raw.split("?");
  const [page, ...rest] = path.split("/");
  return { page, arg: rest.map(decodeURIComponent).join("/"), params: new URLSearchParams(q || "") };
}

function markNav(page) {
  const section = page === "inference" ? "inferences" : page === "route" ? "overview" : page || "overview";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

// Whether this gateway has keys (GET /ui/session, open): with keys and none entered yet, the
// key form comes first, so no read is refused.
let needsKey = null;
async function keysConfigured() {
  if (needsKey === null) {
    try {
      needsKey = (await (await fetch("/ui/session", { cache: "no-store" })).json()).keys === true;
    } catch {
      needsKey = false;
    }
  }
  return needsKey;
}

async function show() {
  const { page, arg, params } = parseHash();
  const make = PAGES[page] || overviewPage;
  current?.destroy?.();
  markNav(page);
  if (!getKey() && (await keysConfigured())) {
    clearInterval(timer);
    askForKey({ code: null });
    return;
  }
  const root = h("div", { class: "page" });
  main.replaceChildren(root);
  current = make(root, arg, params);
  await refresh(true);
  if (!paused) schedule();
}

function schedule() {
  clearInterval(timer);
  timer = setInterval(() => {
    if (!document.hidden && !paused) refresh(false);
  }, POLL_MS);
}

async function refresh(first) {
  if (!current || busy) return;
  busy = true;
  try {
    await current.refresh(first);
    live.textContent = `Live · updated ${new Date().toLocaleTimeString("en-GB", { hour12: false })}`;
    live.className = "live ok";
  } catch (err) {
    if (err instanceof AuthError) {
      clearInterval(timer);
      askForKey(err);
    } else {
      live.textContent = `Update failed: ${err.message}`;
      live.className = "live failed";
      if (first) console.warn(err);
    }
  } finally {
    busy = false;
  }
}

function askForKey(err) {
  current?.destroy?.();
  current = null;
  const scope = err.code === "insufficient_scope";
  const message = scope
    ? "This key does not have the admin scope the console needs. Enter a key with the admin scope."
    : getKey()
      ? "The gateway did not accept this key. Enter an API key with the admin scope."
      : "This gateway has API keys. Enter a key with the admin scope to open the console.";
  if (err.code !== "insufficient_scope") setKey(null);
  const input = h("input", {
    id: "key",
    type: "password",
    name: "key",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "key-help",
  });
  const form = h(
    "form",
    {
      class: "card key-form",
      onsubmit: (e) => {
        e.preventDefault();
        setKey(input.value.trim());
        show();
      },
    },
    h("h2", {}, "Admin key"),
    h("p", { id: "key-help", class: scope ? "error" : "" }, message),
    h("p", { class: "muted" }, "The key is kept in this tab's session storage only, and sent only to this gateway."),
    h("label", { for: "key" }, "API key"),
    input,
    h("button", { type: "submit" }, "Open the console"),
  );
  main.replaceChildren(form);
  input.focus();
  live.textContent = scope ? "Refused: the key lacks the admin scope" : "Needs an admin key";
  live.className = "live failed";
}

pause.addEventListener("click", () => {
  paused = !paused;
  pause.setAttribute("aria-pressed", String(paused));
  pause.textContent = paused ? "Resume live updates" : "Pause live updates";
  if (paused) clearInterval(timer);
  else {
    refresh(false);
    schedule();
  }
});
forget.addEventListener("click", () => {
  setKey(null);
  show();
});
window.addEventListener("hashchange", show);
show();
