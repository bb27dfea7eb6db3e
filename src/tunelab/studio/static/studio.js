// tunelab studio: what every page shares (the API client with the key, the header, formatting, charts).
// The key is asked for only when the server wants one (401/403) and kept in this tab's sessionStorage.
"use strict";

const Studio = (() => {
  const KEY = "tunelab-studio-key";
  const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
  const COLORS = ["#2f6fdf", "#e4572e", "#29a36a", "#a05cd5", "#f0a202", "#17becf", "#8c564b", "#d62728"];

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  function key() { return sessionStorage.getItem(KEY) || ""; }

  async function api(path, opts = {}) {
    const headers = Object.assign({ "content-type": "application/json" }, opts.headers || {});
    if (key()) headers.authorization = "Bearer " + key();
    const init = Object.assign({}, opts, { headers });
    if (init.body && typeof init.body !== "string") init.body = JSON.stringify(init.body);
    const res = await fetch(path, init);
    const body = await res.json().catch(() => ({}));
    if (res.status === 401 || res.status === 403) askKey(body.error ? body.error.message : "an API key is needed");
    if (!res.ok) throw new ApiError(body.error ? body.error.message : res.statusText, res.status);
    return body;
  }

  function askKey(why) {
    const box = document.querySelector(".keybox");
    if (!box) return;
    box.classList.add("shown");
    box.querySelector("input").placeholder = why.slice(0, 80);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function header(active) {
    const links = [["", "Runs & jobs"], ["new", "New run"], ["compare", "Compare"], ["data", "Data"],
                   ["chat", "Chat"], ["feedback", "Feedback"]];
    const input = el("input", { type: "password", size: 28, "aria-label": "API key" });
    const save = el("button", { class: "secondary", onclick: () => {
      sessionStorage.setItem(KEY, input.value.trim()); location.reload(); } }, "Use key");
    const bar = el("header", {},
      el("span", { class: "brand" }, "tunelab studio"),
      el("nav", {}, links.map(([p, label]) =>
        el("a", { href: "/studio" + (p ? "/" + p : ""), class: p === active ? "active" : "" }, label))),
      el("div", { class: "keybox" }, input, save));
    document.body.prepend(bar);
  }

  function num(x, digits = 4) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (typeof x !== "number") return String(x);
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e5)) return x.toExponential(2);
    return Number(x.toPrecision(digits)).toString();
  }

  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  }

  function when(t) { return t ? new Date(t * 1000).toLocaleString() : "–"; }

  function status(s) { return el("span", { class: "status " + (s || ""), "data-status": s || "" }, s || "–"); }

  function runLink(name) {
    return name ? el("a", { href: "/studio/runs/" + name.split("/").map(encodeURIComponent).join("/") }, name) : "–";
  }

  // A chart of one or more series over steps. set(series) takes {label: [[step, value], ...]}.
  function chart(parent, title, opts = {}) {
    const box = el("div", { class: "chart", dataset: { chart: opts.id || title } });
    const caption = el("div", { class: "caption" }, "no points yet");
    box.append(el("div", { class: "title" }, title), caption);
    parent.append(box);
    let plot = null, labels = [];
    function set(series) {
      const names = Object.keys(series).filter((k) => series[k].length);
      const steps = [...new Set(names.flatMap((n) => series[n].map((p) => p[0])))].sort((a, b) => a - b);
      const index = new Map(steps.map((s, i) => [s, i]));
      const data = [steps, ...names.map((n) => {
        const ys = new Array(steps.length).fill(null);
        for (const [s, v] of series[n]) ys[index.get(s)] = v;
        return ys;
      })];
      const points = names.reduce((a, n) => a + series[n].length, 0);
      box.dataset.points = String(points);
      const last = names.map((n) => `${n} ${num(series[n][series[n].length - 1][1])}`).join(" · ");
      caption.textContent = points ? `${points} points · last: ${last}` : "no points yet";
      if (!names.length) return;
      if (plot && names.join("|") === labels.join("|")) { plot.setData(data); return; }
      if (plot) plot.destroy();
      labels = names;
      const width = Math.max(320, box.clientWidth - 16);
      plot = new uPlot({
        width, height: opts.height || 220,
        scales: { x: { time: false }, y: { distr: opts.log ? 3 : 1 } },
        axes: [{ label: "step", incrs: STEP_INCRS }, { size: 60, values: (u, vals) => vals.map((v) => num(v, 3)) }],
        series: [{ label: "step" }, ...names.map((n, i) => ({
          label: n, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
          points: { show: steps.length < 60 } }))],
      }, data, box);
    }
    return { set, box };
  }

  function table(headers, rows, rowAttrs) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.map((r, i) => el("tr", rowAttrs ? rowAttrs(i) : {}, r.map((c) =>
        c instanceof Node ? el("td", {}, c) : el("td", { class: typeof c === "number" ? "num" : "" }, num(c)))))));
  }

  // The base-vs-fine-tuned rows of eval/comparison.json: value, difference and its paired 95% CI.
  function comparisonRows(cmp) {
    return (cmp && cmp.rows ? cmp.rows : []).map((r) => [
      r.label, r.value_a, r.value_b, r.diff, `[${num(r.ci_low)}, ${num(r.ci_high)}]`,
      el("span", { class: r.verdict === "better" ? "better" : r.verdict === "worse" ? "worse" : "" }, r.verdict),
      r.n]);
  }

  // A chat message list or a plain prompt, as text for a table cell.
  function promptText(p) {
    if (Array.isArray(p)) return p.map((m) => `${m.role}: ${m.content}`).join("\n");
    return p === null || p === undefined ? "" : String(p);
  }

  // What a reply looks like on the page: whitespace-only and empty replies are said, not shown blank.
  function replyText(text) {
    if (!text) return "(empty reply)";
    return text.trim() ? text : `(${text.length} whitespace characters)`;
  }

  function qs(name) { return new URLSearchParams(location.search).get(name); }

  return { api, ApiError, el, header, num, duration, when, status, runLink, chart, table, comparisonRows, qs,
           promptText, replyText, COLORS };
})();
