// Inferences: recent events filtered by route, variant, target, status and time (the filters
// live in the URL's hash, so an experiment's figures can link here), and one inference in full.

import { get, query } from "./api.js";
import { badge, card, datetime, dl, h, hashFor, link, ms, num, table, time, update } from "./dom.js";

const SINCE = [
  ["", "any time"],
  ["300", "last 5 minutes"],
  ["3600", "last hour"],
  ["86400", "last 24 hours"],
];
const FIELDS = ["route", "variant", "target", "status", "since", "limit"];

function feedbackText(rows) {
  return rows.length ? rows.map((f) => `${f.name}=${f.value ?? f.text}`).join(", ") : "—";
}

export function inferencesPage(root, _arg, params) {
  const filters = Object.fromEntries(FIELDS.map((f) => [f, params.get(f) || ""]));
  const results = h("div");
  const note = h("p", { class: "muted", role: "status", "aria-live": "polite" });
  const seen = new Set();
  let first = true;

  const input = (name, label, attrs = {}) =>
    h("label", {}, label, h("input", { name, value: filters[name], autocomplete: "off", ...attrs }));
  const select = (name, label, options) =>
    h("label", {}, label, h("select", { name }, options.map(([v, text]) => h("option", { value: v, selected: filters[name] === v }, text))));
  const form = h(
    "form",
    {
      class: "filters",
      "aria-label": "Filter inferences",
      onsubmit: (e) => {
        e.preventDefault();
        const data = Object.fromEntries(new FormData(form).entries());
        location.hash = hashFor("inferences", data);
      },
    },
    input("route", "route"),
    input("variant", "variant"),
    input("target", "target (model or adapter)"),
    select("status", "status", [["", "any"], ["ok", "ok"], ["error", "error"], ["cancelled", "cancelled"]]),
    select("since", "time", SINCE),
    input("limit", "at most", { type: "number", min: 1, max: 500, placeholder: "100" }),
    h("button", { type: "submit", class: "primary" }, "Apply filters"),
    h("a", { href: "#/inferences" }, "Clear"),
  );
  root.append(h("h2", { class: "page-title" }, "Inferences"), card("Filters", form), note, results);

  async function refresh() {
    const since = filters.since ? Date.now() / 1000 - Number(filters.since) : "";
    const data = await get(query("/v1/inferences", { ...filters, since, limit: filters.limit || 100 }));
    note.textContent = `${data.data.length} events (newest first, at most ${data.limit}), one per attempt; updated live.`;
    const fresh = new Set(first ? [] : data.data.map((r) => r.id).filter((id) => !seen.has(id)));
    for (const r of data.data) seen.add(r.id);
    first = false;
    const changed = update(results, data.data, (rows) =>
      table(
        "Recent inferences",
        ["id", "time", "route", "variant", "assignment", "target", "status", "latency", "tokens", "answer", "feedback"],
        rows.map((r) => [
          link(hashFor(`inference/${encodeURIComponent(r.id)}`), r.id),
          time(r.ts),
          r.route || "—",
          r.variant || "—",
          `${r.assignment || "—"}${r.attempt ? ` · attempt ${r.attempt}` : ""}${r.shadow ? " · shadow" : ""}`,
          r.adapter || r.model || "—",
          badge(r.status),
          ms(r.latency_ms),
          r.prompt_tokens === null ? "—" : `${num(r.prompt_tokens)} / ${num(r.completion_tokens)}`,
          r.answer || "—",
          feedbackText(r.feedback),
        ]),
        { empty: "No inferences match." },
      ),
    );
    if (changed) {
      for (const row of results.querySelectorAll("tbody tr")) {
        const id = row.querySelector("th a")?.textContent;
        if (id && fresh.has(id)) row.classList.add("fresh");
      }
    }
  }
  return { refresh };
}

export function inferencePage(root, id) {
  const body = h("div");
  root.append(h("h2", { class: "page-title" }, "Inference ", h("code", {}, id)), body);

  async function refresh() {
    const d = await get(`/v1/inferences/${encodeURIComponent(id)}`);
    update(body, d, () => {
      const e = d.inference;
      const r = d.request;
      const votes = e.votes ? Object.entries(e.votes) : [];
      return [
        h("div", { class: "grid" },
          card(
            "This attempt",
            dl([
              ["status", h("span", {}, badge(e.status), e.http_status ? ` HTTP ${e.http_status}` : "")],
              ["time", datetime(e.ts)],
              ["route", e.route ? link(hashFor(`route/${encodeURIComponent(e.route)}`), e.route) : "—"],
              ["variant", e.variant && e.route ? link(hashFor("inferences", { route: e.route, variant: e.variant }), e.variant) : e.variant],
              ["assignment", e.assignment],
              ["target", e.adapter ? `${e.adapter} (adapter of ${e.model})` : e.model],
              ["pipeline", e.pipeline],
              ["attempt", e.attempt === null ? "—" : String(e.attempt)],
              ["fallback from", e.fallback_from],
              ["stream", e.stream === null ? "—" : String(e.stream)],
              ["shadow", String(e.shadow)],
              ["latency", ms(e.latency_ms)],
              ["time to first token", ms(e.ttft_ms)],
              ["tokens", `${num(e.prompt_tokens)} prompt, ${num(e.completion_tokens)} completion`],
              ["model calls", num(e.calls)],
              ["cost", num(e.cost)],
              ["answer", e.answer],
              ["error", e.error_code ? `${e.error_code}: ${e.error_message || ""}` : null],
              ["source", e.run_id ? `${e.source} (run ${e.run_id})` : e.source],
            ]),
          ),
          card(
            "The request",
            r
              ? dl([
                  ["assigned to", r.assigned],
                  ["how", r.reason],
                  ["answered by", r.answered_by],
                  ["outcome", badge(r.status)],
                  ["attempts", num(r.attempts)],
                  ["latency, all attempts", ms(r.latency_ms)],
                  ["cost, all attempts", num(r.cost)],
                  ["inference id the client got", r.final_id],
                ])
              : h("p", { class: "muted" }, "Not part of a route's request chain."),
            h("p", { class: "muted" }, "Exemplar ids and ensemble members are returned to the client in the response's switchboard object; the event log keeps the votes."),
          ),
        ),
        card(
          "Votes",
          table("Votes per option", ["option", "votes"], votes.map(([k, v]) => [k, num(v)]), { empty: "No votes (not a voting pipeline)." }),
        ),
        card(
          "Attempts (fallbacks included)",
          table(
            "Every attempt of this request",
            ["attempt", "id", "variant", "target", "status", "error", "latency"],
            d.attempts.map((a) => [
              String(a.attempt ?? 0),
              a.id === id ? h("strong", {}, a.id) : link(hashFor(`inference/${encodeURIComponent(a.id)}`), a.id),
              a.fallback_from ? `${a.variant} (from ${a.fallback_from})` : a.variant,
              a.adapter || a.model || "—",
              badge(a.status),
              a.error_code || "—",
              ms(a.latency_ms),
            ]),
          ),
        ),
        card(
          "Feedback",
          table(
            "Feedback joined to this request",
            ["name", "value", "kind", "on", "time"],
            d.feedback.map((f) => [f.name, f.value ?? f.text ?? "—", f.kind, f.inference_id, datetime(f.ts)]),
            { empty: "No feedback yet." },
          ),
        ),
      ];
    });
  }
  return { refresh };
}
