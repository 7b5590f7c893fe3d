// rockstar-mp dashboard: polls the aggregator's JSON endpoints and draws them with small SVG charts.
// Memory stays flat: every series is a fixed-size ring, tables are rebuilt in place, and the one
// object URL (the profile download) is revoked before a new one is made.
'use strict';
(() => {
  const REFRESH_MS = 1000;
  const LIVE_POINTS = 300;          // 5 minutes at one point a second
  const WINDOW_SECONDS = 2;         // /workload?window= for the live rate and quantiles
  // each request costs the aggregator ~1-2 ms of CPU: the tables that need no second-by-second
  // update are refreshed less often (one open page stays under 1 % of a core)
  const WORKERS_EVERY = 2;          // the workers table: every 2nd refresh
  const SLOW_EVERY = 5;             // logs and optimization stats: every 5th refresh
  const HISTORY_EVERY = 30;         // the 1 h / 24 h charts: every 30th refresh
  const HISTORY_POINTS = 360;       // the step asked of the history endpoint: range / this
  const TOP_N = 5;
  const MAX_VALUES = 16;            // per-route/tenant series kept (least recently seen dropped)
  const LONG_REQUEST_SECONDS = 1;   // in-flight requests older than this are highlighted
  const MAX_LOG_ROWS = 200;
  const MAX_EVENTS = 200;
  const TOKEN_KEY = 'rockstar-mp-token';
  const COLORS = ['#1f6feb', '#d1242f', '#1a7f37', '#9a6700', '#8250df', '#bf3989', '#0a7e8c', '#57606a'];
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);

  // -- state ---------------------------------------------------------------------------------------
  const app = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    authorized: null,      // null: not yet known, false: refused (polling stops), true: data flows
    tick: 0,
    refreshes: 0,
    timer: 0,
    metricsPath: '/metrics',
    lastLogTime: 0,
    logKeys: new Set(),    // records at lastLogTime already shown (since= is inclusive)
    profileUrl: '',
    flame: null,           // the last profile's tree and unit
    history: null,         // the last history answer: {range, lines}
  };

  /** A fixed-capacity ring of (t, v) points. */
  class Ring {
    constructor(capacity) {
      this.t = new Float64Array(capacity);
      this.v = new Float64Array(capacity);
      this.start = 0;
      this.length = 0;
      this.seen = 0;
    }
    push(t, v) {
      const cap = this.t.length;
      const at = (this.start + this.length) % cap;
      this.t[at] = t;
      this.v[at] = v;
      if (this.length < cap) this.length += 1; else this.start = (this.start + 1) % cap;
    }
    points() {
      const out = new Array(this.length);
      for (let i = 0; i < this.length; i++) {
        const at = (this.start + i) % this.t.length;
        out[i] = [this.t[at], this.v[at]];
      }
      return out;
    }
  }

  const live = {
    overall: { rate: new Ring(LIVE_POINTS), errors: new Ring(LIVE_POINTS), p50_ms: new Ring(LIVE_POINTS),
      p95_ms: new Ring(LIVE_POINTS), p99_ms: new Ring(LIVE_POINTS) },
    route: new Map(),   // value -> {rate, p50_ms, p95_ms, p99_ms}, at most MAX_VALUES
    tenant: new Map(),
  };

  function resetLive() {
    for (const ring of Object.values(live.overall)) { ring.start = 0; ring.length = 0; }
    live.route.clear();
    live.tenant.clear();
  }

  // -- HTTP ----------------------------------------------------------------------------------------
  class HttpError extends Error {
    constructor(status, title, description) {
      super(`${title}${description ? ': ' + description : ''}`);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: 'application/json' };
    if (app.token) headers.Authorization = 'Bearer ' + app.token;
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(path, { method: options.method || 'GET', headers, cache: 'no-store',
      credentials: 'omit', body: options.body === undefined ? undefined : JSON.stringify(options.body) });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      throw new HttpError(resp.status, (body && body.title) || `HTTP ${resp.status}`, (body && body.description) || '');
    }
    return body;
  }

  // -- formatting ----------------------------------------------------------------------------------
  function fmtNumber(v, digits = 1) {
    if (v === null || v === undefined || Number.isNaN(v)) return '–';
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(digits) + 'M';
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(digits) + 'k';
    return Number.isInteger(v) ? String(v) : v.toFixed(digits);
  }
  function fmtBytes(v) {
    if (v === null || v === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 1 : 0) + ' ' + units[i];
  }
  function fmtSeconds(s) {
    if (s === null || s === undefined) return '–';
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    if (s < 86400) return (s / 3600).toFixed(1) + ' h';
    return (s / 86400).toFixed(1) + ' d';
  }
  function fmtAgo(when) { return when ? fmtSeconds(Math.max(0, Date.now() / 1000 - when)) + ' ago' : '–'; }
  function fmtClock(when) {
    if (!when) return '–';
    const d = new Date(when * 1000);
    return d.toLocaleTimeString([], { hour12: false });
  }
  function fmtMs(v) { return v === null || v === undefined ? '–' : v.toFixed(v < 10 ? 2 : 1) + ' ms'; }

  // -- DOM helpers -----------------------------------------------------------------------------------
  function cell(text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }
  function row(cells, attrs = {}) {
    const tr = document.createElement('tr');
    for (const [k, v] of Object.entries(attrs)) tr.setAttribute(k, v);
    for (const c of cells) tr.appendChild(c instanceof Node ? c : cell(c));
    return tr;
  }
  function setRows(tableId, rows) { $(tableId).tBodies[0].replaceChildren(...rows); }
  function setError(id, err) { $(id).textContent = err ? String(err.message || err) : ''; }
  function svgEl(name, attrs = {}, text) {
    const el = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    return el;
  }

  // -- charts ----------------------------------------------------------------------------------------
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /** Draw ``lines`` ([{name, points: [[t, v], ...]}]) into ``svg`` between tMin and tMax. With
   * ``pairs``, the points are (before, after) pairs, each drawn as a bar, on an axis that starts near
   * the lowest value rather than 0. */
  function drawChart(svg, lines, tMin, tMax, unit, pairs = false) {
    const width = Math.max(200, svg.clientWidth || 600);
    const height = Math.max(100, svg.clientHeight || 170);
    const left = 44, right = 8, top = 18, bottom = 16;
    const plotW = width - left - right, plotH = height - top - bottom;
    let max = 0, min = Infinity;
    for (const line of lines) for (const p of line.points) { if (p[1] > max) max = p[1]; if (p[1] < min) min = p[1]; }
    let floor = 0;
    if (pairs && min < Infinity) {
      const pad = Math.max((max - min) * 0.2, max * 0.01, 1e-9);
      floor = Math.max(0, min - pad);
      max = max + pad;
    } else {
      max = niceMax(max);
    }
    const x = (t) => left + (tMax > tMin ? (t - tMin) / (tMax - tMin) : 1) * plotW;
    const y = (v) => top + plotH - ((v - floor) / (max - floor || 1)) * plotH;
    const children = [];
    for (const frac of [0, 0.5, 1]) {
      const value = floor + (max - floor) * frac;
      const yy = y(value).toFixed(1);
      children.push(svgEl('line', { class: 'grid', x1: left, x2: width - right, y1: yy, y2: yy }));
      children.push(svgEl('text', { x: left - 4, y: Number(yy) + 3, 'text-anchor': 'end' }, fmtNumber(value, 2)));
    }
    children.push(svgEl('text', { x: left, y: height - 3 }, fmtClock(tMin)));
    children.push(svgEl('text', { x: width - right, y: height - 3, 'text-anchor': 'end' }, fmtClock(tMax)));
    if (unit) children.push(svgEl('text', { x: 2, y: 10 }, unit));
    const legend = svgEl('g', { class: 'legend' });
    let lx = left;
    lines.forEach((line, i) => {
      const color = COLORS[i % COLORS.length];
      let d = '';
      const points = line.points;
      for (let j = 0; j < points.length; j += pairs ? 2 : 1) {
        const [t, v] = points[j];
        if (t < tMin) continue;
        if (pairs && j + 1 < points.length) {  // a bar from before to after, and a tick at after
          const xx = x(t).toFixed(1), after = y(points[j + 1][1]);
          d += `M${xx} ${y(v).toFixed(1)}L${xx} ${after.toFixed(1)}M${(x(t) - 4).toFixed(1)} ${after.toFixed(1)}h8`;
        } else {
          d += (d ? 'L' : 'M') + x(t).toFixed(1) + ' ' + y(v).toFixed(1);
        }
      }
      children.push(svgEl('path', { class: pairs ? 'line bars' : 'line', d: d || 'M0 0', stroke: color, 'data-name': line.name }));
      const label = line.name.length > 24 ? line.name.slice(0, 23) + '…' : line.name;
      legend.appendChild(svgEl('rect', { x: lx, y: 4, width: 8, height: 8, fill: color }));
      legend.appendChild(svgEl('text', { x: lx + 11, y: 12 }, label));
      lx += 24 + label.length * 6;
    });
    children.push(legend);
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.replaceChildren(...children);
    svg.setAttribute('data-points', String(lines.reduce((n, line) => n + line.points.length, 0)));
  }

  // -- traffic ---------------------------------------------------------------------------------------
  function dimensionSeries(dimension, value) {
    const map = live[dimension];
    let series = map.get(value);
    if (series) {
      map.delete(value);  // most recently seen last
    } else {
      series = { rate: new Ring(LIVE_POINTS), p50_ms: new Ring(LIVE_POINTS), p95_ms: new Ring(LIVE_POINTS),
        p99_ms: new Ring(LIVE_POINTS) };
      if (map.size >= MAX_VALUES) map.delete(map.keys().next().value);
    }
    map.set(value, series);
    return series;
  }

  function topValues(byValue) {
    return Object.entries(byValue || {}).sort((a, b) => b[1].requests - a[1].requests).slice(0, TOP_N);
  }

  function recordWorkload(w) {
    const t = w.timestamp;
    const span = Math.max(0.5, t - (w.since || t - WINDOW_SECONDS));
    const errors = (w.by_status['5xx'] || { requests: 0 }).requests;
    const o = live.overall;
    o.rate.push(t, w.total_requests / span);
    o.errors.push(t, errors / span);
    for (const q of ['p50_ms', 'p95_ms', 'p99_ms']) o[q].push(t, w[q] || 0);
    for (const dimension of ['route', 'tenant']) {
      for (const [value, s] of topValues(w[`by_${dimension}`])) {
        const series = dimensionSeries(dimension, value);
        series.rate.push(t, s.requests / span);
        for (const q of ['p50_ms', 'p95_ms', 'p99_ms']) series[q].push(t, s[q] || 0);
      }
    }
    $('rate').textContent = fmtNumber(w.total_requests / span) + '/s';
    $('error-rate').textContent = fmtNumber(errors / span) + '/s';
    $('p50').textContent = fmtMs(w.p50_ms);
    $('p95').textContent = fmtMs(w.p95_ms);
    $('p99').textContent = fmtMs(w.p99_ms);
    app.lastWorkload = w;
  }

  function renderTopTable() {
    const dimension = $('dimension').value === 'tenant' ? 'tenant' : 'route';
    $('top-name').textContent = dimension;
    const w = app.lastWorkload;
    if (!w) { setRows('top-table', []); return; }
    const span = Math.max(0.5, w.timestamp - (w.since || w.timestamp - WINDOW_SECONDS));
    setRows('top-table', topValues(w[`by_${dimension}`]).map(([value, s]) =>
      row([value, fmtNumber(s.requests / span), fmtNumber(s.p50_ms, 2), fmtNumber(s.p95_ms, 2), fmtNumber(s.p99_ms, 2)])));
  }

  function liveLines() {
    const dimension = $('dimension').value;
    const quantile = $('quantile').value;
    if (dimension === 'overall') {
      const o = live.overall;
      return {
        rate: [{ name: 'requests/s', points: o.rate.points() }, { name: '5xx/s', points: o.errors.points() }],
        latency: ['p50_ms', 'p95_ms', 'p99_ms'].map((q) => ({ name: q.slice(0, 3), points: o[q].points() })),
      };
    }
    const current = topValues(app.lastWorkload ? app.lastWorkload[`by_${dimension}`] : {}).map(([v]) => v);
    const values = current.filter((v) => live[dimension].has(v));
    return {
      rate: values.map((v) => ({ name: v, points: live[dimension].get(v).rate.points() })),
      latency: values.map((v) => ({ name: v, points: live[dimension].get(v)[quantile].points() })),
    };
  }

  function renderTraffic() {
    const range = $('range').value;
    const quantile = $('quantile').value.slice(0, 3);
    const dimension = $('dimension').value;
    $('rate-caption').textContent = dimension === 'overall' ? 'Requests and 5xx per second' : `Requests per second by ${dimension}`;
    $('latency-caption').textContent = dimension === 'overall' ? 'Latency p50 / p95 / p99 (ms)' : `Latency ${quantile} by ${dimension} (ms)`;
    let lines, tMin, tMax;
    if (range === 'live') {
      lines = liveLines();
      tMax = Date.now() / 1000;
      tMin = tMax - LIVE_POINTS;
    } else {
      if (!app.history || app.history.range !== range) {  // not loaded yet: no stale live lines meanwhile
        drawChart($('chart-rate'), [], Date.now() / 1000 - Number(range), Date.now() / 1000, '/s');
        drawChart($('chart-latency'), [], Date.now() / 1000 - Number(range), Date.now() / 1000, 'ms');
        return;
      }
      lines = app.history.lines;
      tMax = app.history.until;
      tMin = tMax - Number(range);
    }
    drawChart($('chart-rate'), lines.rate, tMin, tMax, '/s');
    drawChart($('chart-latency'), lines.latency, tMin, tMax, 'ms');
    for (const id of ['chart-rate', 'chart-latency']) $(id).dataset.range = range;  // what is drawn
    renderTopTable();
  }

  // -- history (1 h, 24 h) -----------------------------------------------------------------------------
  function traffic(name, dimension, value) {
    if (!dimension) return 'rockstar.traffic.' + name;
    const escaped = value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
    return `rockstar.traffic.${name}{${dimension}="${escaped}"}`;
  }

  async function historyPoints(name, since, until, step) {
    const query = new URLSearchParams({ name, since: since.toFixed(0), until: until.toFixed(0), step: String(step) });
    try {
      return (await api(`${app.metricsPath.replace(/\/$/, '')}/history?${query}`)).points;
    } catch (err) {
      if (err.status === 404 && /no history for/.test(err.message)) return [];
      throw err;
    }
  }

  function rates(points) {
    const out = [];
    for (let i = 1; i < points.length; i++) {
      const [t0, v0] = points[i - 1], [t1, v1] = points[i];
      if (t1 > t0 && v1 >= v0) out.push([t1, (v1 - v0) / (t1 - t0)]);
    }
    return out;
  }

  async function loadHistory() {
    const range = $('range').value;
    if (range === 'live') return;
    const until = Date.now() / 1000, since = until - Number(range);
    const step = Math.max(1, Math.round(Number(range) / HISTORY_POINTS));
    const dimension = $('dimension').value;
    const quantile = $('quantile').value;
    const get = (name) => historyPoints(name, since, until, step);
    let lines;
    if (dimension === 'overall') {
      const [requests, errors, p50, p95, p99] = await Promise.all(
        ['requests', 'errors', 'p50_ms', 'p95_ms', 'p99_ms'].map((n) => get(traffic(n))));
      lines = { rate: [{ name: 'requests/s', points: rates(requests) }, { name: '5xx/s', points: rates(errors) }],
        latency: [{ name: 'p50', points: p50 }, { name: 'p95', points: p95 }, { name: 'p99', points: p99 }] };
    } else {
      let w = app.lastWorkload;
      if (!w || !Object.keys(w[`by_${dimension}`] || {}).length) w = await api('/workload');
      const values = topValues(w[`by_${dimension}`]).map(([v]) => v);
      const answers = await Promise.all(values.flatMap((v) =>
        [get(traffic('requests', dimension, v)), get(traffic(quantile, dimension, v))]));
      lines = { rate: values.map((v, i) => ({ name: v, points: rates(answers[2 * i]) })),
        latency: values.map((v, i) => ({ name: v, points: answers[2 * i + 1] })) };
    }
    app.history = { range, until, lines };
  }

  // -- workers ---------------------------------------------------------------------------------------
  function renderWorkers(body) {
    const now = Date.now() / 1000;
    const rows = body.workers.map((w) => {
      const inflight = w.in_flight_request;
      const long = inflight && inflight.seconds >= LONG_REQUEST_SECONDS;
      const flightText = inflight ? `${inflight.method} ${inflight.path} ${inflight.seconds.toFixed(1)} s` +
        (w.in_flight > 1 ? ` (+${w.in_flight - 1})` : '') : (w.in_flight ? String(w.in_flight) : 'idle');
      const classes = [long ? 'long' : '', w.stuck ? 'stuck' : ''].filter(Boolean).join(' ');
      const attrs = { 'data-pid': String(w.pid) };
      if (classes) attrs.class = classes;
      return row([String(w.pid), String(w.age), fmtSeconds(now - w.started), cell(String(w.requests), 'requests'),
        cell(flightText, 'inflight'), fmtBytes(w.rss), fmtBytes(w.uss), fmtBytes(w.pss),
        w.cpu_percent === null || w.cpu_percent === undefined ? '–' : w.cpu_percent.toFixed(1) + ' %',
        String(w.threads ?? '–'), String(w.open_fds ?? '–'), w.stuck ? `STUCK ${fmtSeconds(w.heartbeat_age)}` : fmtSeconds(w.heartbeat_age),
        cell(String(w.optimizations), 'optimizations'), fmtAgo(w.last_optimization)], attrs);
    });
    setRows('workers-table', rows);
    setRows('folded-table', (body.folded || []).slice().reverse().map((f) =>
      row([String(f.pid), String(f.age), fmtClock(f.started), `${fmtClock(f.folded_at)} (${fmtAgo(f.folded_at)})`],
        { 'data-pid': String(f.pid) })));
  }

  // -- optimization ------------------------------------------------------------------------------------
  function renderOptimization(stats) {
    setRows('optimization-table', stats.workers.map((w) => row([String(w.pid),
      cell(String(w.optimization_count), 'optimization_count'), fmtAgo(w.last_optimization),
      fmtBytes(w.memory_before), fmtBytes(w.memory_after), fmtBytes(w.memory_freed), fmtNumber(w.last_pause_ms, 2)],
    { 'data-pid': String(w.pid) })));
    const events = stats.recent.slice(-MAX_EVENTS);
    setRows('events-table', events.slice(-20).reverse().map((e) => row([fmtClock(e.time), String(e.pid),
      fmtBytes(e.memory_before), fmtBytes(e.memory_after), fmtBytes(e.uss_freed), fmtNumber(e.last_pause_ms, 2)])));
    drawTimeline($('chart-gc'), events);
  }

  /** One row per worker: each GC run a bar from its RSS before (light) to after (dark). */
  function drawTimeline(svg, events) {
    const byPid = new Map();
    for (const e of events) {
      if (!byPid.has(e.pid)) byPid.set(e.pid, []);
      byPid.get(e.pid).push(e);
    }
    const lines = [];
    for (const [pid, list] of byPid) {
      const points = [];
      for (const e of list) { points.push([e.time, e.memory_before / 1048576]); points.push([e.time, e.memory_after / 1048576]); }
      lines.push({ name: `pid ${pid}`, points });
    }
    const now = Date.now() / 1000;
    const first = events.length ? events[0].time : now - 60;
    drawChart(svg, lines.slice(0, COLORS.length), Math.min(first - 5, now - 60), now, 'MiB RSS', true);
    svg.setAttribute('data-points', String(events.length));
  }

  async function optimizeNow() {
    const button = $('optimize-now');
    button.disabled = true;
    setError('optimization-error', null);
    try {
      const answer = await api('/optimize', { method: 'POST' });
      $('optimize-result').textContent = `asked ${answer.requested.length} worker(s): ${answer.requested.join(', ')}`;
      await refreshSlow();
    } catch (err) {
      setError('optimization-error', err.status === 401 ? new Error(`${err.message} (needs the admin token)`) : err);
    } finally {
      button.disabled = false;
    }
  }

  // -- logs --------------------------------------------------------------------------------------------
  function logKey(r) { return `${r.time}|${r.pid}|${r.message}`; }

  async function refreshLogs() {
    const level = $('log-level').value;
    const query = new URLSearchParams({ level, limit: String(MAX_LOG_ROWS) });
    if (app.lastLogTime) query.set('since', String(app.lastLogTime));
    const body = await api('/logs?' + query);
    const fresh = body.logs.filter((r) => !(r.time === app.lastLogTime && app.logKeys.has(logKey(r))));
    if (fresh.length) {
      const last = fresh[fresh.length - 1].time;
      if (last !== app.lastLogTime) app.logKeys.clear();
      app.lastLogTime = last;
      for (const r of fresh) if (r.time === last) app.logKeys.add(logKey(r));
      const tbody = $('logs-table').tBodies[0];
      for (const r of fresh) {
        tbody.insertBefore(row([fmtClock(r.time), String(r.pid), r.level, r.logger, cell(r.message, 'message')],
          { class: 'level-' + r.level }), tbody.firstChild);
      }
      while (tbody.rows.length > MAX_LOG_ROWS) tbody.deleteRow(-1);
    }
    $('logs-dropped').textContent = body.dropped ? `${body.dropped} record(s) dropped` : '';
  }

  function resetLogs() {
    app.lastLogTime = 0;
    app.logKeys.clear();
    setRows('logs-table', []);
  }

  // -- profiling ---------------------------------------------------------------------------------------
  function fmtValue(v, unit) { return unit === 'nanoseconds' ? fmtMs(v / 1e6) : fmtNumber(v); }

  async function profile() {
    const button = $('profile-start');
    const seconds = $('profile-seconds').value;
    button.disabled = true;
    setError('profiling-error', null);
    $('profile-status').textContent = `profiling every worker for ${seconds} s…`;
    try {
      const body = await api('/dashboard/profile?seconds=' + encodeURIComponent(seconds));
      renderProfile(body);
      $('profile-status').textContent = `${fmtValue(body.total, body.unit)} of ${body.sample_type} in ${body.seconds} s ` +
        `from worker(s) ${body.workers.join(', ')}` + (body.missing.length ? `; no answer from ${body.missing.join(', ')}` : '');
    } catch (err) {
      $('profile-status').textContent = '';
      setError('profiling-error', err);
    } finally {
      button.disabled = false;
    }
  }

  function renderProfile(body) {
    const total = body.total || 1;
    setRows('profile-table', body.top.map((f) => row([cell(f.function, 'function'), fmtValue(f.flat, body.unit),
      (100 * f.flat / total).toFixed(1) + ' %', fmtValue(f.cum, body.unit), (100 * f.cum / total).toFixed(1) + ' %'])));
    app.flame = { root: body.flame, unit: body.unit };  // redrawn when the window is resized
    drawFlame($('flame'), body.flame, body.unit);
    if (app.profileUrl) URL.revokeObjectURL(app.profileUrl);
    const bytes = Uint8Array.from(atob(body.pprof_gz), (c) => c.charCodeAt(0));
    app.profileUrl = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
    const link = $('profile-download');
    link.href = app.profileUrl;
    link.classList.remove('hidden');
  }

  /** An icicle flame graph: the root on top, each child's width its share of the samples. */
  function drawFlame(svg, root, unit) {
    const width = Math.max(300, svg.clientWidth || 800);
    const rowH = 16;
    const rects = [];
    let depth = 0, nodes = 0;
    const walk = (node, x, w, level) => {
      if (w < 0.5) return;
      depth = Math.max(depth, level + 1);
      nodes++;
      const g = svgEl('g');
      const hue = 20 + (hash(node.n) % 40);
      g.appendChild(svgEl('rect', { x: x.toFixed(1), y: level * rowH, width: w.toFixed(1), height: rowH - 1,
        fill: `hsl(${hue}, 85%, ${60 + (hash(node.n) % 15)}%)` }));
      g.appendChild(svgEl('title', {}, `${node.n}\n${fmtValue(node.v, unit)} (${(100 * node.v / root.v).toFixed(1)} %)`));
      if (w > 40) {
        const chars = Math.floor((w - 6) / 6);
        g.appendChild(svgEl('text', { x: (x + 3).toFixed(1), y: level * rowH + 12 },
          node.n.length > chars ? node.n.slice(0, Math.max(1, chars - 1)) + '…' : node.n));
      }
      rects.push(g);
      let cx = x;
      for (const child of node.c) {
        const cw = w * child.v / node.v;
        walk(child, cx, cw, level + 1);
        cx += cw;
      }
    };
    if (root && root.v > 0) walk(root, 0, width, 0);
    svg.setAttribute('viewBox', `0 0 ${width} ${depth * rowH}`);
    svg.setAttribute('preserveAspectRatio', 'xMinYMin meet');
    svg.style.height = `${depth * rowH}px`;
    svg.replaceChildren(...rects);
    svg.setAttribute('data-nodes', String(nodes));
  }

  function hash(text) {
    let h = 0;
    for (let i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) >>> 0;
    return h;
  }

  // -- control -----------------------------------------------------------------------------------------
  async function loadControl() {
    setError('control-error', null);
    try {
      renderControl(await api('/control'));
    } catch (err) {
      setRows('control-table', []);
      setError('control-error', err.status === 401 ? new Error(`${err.message} (needs the admin token)`) : err);
    }
  }

  function renderControl(settings) {
    if (settings.metrics_path) app.metricsPath = settings.metrics_path;
    setRows('control-table', Object.entries(settings).map(([name, value]) => {
      const input = document.createElement('input');
      input.id = 'control-' + name;
      if (typeof value === 'boolean') { input.type = 'checkbox'; input.checked = value; }
      else { input.type = typeof value === 'number' ? 'number' : 'text'; input.value = String(value); input.size = 12; }
      const apply = document.createElement('button');
      apply.type = 'button';
      apply.textContent = 'Apply';
      apply.addEventListener('click', () => changeControl(name, input, typeof value));
      const change = document.createElement('td');
      change.append(input, ' ', apply);
      return row([name, cell(String(value), 'value'), change], { 'data-setting': name });
    }));
  }

  async function changeControl(name, input, kind) {
    setError('control-error', null);
    const value = kind === 'boolean' ? input.checked : kind === 'number' ? Number(input.value) : input.value;
    try {
      renderControl(await api('/control', { method: 'POST', body: { [name]: value } }));
    } catch (err) {
      setError('control-error', err);
    }
  }

  // -- auth and the refresh loop -------------------------------------------------------------------------
  function setStatus(text, bad) {
    const el = $('status');
    el.textContent = text;
    el.classList.toggle('bad', Boolean(bad));
  }

  function clearData() {
    resetLive();
    resetLogs();
    app.lastWorkload = null;
    app.history = null;
    for (const id of ['workers-table', 'folded-table', 'optimization-table', 'events-table', 'top-table',
      'profile-table', 'control-table']) setRows(id, []);
    for (const id of ['total-requests', 'rate', 'error-rate', 'p50', 'p95', 'p99']) $(id).textContent = '–';
    for (const id of ['chart-rate', 'chart-latency', 'chart-gc']) { $(id).replaceChildren(); $(id).setAttribute('data-points', '0'); }
    for (const id of ['optimize-result', 'profile-status', 'logs-dropped']) $(id).textContent = '';
    app.flame = null;
    $('flame').replaceChildren();
    $('flame').style.height = '0px';
    $('flame').setAttribute('data-nodes', '0');
    if (app.profileUrl) URL.revokeObjectURL(app.profileUrl);
    app.profileUrl = '';
    $('profile-download').removeAttribute('href');
    $('profile-download').classList.add('hidden');
  }

  function refused(err) {
    app.authorized = false;
    clearData();
    setStatus(app.token ? `${err.message}: the token was refused` : `${err.message}: enter the token`, true);
    $('token').focus();
  }

  async function refreshFast() {
    const withWorkers = app.tick % WORKERS_EVERY === 0;
    const [metrics, workload, workers] = await Promise.all([
      api(app.metricsPath + '?format=json'), api(`/workload?window=${WINDOW_SECONDS}`),
      withWorkers ? api('/workers') : null]);
    $('total-requests').textContent = String(metrics.counters['http.requests'] ?? 0);
    recordWorkload(workload);
    if (workers) renderWorkers(workers);
  }

  async function refreshSlow() {
    const results = await Promise.allSettled([refreshLogs(), api('/optimize/stats').then(renderOptimization)]);
    setError('logs-error', results[0].status === 'rejected' ? results[0].reason : null);
    setError('optimization-error', results[1].status === 'rejected' ? results[1].reason : null);
  }

  async function tick() {
    app.timer = 0;
    try {
      await refreshFast();
      if (app.tick % SLOW_EVERY === 0) await refreshSlow();
      if ($('range').value !== 'live' && (app.tick % HISTORY_EVERY === 0 || !app.history || app.history.range !== $('range').value)) {
        try { await loadHistory(); setError('traffic-error', null); } catch (err) { setError('traffic-error', err); }
      }
      renderTraffic();
      if (!app.authorized) { app.authorized = true; if (app.token) loadControl(); }
      setStatus(`live: refreshed ${fmtClock(Date.now() / 1000)}`);
      app.tick++;
      app.refreshes++;
      $('status').dataset.refreshes = String(app.refreshes);  // completed refreshes, for the tests
    } catch (err) {
      if (err.status === 401 || err.status === 403) { refused(err); return; }  // wait for a token
      setStatus(`error: ${err.message}`, true);
    }
    schedule();
  }

  function schedule() {
    if (!app.timer) app.timer = setTimeout(tick, REFRESH_MS);
  }

  function restart() {
    if (app.timer) { clearTimeout(app.timer); app.timer = 0; }
    app.authorized = null;
    app.tick = 0;
    clearData();
    setStatus('loading…');
    tick();
  }

  function saveToken(event) {
    event.preventDefault();
    app.token = $('token').value.trim();
    $('token').value = '';
    if (app.token) sessionStorage.setItem(TOKEN_KEY, app.token); else sessionStorage.removeItem(TOKEN_KEY);
    restart();
  }

  function forgetToken() {
    app.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    restart();
  }

  function init() {
    $('token-form').addEventListener('submit', saveToken);
    $('token-forget').addEventListener('click', forgetToken);
    $('optimize-now').addEventListener('click', optimizeNow);
    $('profile-start').addEventListener('click', profile);
    $('control-load').addEventListener('click', loadControl);
    $('log-level').addEventListener('change', () => { resetLogs(); refreshLogs().catch((err) => setError('logs-error', err)); });
    for (const id of ['range', 'dimension', 'quantile']) {
      $(id).addEventListener('change', () => { app.history = null; if (app.authorized) { clearTimeout(app.timer); app.timer = 0; tick(); } });
    }
    window.addEventListener('resize', () => {
      renderTraffic();
      if (app.flame) drawFlame($('flame'), app.flame.root, app.flame.unit);
    });
    restart();
  }

  document.addEventListener('DOMContentLoaded', init);
})();
