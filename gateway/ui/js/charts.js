// Charts drawn by uPlot (vendored, gateway/ui/vendor/uplot). Each chart sits in a <figure>
// with a caption and a text summary for screen readers; it follows its container's width.

import uPlot from "../vendor/uplot/uPlot.esm.js";
import { h } from "./dom.js";

const COLOURS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777"];

export function colour(i) {
  return COLOURS[i % COLOURS.length];
}

function width(el) {
  return Math.max(240, Math.floor(el.getBoundingClientRect().width || el.parentElement?.clientWidth || 600));
}

// A chart that keeps its uPlot instance across polls: ``set(data)`` redraws with new data, and
// a change of series (a new route, a new variant) builds it again.
export class Chart {
  constructor(title, { height = 220, yLabel = "", time = true } = {}) {
    this.height = height;
    this.yLabel = yLabel;
    this.time = time;
    this.summary = h("p", { class: "sr-only" });
    this.plotEl = h("div", { class: "plot", role: "img", "aria-label": title });
    this.el = h("figure", { class: "chart" }, h("figcaption", {}, title), this.plotEl, this.summary);
    this.plot = null;
    this.signature = null;
    this.observer = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: width(this.plotEl), height: this.height });
    });
    this.observer.observe(this.plotEl);
  }

  // series: [{label, values, colour?, dash?, band?: [lowIndex, highIndex] }]
  set(xs, series, { bands = [], summary = "" } = {}) {
    this.summary.textContent = summary;
    this.plotEl.setAttribute("aria-label", `${this.el.querySelector("figcaption").textContent}. ${summary}`);
    const signature = JSON.stringify(series.map((s) => [s.label, s.colour, s.dash]));
    const data = [xs, ...series.map((s) => s.values)];
    if (this.plot && signature === this.signature) {
      this.plot.setData(data);
      return;
    }
    this.plot?.destroy();
    this.signature = signature;
    const opts = {
      width: width(this.plotEl),
      height: this.height,
      scales: { x: { time: this.time } },
      axes: [{}, { label: this.yLabel, size: 60 }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      series: [
        { label: this.time ? "time" : "x" },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.colour || colour(i),
          width: s.width ?? 2,
          dash: s.dash,
          // Points where the line alone would not show: few looks, or values between gaps.
          points: { show: xs.length < 40 || s.values.filter((v) => v !== null && v !== undefined).length < 40, size: 5 },
          spanGaps: true,
          value: (_u, v) => (v === null || v === undefined ? "—" : Number(v.toPrecision(4)).toString()),
        })),
      ],
      bands: bands.map(([a, b, fill]) => ({ series: [a, b], fill })),
    };
    this.plot = new uPlot(opts, data, this.plotEl);
  }

  destroy() {
    this.observer.disconnect();
    this.plot?.destroy();
  }
}
