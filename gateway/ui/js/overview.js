// Overview: every model (with its engine's readiness), adapter and route, and the last hour's
// traffic per route and per target, from GET /v1/overview.

import { get } from "./api.js";
import { Chart } from "./charts.js";
import { badge, card, h, hashFor, link, ms, num, pct, table, update } from "./dom.js";

function trafficCells(t) {
  if (!t) return ["0", "—", "—", "—", "—", "—"];
  return [
    num(t.requests),
    num(t.requests_per_s, 2),
    pct(t.error_rate),
    ms(t.latency_ms.p50),
    ms(t.latency_ms.p95),
    `${num(t.prompt_tokens)} / ${num(t.completion_tokens)}`,
  ];
}

const TRAFFIC = ["requests", "req/s", "errors", "p50", "p95", "tokens (prompt / completion)"];

export function overviewPage(root) {
  const routes = h("div");
  const targets = h("div");
  const engines = h("div");
  const adapters = h("div");
  const requestsChart = new Chart("Requests per minute, by route (last hour)", { yLabel: "requests" });
  const latencyChart = new Chart("Latency p95 per minute, by route (ms)", { yLabel: "ms" });
  root.append(
    h("h2", { class: "page-title" }, "Overview"),
    h("p", { class: "muted", id: "window" }),
    card("Routes", routes),
    h("div", { class: "grid" }, card("Traffic", requestsChart.el), card("Latency", latencyChart.el)),
    card("Targets (models and adapters), last hour", targets),
    h("div", { class: "grid" }, card("Engines", engines), card("Adapters", adapters)),
  );

  async function refresh() {
    const data = await get("/v1/overview");
    const traffic = data.traffic;
    root.querySelector("#window").textContent =
      `Last hour: ${num(traffic.total.requests)} requests, ${pct(traffic.total.error_rate)} errors` +
      (traffic.truncated ? " (the newest 50,000 events only)" : "") + ".";
    update(routes, [data.routes, traffic.routes], ([rs, tr]) => {
      const names = new Set([...Object.keys(rs), ...Object.keys(tr)]);
      const rows = [...names].sort().map((name) => {
        const r = rs[name];
        const variants = r
          ? Object.entries(r.variants).map(([v, spec]) =>
              h("div", {}, `${v} → ${spec.target} · ${spec.pipeline} · weight ${num(spec.weight)} · share ${pct(r.share[v])}`),
            )
          : h("span", { class: "muted" }, "calls of a model or adapter by name");
        const label = r ? link(hashFor(`route/${encodeURIComponent(name)}`), name) : name;
        return [label, variants, r && r.promoted ? badge(`promoted: ${r.promoted}`, "winner") : "—", ...trafficCells(tr[name])];
      });
      return table("Routes and their traffic in the last hour", ["route", "variants", "promotion", ...TRAFFIC], rows);
    });
    update(targets, traffic.targets, (tg) =>
      table(
        "Targets",
        ["target", ...TRAFFIC],
        Object.entries(tg).map(([name, t]) => [link(hashFor("inferences", { target: name }), name), ...trafficCells(t)]),
      ),
    );
    update(engines, data.models, (models) =>
      table(
        "Engines",
        ["model", "upstream", "state", "replicas"],
        Object.entries(models).map(([name, m]) => [
          name,
          m.upstream_model,
          h("span", {}, badge(m.state, m.ready ? "ready" : "not-ready"), m.detail ? ` ${m.detail}` : ""),
          replicaCell(m.replicas),
        ]),
      ),
    );
    update(adapters, data.adapters, (ads) =>
      table(
        "Adapters",
        ["adapter", "base model", "state"],
        Object.entries(ads).map(([name, a]) => [link(hashFor("adapters"), name), a.base_model, badge(a.state)]),
        { empty: "No adapters in the registry." },
      ),
    );
    const series = traffic.series;
    const names = Object.keys(series.routes);
    const xs = series.ts;
    const perMinute = 60 / series.bucket_s;
    requestsChart.set(
      xs,
      names.map((n) => ({ label: n, values: series.routes[n].requests.map((c) => c * perMinute) })),
      { summary: names.map((n) => `${n}: ${num(traffic.routes[n]?.requests)} requests`).join("; ") || "No traffic yet." },
    );
    latencyChart.set(
      xs,
      names.map((n) => ({ label: n, values: series.routes[n].latency_p95_ms })),
      { summary: names.map((n) => `${n}: p95 ${ms(traffic.routes[n]?.latency_ms.p95)}`).join("; ") || "No traffic yet." },
    );
  }

  return {
    refresh,
    destroy() {
      requestsChart.destroy();
      latencyChart.destroy();
    },
  };
}

// A fleet's replicas: how many take traffic, then each one's state and calls in flight
// (a single vLLM server has no fleet: "1").
function replicaCell(replicas) {
  if (!replicas) return "1";
  const serving = replicas.filter((r) => r.state === "ready").length;
  return h(
    "span",
    {},
    `${serving}/${replicas.length} in rotation `,
    ...replicas.map((r, i) =>
      h("span", { title: r.last_error || r.url }, badge(`r${i} ${r.state}, ${r.outstanding} in flight`, r.state === "ready" ? "ready" : "not-ready"), " "),
    ),
  );
}
