// spotd dashboard: draws the charts (uPlot, vendored) and applies the page's live stream.
// The server renders every part of a page; the stream (/dashboard/live/<page>) sends the parts
// and chart data that changed, which replace what is shown. No framework, no inline script.
"use strict";
(function () {
  const PREFIX = "/dashboard";
  const COLORS = ["#2f7de1", "#e8833a", "#2ca58d", "#b54fc7", "#d64545", "#7a8a99", "#c9a227", "#3bb3c3", "#888"];
  const charts = {};
  // x-axis steps in seconds: whole seconds up to days, never a label twice
  const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  function fmtTime(t, span) {
    const d = new Date(t * 1000);
    const o = span < 600 ? { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }
      : { hour: "2-digit", minute: "2-digit", hour12: false };
    return d.toLocaleTimeString([], o);
  }

  function base(el, series, opts) {
    const own = Object.assign({}, opts || {});
    delete own.integers;
    return Object.assign({
      width: Math.max(280, el.clientWidth),
      height: el.classList.contains("wide") ? 260 : 220,
      series: [{ value: (u, v) => (v == null ? "-" : new Date(v * 1000).toLocaleTimeString()) }].concat(series),
      axes: [
        { stroke: "#8a94a3", grid: { stroke: "#eef1f5" }, space: 90, incrs: TIME_STEPS,
          values: (u, vals) => vals.map((v) => fmtTime(v, u.scales.x.max - u.scales.x.min)) },
        Object.assign({ stroke: "#8a94a3", grid: { stroke: "#eef1f5" }, size: 50 },
          (opts && opts.integers) ? { incrs: [1, 2, 5, 10, 20, 50, 100] } : {}),
      ],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    }, own);
  }

  function dollars(v) {
    if (v === 0) return "$0";
    const a = Math.abs(v);
    return "$" + (a >= 100 ? v.toFixed(0) : a >= 1 ? v.toFixed(2) : v.toPrecision(2));
  }

  function line(label, i, extra) {
    return Object.assign({ label: label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false }, extra || {});
  }

  // vertical lines at the autoscaler's decisions, with their label ("1→2")
  function decisionsPlugin(getDecisions) {
    return {
      hooks: {
        draw: [(u) => {
          const ctx = u.ctx;
          const list = getDecisions() || [];
          ctx.save();
          ctx.strokeStyle = "#b54fc7";
          ctx.fillStyle = "#b54fc7";
          ctx.setLineDash([4, 4]);
          ctx.lineWidth = 1.5 * devicePixelRatio;
          ctx.font = (11 * devicePixelRatio) + "px sans-serif";
          for (const d of list) {
            const x = Math.round(u.valToPos(d.at, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillText(d.label, x + 3 * devicePixelRatio, u.bbox.top + 12 * devicePixelRatio);
          }
          ctx.restore();
        }],
      },
    };
  }

  const BUILDERS = {
    traffic: (el, c) => {
      const state = { decisions: c.decisions };
      const u = new uPlot(base(el, [line("req/s", 0), line("5xx/s", 4)], { plugins: [decisionsPlugin(() => state.decisions)] }), c.data, el);
      return { u: u, update: (n) => { state.decisions = n.decisions; u.setData(n.data); } };
    },
    latency: (el, c) => {
      const u = new uPlot(base(el, [line("p50 ms", 2), line("p99 ms", 1)]), c.data, el);
      return { u: u, update: (n) => u.setData(n.data) };
    },
    queue: (el, c) => {
      const u = new uPlot(base(el, [line("queued", 4), line("in flight", 0)], { integers: true }), c.data, el);
      return { u: u, update: (n) => u.setData(n.data) };
    },
    replicas: (el, c) => {
      // stacked: series k shows groups k..n-1 summed, drawn widest first, so each group is
      // the band between its line and the next one's; the legend shows the group's own count
      const raw = c.data.slice(1);
      const stacked = raw.map((_, k) => c.data[0].map((__, i) => raw.slice(k).reduce((a, ys) => a + (ys[i] || 0), 0)));
      const series = c.names.map((n, k) => line(n, k, {
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false },
        fill: COLORS[k % COLORS.length] + "55", value: (u, v, si, i) => (i == null ? "-" : raw[k][i]),
      }));
      const u = new uPlot(base(el, series, { integers: true }), [c.data[0]].concat(stacked), el);
      return { u: u, update: null };
    },
    spend: (el, c) => {
      const money = (u, v) => (v == null ? "-" : dollars(v));
      const step = { paths: uPlot.paths.stepped({ align: 1 }), points: { show: false }, value: money };
      const series = c.names.map((n, i) => line(n, i, Object.assign({ fill: COLORS[i % COLORS.length] + "22" }, step)));
      series.push(line("all on-demand", 8, Object.assign({ dash: [6, 4] }, step)));
      const opts = base(el, series);
      opts.axes[1].values = (u, vals) => vals.map(dollars);
      opts.axes[1].size = 70;
      const u = new uPlot(opts, c.data.concat([c.ondemand]), el);
      return { u: u, update: null };
    },
  };

  function draw(name, config) {
    const el = document.querySelector('[data-chart="' + name + '"]');
    if (!el || !BUILDERS[name] || typeof uPlot === "undefined") return;
    const held = charts[name];
    if (held && held.update) { held.update(config); el.dataset.points = String(config.data[0].length); return; }
    if (held) { held.u.destroy(); }
    el.innerHTML = "";
    charts[name] = BUILDERS[name](el, config);
    el.dataset.points = String(config.data[0].length);
    const last = config.data[1] ? config.data[1][config.data[1].length - 1] : null;
    el.dataset.last = last == null ? "" : String(last);
  }

  function drawAll(data) {
    for (const name of Object.keys(data)) {
      draw(name, data[name]);
      const el = document.querySelector('[data-chart="' + name + '"]');
      const ys = data[name].data && data[name].data[1];
      if (el && ys) {
        el.dataset.max = String(ys.reduce((m, v) => (v != null && v > m ? v : m), 0));
      }
    }
  }

  function connect() {
    const page = document.body.dataset.live;
    if (page === undefined || !window.EventSource) return;
    const q = document.body.dataset.query;
    const dot = document.getElementById("live-dot");
    const es = new EventSource(PREFIX + "/live/" + page + (q ? "?" + q : ""));
    es.onopen = () => dot && dot.classList.add("on");
    es.onerror = () => dot && dot.classList.remove("on");
    es.addEventListener("update", (ev) => {
      const msg = JSON.parse(ev.data);
      for (const [name, html] of Object.entries(msg.parts || {})) {
        const el = document.querySelector('[data-part="' + name + '"]');
        if (el) {
          const log = el.querySelector("pre.log");
          const atEnd = log && log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
          el.innerHTML = html;
          const nlog = el.querySelector("pre.log");
          if (nlog && (atEnd || !log)) nlog.scrollTop = nlog.scrollHeight;
        }
      }
      drawAll(msg.charts || {});
      document.body.dataset.updates = String(Number(document.body.dataset.updates || "0") + 1);
    });
    es.addEventListener("gone", () => es.close());
  }

  document.addEventListener("click", (ev) => {
    const b = ev.target.closest("[data-confirm]");
    if (b && !window.confirm(b.dataset.confirm)) ev.preventDefault();
  });

  window.addEventListener("resize", () => {
    for (const [name, c] of Object.entries(charts)) {
      const el = document.querySelector('[data-chart="' + name + '"]');
      if (el) c.u.setSize({ width: Math.max(280, el.clientWidth), height: c.u.height });
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const holder = document.getElementById("charts");
    drawAll(holder ? JSON.parse(holder.textContent || "{}") : {});
    const log = document.querySelector("pre.log");
    if (log) log.scrollTop = log.scrollHeight;
    connect();
  });
})();
