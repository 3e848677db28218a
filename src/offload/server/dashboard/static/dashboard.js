// offload dashboard: confirmations, and the overview's live numbers and chart.
// Our own code, no dependencies. Everything from the server is set as text, never as HTML.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const POLL_MS = 2000;
  const MAX_BACKOFF_MS = 30000;

  function confirmForms() {
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  }

  function duration(s) {
    if (s === null || s === undefined || !isFinite(s)) return "—";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return Math.round(s / 3600) + " h";
  }

  function setText(root, field, value) {
    const el = root.querySelector('[data-field="' + field + '"]');
    if (el && el.textContent !== String(value)) el.textContent = String(value);
  }

  function el(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    const steps = [1, 2, 5, 10];
    for (let i = 0; i < steps.length; i++) if (v <= steps[i] * p) return steps[i] * p;
    return 10 * p;
  }

  function drawChart(box, series) {
    if (series.length < 2) return;
    // Drawn at the box's own pixel size (no scaling), so text keeps its size on any screen.
    const W = Math.max(240, Math.floor(box.clientWidth)), H = 200, L = 44, R = 8, T = 10, B = 24;
    const t0 = series[0][0], t1 = series[series.length - 1][0];
    const span = Math.max(1, t1 - t0);
    let top = 0;
    series.forEach(function (p) { top = Math.max(top, p[1], p[2]); });
    top = niceMax(top);
    const x = function (t) { return L + ((t - t0) / span) * (W - L - R); };
    const y = function (v) { return T + (1 - v / top) * (H - T - B); };
    const svg = el("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H,
                            class: "chart-svg", role: "presentation" });
    [0, 0.5, 1].forEach(function (f) {
      const v = top * f;
      svg.appendChild(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
      svg.appendChild(el("text", { x: L - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" },
        v >= 10 ? v.toFixed(0) : String(Math.round(v * 100) / 100)));
    });
    const minutes = Math.round(span / 60);
    svg.appendChild(el("text", { x: L, y: H - 6, class: "axis" }, minutes >= 1 ? minutes + " min ago" : Math.round(span) + " s ago"));
    svg.appendChild(el("text", { x: W - R, y: H - 6, class: "axis", "text-anchor": "end" }, "now"));
    [[1, "line ok"], [2, "line bad"]].forEach(function (spec) {
      const pts = series.map(function (p) { return x(p[0]).toFixed(1) + "," + y(p[spec[0]]).toFixed(1); });
      svg.appendChild(el("polyline", { points: pts.join(" "), class: spec[1] }));
    });
    box.replaceChildren(svg);
  }

  function queueRows(tbody, queues, root) {
    const rows = queues.map(function (q) {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.setAttribute("data-label", "Queue");
      const a = document.createElement("a");
      a.href = root + "/jobs?queue=" + encodeURIComponent(q.name);
      a.textContent = q.name;
      name.appendChild(a);
      if (q.paused) {
        const badge = document.createElement("span");
        badge.className = "badge paused";
        badge.textContent = "paused";
        name.append(" ", badge);
      }
      tr.appendChild(name);
      [["Waiting", q.depth], ["Running", q.running], ["Dead", q.dead],
       ["Done/s", q.rate === null ? "—" : q.rate]].forEach(function (c) {
        const td = document.createElement("td");
        td.className = "num";
        td.setAttribute("data-label", c[0]);
        td.textContent = String(c[1]);
        tr.appendChild(td);
      });
      return tr;
    });
    if (rows.length) tbody.replaceChildren.apply(tbody, rows);
  }

  function render(box, data) {
    const t = data.totals;
    setText(box, "waiting", t.scheduled + t.queued);
    setText(box, "running", t.running);
    setText(box, "succeeded", t.succeeded);
    setText(box, "dead", t.dead);
    const deadTile = box.querySelector('[data-field="dead"]');
    if (deadTile) deadTile.classList.toggle("bad", t.dead > 0);
    setText(box, "p50", duration(data.latency.p50_s));
    setText(box, "p95", duration(data.latency.p95_s));
    setText(box, "samples", data.latency.samples);
    setText(box, "busy", data.slots.busy);
    setText(box, "idle", data.slots.idle);
    drawChart(document.getElementById("chart"), data.series);
    const tbody = box.querySelector('[data-field="queues"]');
    if (tbody) queueRows(tbody, data.queues, document.body.getAttribute("data-root") || "");
    setText(box, "status", "Updated " + new Date(data.at * 1000).toLocaleTimeString() + ".");
  }

  function live(box) {
    const src = box.getAttribute("data-src");
    let delay = POLL_MS;
    let timer = null;
    function schedule() {
      if (timer === null && !document.hidden) timer = window.setTimeout(tick, delay);
    }
    function tick() {
      timer = null;
      fetch(src, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 401 || r.redirected) { window.location.reload(); throw new Error("login"); }
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        })
        .then(function (data) { delay = POLL_MS; render(box, data); })
        .catch(function () {
          delay = Math.min(delay * 2, MAX_BACKOFF_MS);
          setText(box, "status", "Cannot reach the server; retrying.");
        })
        .finally(schedule);
    }
    document.addEventListener("visibilitychange", function () {
      if (document.hidden && timer !== null) { window.clearTimeout(timer); timer = null; }
      else if (!document.hidden) schedule();
    });
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    confirmForms();
    const box = document.getElementById("overview");
    if (box) live(box);
  });
})();
