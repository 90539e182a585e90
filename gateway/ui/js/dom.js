// Small DOM helpers. Text is always set as text (never as HTML): names, answers and error
// messages come from users and the event log.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Replace a section's content only when its data changed, so polling does not move the focus
// or the scroll position of a section the user is reading.
export function update(el, data, draw) {
  const key = JSON.stringify(data);
  if (el.dataset.key === key) return false;
  el.dataset.key = key;
  const active = document.activeElement;
  const focusId = active && el.contains(active) ? active.dataset.focus : null;
  el.replaceChildren(...[draw(data)].flat(Infinity).filter((c) => c !== null && c !== undefined));
  if (focusId) el.querySelector(`[data-focus="${CSS.escape(focusId)}"]`)?.focus();
  return true;
}

export function table(caption, headers, rows, { empty = "Nothing yet." } = {}) {
  const body = rows.length
    ? rows.map((cells) =>
        h("tr", {}, cells.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", { "data-label": headers[i] }, h("div", {}, c))))),
      )
    : [h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, empty))];
  return h(
    "div",
    { class: "table-wrap", tabindex: 0, role: "region", "aria-label": caption },
    h("table", {}, h("caption", {}, caption), h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, body)),
  );
}

export function dl(pairs) {
  return h("dl", { class: "pairs" }, pairs.filter(Boolean).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "—")]));
}

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || text}` }, text);
}

export function card(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

// -- numbers ------------------------------------------------------------------------------------

export function num(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return value.toLocaleString("en");
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toLocaleString("en", { maximumSignificantDigits: digits });
}

export function pct(value) {
  return value === null || value === undefined ? "—" : `${(value * 100).toFixed(1)}%`;
}

export function ms(value) {
  // A no-break space: a figure and its unit stay on one line.
  return value === null || value === undefined ? "—" : `${num(value)}\u00a0ms`;
}

export function interval(ci) {
  if (!ci || ci[0] === null || ci[0] === undefined) return "—";
  return `[${num(ci[0])}, ${num(ci[1])}]`;
}

export function estimate(figure) {
  if (!figure || figure.mean === null || figure.mean === undefined) return "—";
  return `${num(figure.mean)} ${interval(figure.ci95)}`;
}

export function time(ts) {
  if (!ts) return "—";
  return new Date(ts * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

export function datetime(ts) {
  if (!ts) return "—";
  const d = new Date(ts * 1000);
  return `${d.toISOString().slice(0, 10)} ${d.toLocaleTimeString("en-GB", { hour12: false })}`;
}

export function link(href, text) {
  return h("a", { href }, text);
}

export function hashFor(page, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== ""));
  const q = query.toString();
  return `#/${page}${q ? `?${q}` : ""}`;
}
