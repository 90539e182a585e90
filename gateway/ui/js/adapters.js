// Adapters: each one's state (loaded, available, out of service), base model and lineage
// (training data fingerprint, command, losses, evaluations), with load and unload.

import { get, post } from "./api.js";
import { confirmAction } from "./confirm.js";
import { badge, card, dl, h, num, table, update } from "./dom.js";

const STATES = {
  loaded: "loaded: in vLLM now",
  available: "available: loads on first use (evicted or not loaded yet)",
  unloaded: "out of service: unloaded by an admin until loaded again",
};

// A manifest value in words: lists and flat objects on one line, nested objects as pairs.
function value(v) {
  if (v === null || v === undefined) return "—";
  if (Array.isArray(v)) return `[${v.map((x) => (typeof x === "number" ? num(x, 4) : String(x))).join(", ")}]`;
  if (typeof v === "object") {
    const entries = Object.entries(v);
    if (entries.every(([, x]) => x === null || typeof x !== "object")) return entries.map(([k, x]) => `${k}: ${value(x)}`).join(" · ");
    return dl(entries.map(([k, x]) => [k, value(x)]));
  }
  return typeof v === "number" ? num(v, 4) : String(v);
}

function lineage(a) {
  const t = a.training;
  const parts = [];
  if (t) {
    parts.push(
      h("h3", {}, "Training"),
      dl([
        ["data", `${t.data.file} (${t.data.format}, ${num(t.data.rows)} rows)`],
        ["data sha256", h("code", {}, t.data.sha256)],
        ["base", t.base_source],
        ["rows", `${num(t.train_rows)} train, ${num(t.val_rows)} validation`],
        ["steps", `${num(t.steps)} (${num(t.epochs)} epochs, batch ${num(t.batch_size)}, lr ${num(t.lr)}, seed ${t.seed})`],
        ["train loss", num(t.train_loss, 4)],
        ["validation loss", `${num(t.val_loss_before, 4)} → ${num(t.val_loss_after, 4)}`],
        ["took", `${num(t.duration_s)} s on ${t.device}`],
        ["versions", Object.entries(t.versions || {}).map(([k, v]) => `${k} ${v}`).join(", ")],
      ]),
      h("h3", {}, "Command"),
      h("pre", {}, t.command),
    );
  } else {
    parts.push(h("p", { class: "muted" }, "No training record in the manifest."));
  }
  if (a.evaluation && Object.keys(a.evaluation).length) {
    parts.push(h("h3", {}, "Evaluations"));
    for (const [name, ev] of Object.entries(a.evaluation)) {
      const pairs = typeof ev === "object" && ev ? Object.entries(ev).map(([k, v]) => [k, value(v)]) : [["result", value(ev)]];
      parts.push(h("h3", { class: "muted" }, name), dl(pairs));
    }
  }
  return parts;
}

export function adaptersPage(root) {
  const list = h("div");
  const status = h("div", { role: "status", "aria-live": "polite" });
  root.append(h("h2", { class: "page-title" }, "Adapters"), status, list);

  async function act(name, verb) {
    const what = verb === "load" ? `Load '${name}' into vLLM and put it in service?` : `Unload '${name}' from vLLM and take it out of service until it is loaded again?`;
    if (!(await confirmAction(`${verb === "load" ? "Load" : "Unload"} ${name}`, what, verb))) return;
    try {
      const a = await post(`/v1/adapters/${encodeURIComponent(name)}/${verb}`);
      status.replaceChildren(h("p", { class: "notice" }, `${name}: ${a.state}`));
    } catch (err) {
      status.replaceChildren(h("p", { class: "notice error" }, `${verb} ${name} failed: ${err.message}`));
    }
    list.dataset.key = "";
    await refresh();
  }

  async function refresh() {
    const data = await get("/v1/adapters");
    update(list, data, (d) => [
      card(
        "Registry",
        table(
        "Adapters in the registry",
        ["adapter", "base model", "state", "rank / alpha", "created", "last load", "action"],
        d.data.map((a) => [
          a.id,
          a.base_model,
          h("span", { title: STATES[a.state] || a.state }, badge(a.state), h("span", { class: "sr-only" }, STATES[a.state] || "")),
          `${a.rank} / ${a.alpha}`,
          a.created,
          a.last_load_s === null ? "—" : `${num(a.last_load_s)} s`,
          a.state === "loaded"
            ? h("button", { type: "button", "data-focus": `unload-${a.id}`, onclick: () => act(a.id, "unload") }, `Unload ${a.id}`)
            : h("button", { type: "button", class: "primary", "data-focus": `load-${a.id}`, onclick: () => act(a.id, "load") }, `Load ${a.id}`),
        ]),
          { empty: "No adapters." },
        ),
      ),
      d.problems.length ? card("Folders that could not be registered", h("ul", {}, d.problems.map((p) => h("li", {}, p)))) : null,
      d.data.map((a) =>
        h(
          "section",
          { class: "card", id: `adapter-${a.id}` },
          h("h2", {}, a.id, " ", badge(a.state)),
          h("p", {}, a.description || h("span", { class: "muted" }, "No description.")),
          dl([
            ["base model", a.base_model],
            ["state", STATES[a.state] || a.state],
            ["target modules", a.target_modules.join(", ")],
          ]),
          lineage(a),
        ),
      ),
    ]);
  }
  return { refresh };
}
