// A route's experiment: variants with weights and live share, the decision and why, every
// metric per variant with its interval, the primary difference over time (from
// GET /v1/experiments/{route}/history: the product's own analysis at earlier prefixes), sample
// ratio, guardrails, power, offline runs, and the admin actions the gateway offers.

import { experimentActions, get, post } from "./api.js";
import { Chart, colour } from "./charts.js";
import { confirmAction } from "./confirm.js";
import { badge, card, datetime, dl, estimate, h, hashFor, interval, link, ms, num, pct, table, update } from "./dom.js";

const SAFE = new Set(["winner", "no_difference", "guardrail_breach"]);

export function experimentPage(root, route) {
  const path = `/v1/experiments/${encodeURIComponent(route)}`;
  const decision = h("div");
  const variants = h("div");
  const metrics = h("div");
  const comparisons = h("div");
  const guardrails = h("div");
  const ratio = h("div");
  const power = h("div");
  const offline = h("div");
  const apart = h("div");
  const actions = h("div", { class: "actions" });
  const result = h("div", { role: "status", "aria-live": "polite" });
  const charts = h("div");
  const chartsByKey = new Map();
  const burnIn = h("p", { class: "muted" });
  const unitsChart = new Chart("Units per variant as samples arrived", { yLabel: "units", height: 180 });
  let report = null;
  root.append(
    h("h2", { class: "page-title" }, "Route ", h("code", {}, route)),
    h("p", {}, link(hashFor("inferences", { route }), "Inferences of this route")),
    card("Decision", decision),
    card("Actions", actions, result),
    card("Variants", variants),
    card("Difference on the primary metric, as samples arrived", charts, burnIn, unitsChart.el),
    card("Metrics per variant (95% intervals)", metrics),
    card("Comparisons", comparisons),
    h("div", { class: "grid" }, card("Guardrails", guardrails), card("Sample ratio", ratio), card("Power", power)),
    card("Offline evaluation runs of this route", offline),
    card("Traffic kept apart (never compared)", apart),
  );

  async function act(name, body, describe) {
    const ok = await confirmAction(`${name[0].toUpperCase()}${name.slice(1)} on ${route}?`, describe, name);
    if (!ok) return;
    try {
      const resp = await post(`${path}/${name}`, body);
      result.replaceChildren(h("p", { class: "notice" }, `${name} done: `, h("code", {}, JSON.stringify(resp))));
      await refresh();
    } catch (err) {
      result.replaceChildren(h("p", { class: "notice error" }, `${name} refused: ${err.message}`));
    }
  }

  async function drawActions(r) {
    const offered = await experimentActions();
    const buttons = [];
    for (const a of offered) {
      if (a.body.includes("variant")) {
        for (const v of Object.keys(r.variants)) {
          buttons.push(
            h(
              "button",
              {
                type: "button",
                class: a.name === "promote" ? "primary" : "",
                "data-focus": `${a.name}-${v}`,
                "data-action": a.name,
                "data-variant": v,
                disabled: a.name === "promote" && r.promoted === v,
                onclick: () => act(a.name, { variant: v }, `${a.name} '${v}': the route's traffic changes at once, and the action is recorded in the event database.`),
              },
              `${a.name[0].toUpperCase()}${a.name.slice(1)} ${v}`,
            ),
          );
        }
      } else {
        buttons.push(
          h(
            "button",
            { type: "button", "data-focus": a.name, "data-action": a.name, onclick: () => act(a.name, {}, `${a.name} on route '${route}'; the action is recorded.`) },
            `${a.name[0].toUpperCase()}${a.name.slice(1).replaceAll("_", " ")}`,
          ),
        );
      }
    }
    update(actions, [offered, r.promoted, Object.keys(r.variants)], () => buttons);
  }

  function drawDecision(r) {
    const d = r.decision;
    const state = d.safe_to_act ?? SAFE.has(d.status);
    const blocked = ["guardrail_breach", "sample_ratio_mismatch"].includes(d.status);
    decision.parentElement.className = `card decision ${blocked ? "blocked" : state ? "safe" : ""}`;
    update(decision, [d, r.verdict], () => [
      h("p", {}, badge(d.status), " ", state ? h("strong", {}, "Safe to act.") : h("strong", {}, "Not safe to act yet.")),
      h("p", { class: "verdict" }, r.verdict),
      dl([
        ["reason", d.reason],
        ["winner", d.winner],
        ["primary metric", d.metric],
        ["method", d.method],
        ["promoted", r.promoted],
        ["unit of analysis", r.unit],
        ["control", r.control],
        ["alpha", num(r.alpha)],
        ["burn-in", `${num(r.min_samples)} units per variant`],
      ]),
      d.actions && d.actions.length
        ? table(
            "Actions recorded",
            ["when", "action", "variant", "by", "reason", "undone"],
            d.actions.map((a) => [datetime(a.ts), a.action ?? "action", a.variant ?? "—", a.actor ?? "—", a.reason ?? "—", a.undone ? "yes" : "no"]),
          )
        : null,
    ]);
  }

  function drawVariants(r) {
    update(variants, [r.variants, r.weights], () => {
      const total = Object.values(r.variants).reduce((s, v) => s + v.n, 0);
      const weightSum = Object.values(r.weights).reduce((s, w) => s + w, 0) || 1;
      return table(
        "Variants: configured weight and the share of compared requests each got",
        ["variant", "weight", "live share", "units", "requests", "errors", "answered by a fallback", "latency p50", "latency p95", "cost / request", "inferences"],
        Object.entries(r.variants).map(([name, v]) => [
          name,
          `${num(v.weight)} (${pct(v.weight / weightSum)})`,
          total ? pct(v.n / total) : "—",
          num(v.units),
          num(v.n),
          num(v.errors),
          num(v.answered_by_fallback),
          ms(v.latency_ms.p50),
          ms(v.latency_ms.p95),
          num(v.cost),
          link(hashFor("inferences", { route, variant: name }), `inferences of ${name}`),
        ]),
      );
    });
    // The newest offline run of the route sits beside the live figures: the same variants'
    // accuracy on labelled data, before (or while) they get live traffic.
    const run = r.offline && r.offline.length ? r.offline[0] : null;
    update(metrics, [r.variants, run], () => {
      const names = [...new Set(Object.values(r.variants).flatMap((v) => Object.keys(v.metrics)))];
      const offline = run ? [`offline accuracy (${run.run_id})`] : [];
      return table(
        "Each metric per variant: mean [95% interval], units",
        ["variant", ...names, ...offline],
        Object.entries(r.variants).map(([name, v]) => [
          link(hashFor("inferences", { route, variant: name }), name),
          ...names.map((m) => (v.metrics[m] ? `${estimate(v.metrics[m])}\u00a0·\u00a0n\u00a0${num(v.metrics[m].n)}` : "—")),
          ...(run ? [run.variants[name] ? `${estimate(run.variants[name].accuracy)}\u00a0·\u00a0n\u00a0${num(run.variants[name].accuracy.n)}` : "—"] : []),
        ]),
      );
    });
  }

  function drawTables(r) {
    update(comparisons, r.comparisons, (cs) =>
      table(
        "Differences (variant − against)",
        ["variant − against", "metric", "difference", "95% interval", "p", "adjusted p"],
        cs.map((c) => [`${c.variant} − ${c.against}`, `${c.metric}${c.primary ? " (primary)" : ""}`, num(c.difference), interval(c.ci95), num(c.p_value), num(c.p_adjusted)]),
      ),
    );
    update(guardrails, r.guardrails, (gs) =>
      table(
        "Guardrails: how much worse than the control, against the margin",
        ["variant", "metric", "worse by", "95% interval", "margin", "status"],
        gs.map((g) => [g.variant, g.metric, num(g.worse_by), interval(g.ci95), num(g.margin), g.breach ? badge("breach") : g.non_inferior ? badge("pass") : badge("pending")]),
        { empty: "No guardrails declared." },
      ),
    );
    update(ratio, r.sample_ratio, (s) =>
      s
        ? [
            h("p", {}, s.mismatch ? badge("mismatch") : badge("pass"), ` p = ${num(s.p_value)} (mismatch at p ≤ ${num(s.alpha)})`),
            table("Units at their first assignment", ["variant", "observed", "expected"], Object.keys(s.observed).map((n) => [n, num(s.observed[n]), num(s.expected[n])])),
            h("p", { class: "muted" }, s.test),
          ]
        : h("p", { class: "muted" }, "No units yet."),
    );
    update(power, r.power, (ps) =>
      table(
        "Power on the primary metric",
        ["variant", "against", "units", "detectable now", "one look", "units needed"],
        ps.map((p) => [p.variant, p.against, num(p.n), num(p.mde_now), num(p.mde_now_one_look), num(p.n_needed)]),
        { empty: "Not enough data yet." },
      ),
    );
    update(offline, r.offline, (runs) =>
      runs.length
        ? runs.map((run) =>
            table(
              `Run ${run.run_id}, started ${datetime(run.started)}`,
              ["variant", "accuracy [95% interval]", "calls", "errors", "latency p50", "latency p95", "tokens (prompt / completion)"],
              Object.entries(run.variants).map(([name, v]) => [
                name,
                estimate(v.accuracy),
                num(v.n),
                num(v.errors),
                ms(v.latency_ms.p50),
                ms(v.latency_ms.p95),
                `${num(v.prompt_tokens)} / ${num(v.completion_tokens)}`,
              ]),
            ),
          )
        : h("p", { class: "muted" }, "No offline runs (gateway eval --route ", route, ") yet."),
    );
    update(apart, r.apart, (a) =>
      table(
        "Requests reported apart",
        ["why", "per variant"],
        Object.entries(a).map(([why, counts]) => [why, Object.entries(counts).map(([v, n]) => `${v}: ${n}`).join(", ")]),
        { empty: "None." },
      ),
    );
  }

  function drawHistory(hist) {
    const points = hist.points;
    const pairs = new Map();
    for (const p of points) for (const c of p.comparisons) pairs.set(`${c.variant}|${c.against}|${c.metric}`, c);
    const xs = points.map((p) => p.ts);
    for (const [key, c] of pairs) {
      let chart = chartsByKey.get(key);
      if (!chart) {
        chart = new Chart(`${c.variant} − ${c.against} on ${c.metric}, with its always-valid 95% interval`, { yLabel: "difference", height: 240 });
        chartsByKey.set(key, chart);
        charts.append(chart.el);
      }
      const at = (f) => points.map((p) => {
        const m = p.comparisons.find((x) => `${x.variant}|${x.against}|${x.metric}` === key);
        return m ? f(m) : null;
      });
      const last = points[points.length - 1];
      const lastPair = last?.comparisons.find((x) => `${x.variant}|${x.against}|${x.metric}` === key);
      chart.set(
        xs,
        [
          { label: "upper", values: at((m) => m.ci95[1]), colour: "#93c5fd", width: 1 },
          { label: "difference", values: at((m) => m.difference), colour: colour(0) },
          { label: "lower", values: at((m) => m.ci95[0]), colour: "#93c5fd", width: 1 },
          { label: "no difference", values: xs.map(() => 0), colour: "#6b7280", dash: [4, 4], width: 1 },
        ],
        {
          bands: [[1, 3, "rgba(37, 99, 235, 0.15)"]],
          summary: lastPair
            ? `Now ${num(lastPair.difference)} with interval ${interval(lastPair.ci95)}; status ${last.status}. ${points.length} looks.`
            : "No data yet.",
        },
      );
    }
    const names = [...new Set(points.flatMap((p) => Object.keys(p.units)))];
    unitsChart.set(
      xs,
      names.map((n) => ({ label: n, values: points.map((p) => p.units[n] ?? 0) })),
      { summary: names.map((n) => `${n}: ${num(points[points.length - 1]?.units[n])} units`).join("; ") || "No units yet." },
    );
    const drawn = [...pairs.keys()].some((key) =>
      points.some((p) => p.comparisons.some((x) => `${x.variant}|${x.against}|${x.metric}` === key && x.difference !== null)),
    );
    // An empty plot says nothing: before the burn-in only the note and the units are shown.
    for (const c of chartsByKey.values()) c.el.hidden = !drawn;
    burnIn.textContent = !points.length
      ? "No requests yet: the chart starts with the first ones."
      : drawn
        ? "The interval is valid at every look: act only once it excludes 0 (a winner) or lies within ±min_effect (no difference), as the decision says."
        : `The difference is drawn once every variant has ${num(report.min_samples)} units (the burn-in); until then the decision is 'running'.`;
  }

  async function refresh() {
    const [r, hist] = await Promise.all([get(path), get(`${path}/history?points=40`)]);
    report = r;
    drawDecision(r);
    await drawActions(r);
    drawVariants(r);
    drawTables(r);
    drawHistory(hist);
  }

  return {
    refresh,
    destroy() {
      for (const c of chartsByKey.values()) c.destroy();
      unitsChart.destroy();
    },
    get report() {
      return report;
    },
  };
}
