// The gateway's JSON API, same origin only. The admin key lives in sessionStorage for this tab's
// session: never in a URL (so never in a log or the history), never in localStorage.

const KEY = "switchboard.console.key";

export class AuthError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") {
    // Every POST is JSON (the gateway checks Content-Type), even when it carries no fields.
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body ?? {});
  }
  const resp = await fetch(path, init);
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (resp.ok) return data;
  const error = data && data.error ? data.error : { message: resp.statusText, code: null };
  if (resp.status === 401 || resp.status === 403) throw new AuthError(resp.status, error.code, error.message);
  throw new ApiError(resp.status, error.code, error.message || `HTTP ${resp.status}`);
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);

export function query(path, params) {
  const q = new URLSearchParams(Object.entries(params || {}).filter(([, v]) => v !== null && v !== undefined && v !== ""));
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// The admin actions a route offers, read from the OpenAPI description (open, no key): buttons
// appear for what this gateway actually serves (promote; rollback and undo where present).
let actions = null;
export async function experimentActions() {
  if (actions === null) {
    try {
      const schema = await (await fetch("/openapi.json", { cache: "no-store" })).json();
      actions = Object.keys(schema.paths || {})
        .map((p) => /^\/v1\/experiments\/\{name\}\/([a-z_-]+)$/.exec(p))
        .filter((m) => m && m[1] !== "history" && schema.paths[m.input].post)
        .map((m) => ({ name: m[1], body: bodyFields(schema.paths[m.input].post) }));
    } catch {
      actions = [{ name: "promote", body: ["variant"] }];
    }
  }
  return actions;
}

function bodyFields(operation) {
  const schema = operation.requestBody?.content?.["application/json"]?.schema;
  return schema && schema.properties ? Object.keys(schema.properties) : [];
}
