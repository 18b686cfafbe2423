'use strict';
// nodepulse view: draws the data embedded in the page (gzip + base64 JSON, see
// agent/src/view/data.rs for its shape) on hand-made canvases. Only cards on screen
// are drawn; a time brush or filter change redraws those and marks the rest stale.
(function () {
  const errorsEl = document.getElementById('errors');
  const fail = (msg) => { errorsEl.textContent += msg + '\n'; };
  window.addEventListener('error', (e) => fail('error: ' + e.message));
  window.addEventListener('unhandledrejection', (e) => fail('error: ' + ((e.reason && e.reason.stack) || e.reason)));

  const M = 56; // left margin of every plot (axis labels), CSS px
  const QUANTILES = [['p50', '#0b57d0'], ['p99', '#00856a'], ['p999', '#111111']];
  const QNAMES = { p50: 'p50', p99: 'p99', p999: 'p99.9' };
  let V = null; // the view
  let range = [0, 0]; // columns shown, [c0, c1)
  const filter = { families: new Set(), terms: [], alarmedOnly: false };
  let cards = [];
  const stale = new Set();
  let observer = null;

  // Colour ramp for shares (the square root spreads the small ones).
  const LUT = (() => {
    const stops = [[255, 244, 196], [253, 186, 84], [238, 98, 46], [166, 28, 82], [52, 8, 74]];
    const lut = new Uint8ClampedArray(256 * 3);
    for (let v = 1; v < 256; v++) {
      const t = Math.sqrt(v / 255) * (stops.length - 1);
      const i = Math.min(Math.floor(t), stops.length - 2), f = t - i;
      for (let k = 0; k < 3; k++) lut[v * 3 + k] = stops[i][k] + (stops[i + 1][k] - stops[i][k]) * f;
    }
    return lut;
  })();

  function num(x) {
    const a = Math.abs(x);
    return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : x.toFixed(2);
  }
  function fmt(v, unit) {
    if (v == null || !isFinite(v)) return '–';
    const scales = unit === 'ns' ? [[1e9, 's'], [1e6, 'ms'], [1e3, 'µs'], [1, 'ns']]
      : unit === 'By' ? [[2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB'], [1, 'B']] : [[1, '']];
    for (const [d, s] of scales) if (v >= d || d === 1) return num(v / d) + s;
    return String(v);
  }
  const iso = (ms) => new Date(Math.round(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v; else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  };
  const seriesName = (s) => s.family + '{' + Object.entries(s.labels).map(([k, v]) => k + '=' + v).join(',') + '}';

  async function decode(text) {
    const bin = atob(text.trim());
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return JSON.parse(await new Response(stream).text());
  }

  // Fractional column of a time (ms): columns start at V.times[c].
  function colOf(ms) {
    const t = V.times, n = t.length;
    if (n === 0) return 0;
    if (ms <= t[0]) return 0;
    if (ms >= V.end) return n;
    let lo = 0, hi = n - 1;
    while (lo < hi) { const mid = (lo + hi + 1) >> 1; if (t[mid] <= ms) lo = mid; else hi = mid - 1; }
    const next = lo + 1 < n ? t[lo + 1] : V.end;
    return lo + (ms - t[lo]) / Math.max(1, next - t[lo]);
  }
  const timeOfCol = (c) => (c >= V.times.length ? V.end : V.times[Math.max(0, Math.floor(c))]);

  function sizeCanvas(cv) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(cv.clientWidth * dpr)), h = Math.max(1, Math.round(cv.clientHeight * dpr));
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
    const ctx = cv.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return [ctx, cv.clientWidth, cv.clientHeight];
  }

  const off = document.createElement('canvas');
  function drawHeat(card) {
    const s = V.series[card.idx];
    const [ctx, w, h] = sizeCanvas(card.heat);
    ctx.clearRect(0, 0, w, h);
    const [c0, c1] = range, n = c1 - c0, pw = w - M, rows = s.rows;
    ctx.fillStyle = '#fff';
    ctx.fillRect(M, 0, pw, h);
    let cells = 0;
    if (rows > 0 && n > 0) {
      const img = new ImageData(n, rows);
      const d = img.data, heat = s.heat;
      for (let c = c0; c < c1; c++) {
        const base = c * rows;
        for (let r = 0; r < rows; r++) {
          const v = heat[base + r];
          if (!v) continue;
          cells++;
          const p = ((rows - 1 - r) * n + (c - c0)) * 4;
          d[p] = LUT[v * 3]; d[p + 1] = LUT[v * 3 + 1]; d[p + 2] = LUT[v * 3 + 2]; d[p + 3] = 255;
        }
      }
      off.width = n; off.height = rows;
      off.getContext('2d').putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, 0, 0, n, rows, M, 0, pw, h);
    }
    card.el.dataset.cells = String(cells);
    const per = 2 ** V.heat_scale;
    const yOf = (v) => {
      if (rows === 0) return h / 2;
      const pos = v > 0 ? Math.log2(v) * per - s.lo : 0;
      return Math.min(h, Math.max(0, h - (pos / rows) * h));
    };
    // Axis: powers of ten (powers of four for bytes) inside the rows' range.
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#556';
    ctx.strokeStyle = 'rgba(0,0,0,.12)';
    ctx.textBaseline = 'middle';
    if (rows > 0) {
      const step = s.unit === 'By' ? 4 : 10;
      const lo = 2 ** (s.lo / per), hi = 2 ** ((s.lo + rows) / per);
      let ticks = [];
      for (let v = 1; v <= hi; v *= step) if (v >= lo) ticks.push(v);
      if (ticks.length > 6) ticks = ticks.filter((_, i) => i % 2 === 0);
      for (const v of ticks) {
        const y = yOf(v);
        ctx.fillText(fmt(v, s.unit), 2, Math.min(h - 6, Math.max(6, y)));
        ctx.beginPath(); ctx.moveTo(M, y); ctx.lineTo(w, y); ctx.stroke();
      }
    }
    for (const [q, colour] of QUANTILES) {
      const arr = s[q];
      ctx.strokeStyle = colour;
      ctx.lineWidth = q === 'p999' ? 1 : 1.5;
      ctx.setLineDash(q === 'p999' ? [3, 2] : []);
      ctx.beginPath();
      let pen = false;
      for (let c = c0; c < c1; c++) {
        const v = arr[c];
        if (v == null) { pen = false; continue; }
        const x = M + ((c - c0 + 0.5) / n) * pw, y = yOf(v);
        if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
        pen = true;
      }
      ctx.stroke();
    }
    ctx.setLineDash([]);
    ctx.lineWidth = 1;
  }

  function drawRate(card) {
    const s = V.series[card.idx];
    const [ctx, w, h] = sizeCanvas(card.rate);
    ctx.clearRect(0, 0, w, h);
    const [c0, c1] = range, n = c1 - c0, pw = w - M;
    let max = 0;
    for (let c = c0; c < c1; c++) max = Math.max(max, s.rate[c]);
    ctx.fillStyle = '#556';
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'top';
    ctx.fillText(num(max) + '/s', 2, 2);
    if (max <= 0) return;
    ctx.fillStyle = '#5b6f86';
    const bw = pw / n;
    for (let c = c0; c < c1; c++) {
      const bh = (s.rate[c] / max) * (h - 2);
      if (bh > 0) ctx.fillRect(M + (c - c0) * bw, h - bh, Math.max(bw, 1), bh);
    }
  }

  // Alarm spans as elements over the plot (readable in the DOM, clickable).
  function placeSpans(card) {
    const [c0, c1] = range, n = c1 - c0;
    for (const sp of card.spans) {
      const a = sp.alarm;
      const from = Math.max(c0, colOf(a.start)), to = Math.min(c1, colOf(a.end == null ? V.end : a.end));
      if (to <= from) { sp.el.classList.add('hidden'); continue; }
      sp.el.classList.remove('hidden');
      const f = (from - c0) / n, g = (to - from) / n;
      sp.el.style.left = `calc(${M}px + (100% - ${M}px) * ${f})`;
      sp.el.style.width = `calc((100% - ${M}px) * ${g})`;
      sp.el.dataset.left = f.toFixed(4);
      sp.el.dataset.width = g.toFixed(4);
    }
  }

  function draw(card) {
    stale.delete(card);
    drawHeat(card);
    drawRate(card);
    placeSpans(card);
    card.el.dataset.drawn = 'true';
  }

  const tip = el('div', { id: 'tip' });
  function showTip(card, ev) {
    const s = V.series[card.idx];
    const rect = card.heat.getBoundingClientRect();
    const x = ev.clientX - rect.left - M, y = ev.clientY - rect.top;
    const [c0, c1] = range, pw = rect.width - M;
    if (x < 0) { tip.style.display = 'none'; return; }
    const c = Math.min(c1 - 1, c0 + Math.floor((x / pw) * (c1 - c0)));
    const lines = [iso(timeOfCol(c)) + ' (' + num((V.per_column * V.interval_s)) + ' s)'];
    if (s.rows > 0 && card.heat.contains(ev.target)) {
      const r = Math.floor(((rect.height - y) / rect.height) * s.rows);
      const per = 2 ** V.heat_scale, i = s.lo + r;
      const share = s.heat[c * s.rows + r] || 0;
      lines.push(`${fmt(2 ** (i / per), s.unit)} – ${fmt(2 ** ((i + 1) / per), s.unit)}: ` +
        (share ? '≤' + num((share / 255) * 100) + ' % of samples' : 'none'));
    }
    lines.push(QUANTILES.map(([q]) => QNAMES[q] + ' ' + fmt(s[q][c], s.unit)).join('  '));
    lines.push('rate ' + num(s.rate[c]) + '/s');
    tip.textContent = lines.join('\n');
    tip.style.display = 'block';
    tip.style.left = Math.min(window.innerWidth - 260, ev.clientX + 12) + 'px';
    tip.style.top = ev.clientY + 14 + 'px';
  }

  function alarmDetails(a) {
    // The quantiles the detector judged (the rules' own, e.g. p50 and p90).
    const qs = ['p50', 'p90', 'p99', 'p99.9'].filter((q) => q in a.baseline || q in a.current);
    const table = el('table', {},
      el('tr', {}, el('th', {}, ''), ...qs.map((q) => el('th', {}, q))),
      el('tr', {}, el('td', {}, 'baseline'), ...qs.map((q) => el('td', {}, fmt(a.baseline[q], 'ns')))),
      el('tr', {}, el('td', {}, 'current (worst)'), ...qs.map((q) => el('td', {}, fmt(a.current[q], 'ns')))));
    const box = el('div', { class: 'alarm ' + a.severity, id: 'alarm-' + a.id, 'data-alarm': a.id },
      el('div', {}, el('b', {}, a.severity.toUpperCase() + ' ' + a.state), ' ', a.summary),
      el('div', { class: 'meta' }, `${iso(a.start)} → ${a.end == null ? 'still open at the end' : iso(a.end)}` +
        `, peak ${num(a.peak_factor)}× on ${a.quantile}, id ${a.id}`),
      table);
    if (a.actions.length) {
      box.append(el('table', {},
        el('tr', {}, ...['time', 'rule', 'kind', 'target', 'outcome', 'ms', 'detail'].map((t) => el('th', {}, t))),
        ...a.actions.map((r) => el('tr', { class: 'action' },
          el('td', {}, r.time), el('td', {}, r.rule), el('td', {}, r.kind), el('td', {}, r.target),
          el('td', { class: 'outcome-' + r.outcome }, r.outcome), el('td', {}, num(r.duration_ms)),
          el('td', {}, r.error || (r.exit_code != null ? 'exit ' + r.exit_code : r.http_status != null ? 'HTTP ' + r.http_status : ''))))));
    } else {
      box.append(el('div', { class: 'meta' }, 'no actions ran for it'));
    }
    return box;
  }

  function buildCard(idx) {
    const s = V.series[idx];
    const name = seriesName(s);
    const heat = el('canvas', { class: 'heat' }), rate = el('canvas', { class: 'rate' });
    const plot = el('div', { class: 'plot' }, heat, rate);
    const alarms = V.alarms.filter((a) => a.index === idx);
    const card = { idx, name, heat, rate, spans: [], alarms, el: null };
    for (const a of alarms) {
      const sp = el('div', { class: 'span ' + a.severity, 'data-alarm': a.id, 'data-start': iso(a.start),
        'data-end': a.end == null ? '' : iso(a.end), title: a.summary,
        onclick: () => document.getElementById('alarm-' + a.id).scrollIntoView({ block: 'center' }) });
      plot.append(sp);
      card.spans.push({ alarm: a, el: sp });
    }
    card.el = el('section', { class: 'card', id: 's-' + idx, 'data-series': name, 'data-family': s.family },
      el('h3', {}, name, el('span', { class: 'n' }, `  ${s.count.toLocaleString('en')} samples, ${s.unit}`)),
      plot, ...alarms.map(alarmDetails));
    for (const cv of [heat, rate]) {
      cv.addEventListener('mousemove', (ev) => showTip(card, ev));
      cv.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
    }
    card.el._card = card;
    return card;
  }

  function visible(card) {
    const s = V.series[card.idx];
    if (!filter.families.has(s.family)) return false;
    if (filter.alarmedOnly && card.alarms.length === 0) return false;
    const name = card.name.toLowerCase();
    return filter.terms.every((t) => name.includes(t));
  }

  function applyFilter() {
    let shown = 0;
    for (const card of cards) {
      const v = visible(card);
      card.el.classList.toggle('hidden', !v);
      if (v) shown++;
    }
    for (const sec of document.querySelectorAll('.family')) {
      sec.classList.toggle('hidden', !sec.querySelector('.card:not(.hidden)'));
    }
    document.getElementById('shown').textContent = `${shown} of ${cards.length} series shown`;
    document.body.dataset.shown = String(shown);
    drawOverview();
    redrawOnScreen();
  }

  function redrawOnScreen() {
    for (const card of cards) stale.add(card);
    for (const card of cards) {
      if (card.el.classList.contains('hidden')) continue;
      const r = card.el.getBoundingClientRect();
      if (r.bottom > -200 && r.top < window.innerHeight + 200) draw(card);
    }
  }

  // The overview: summed rate of the shown series over the whole recording, alarms,
  // and the brushed range.
  let brushing = null;
  function drawOverview() {
    const cv = document.getElementById('overview');
    const [ctx, w, h] = sizeCanvas(cv);
    ctx.clearRect(0, 0, w, h);
    const n = V.times.length;
    if (n === 0) return;
    const total = new Float64Array(n);
    for (const card of cards) {
      if (card.el.classList.contains('hidden')) continue;
      const r = V.series[card.idx].rate;
      for (let c = 0; c < n; c++) total[c] += r[c];
    }
    let max = 0;
    for (const t of total) max = Math.max(max, t);
    const x = (c) => M + (c / n) * (w - M);
    for (const a of V.alarms) {
      ctx.fillStyle = getComputedStyle(document.documentElement).getPropertyValue('--' + a.severity) || 'rgba(220,20,40,.3)';
      const from = colOf(a.start), to = colOf(a.end == null ? V.end : a.end);
      ctx.fillRect(x(from), 0, Math.max(2, x(to) - x(from)), h);
    }
    ctx.fillStyle = '#5b6f86';
    for (let c = 0; c < n && max > 0; c++) {
      const bh = (total[c] / max) * (h - 14);
      ctx.fillRect(x(c), h - 14 - bh, Math.max(1, x(c + 1) - x(c)), bh);
    }
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#556';
    ctx.textBaseline = 'bottom';
    ctx.fillText(iso(V.times[0]), M, h);
    const endText = iso(V.end);
    ctx.fillText(endText, w - ctx.measureText(endText).width - 2, h);
    ctx.textBaseline = 'top';
    ctx.fillText('events/s', 2, 2);
    ctx.fillText(num(max), 2, 16);
    const [c0, c1] = brushing || range;
    if (c0 > 0 || c1 < n || brushing) {
      ctx.fillStyle = 'rgba(11,87,208,.15)';
      ctx.fillRect(x(c0), 0, x(c1) - x(c0), h - 14);
      ctx.strokeStyle = '#0b57d0';
      ctx.strokeRect(x(c0), 0, x(c1) - x(c0), h - 14);
    }
  }

  function setRange(c0, c1) {
    const n = V.times.length;
    range = [Math.max(0, c0), Math.min(n, Math.max(c1, c0 + 1))];
    document.getElementById('range').textContent = `${iso(timeOfCol(range[0]))} – ${iso(timeOfCol(range[1]))}` +
      (range[0] > 0 || range[1] < n ? ' (brushed; double-click the overview to reset)' : '');
    document.body.dataset.range = range.join(',');
    drawOverview();
    redrawOnScreen();
  }

  function brushEvents(cv) {
    const colAt = (ev) => {
      const r = cv.getBoundingClientRect();
      return Math.max(0, Math.min(V.times.length, ((ev.clientX - r.left - M) / (r.width - M)) * V.times.length));
    };
    let start = null;
    cv.addEventListener('mousedown', (ev) => { start = colAt(ev); brushing = [start, start]; ev.preventDefault(); });
    window.addEventListener('mousemove', (ev) => {
      if (start == null) return;
      const c = colAt(ev);
      brushing = [Math.floor(Math.min(start, c)), Math.ceil(Math.max(start, c))];
      drawOverview();
    });
    window.addEventListener('mouseup', () => {
      if (start == null) return;
      const [a, b] = brushing;
      start = null; brushing = null;
      if (b - a >= 2) setRange(a, b); else drawOverview();
    });
    cv.addEventListener('dblclick', () => setRange(0, V.times.length));
  }

  // Capacity (view/capacity.rs): each resource worst first, as `nodepulse capacity`
  // prints it, with the knee's evidence and the forecast drawn over what it was fitted to.
  const capDraws = [];
  function plotFrame(ctx, w, h, xl, yl) {
    ctx.font = '11px system-ui, sans-serif';
    ctx.fillStyle = '#556';
    ctx.strokeStyle = 'rgba(0,0,0,.25)';
    ctx.strokeRect(M, 4, w - M - 4, h - 22);
    ctx.textBaseline = 'bottom';
    ctx.fillText(xl, M, h);
    ctx.textBaseline = 'top';
    ctx.fillText(yl, 2, 4);
  }
  function dashed(ctx, colour, x0, y0, x1, y1) {
    ctx.save(); ctx.setLineDash([4, 3]); ctx.strokeStyle = colour;
    ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke(); ctx.restore();
  }
  // p99 against load, both on log scales: the learned bins, the unloaded p99 and the
  // limit that defines the knee, the knee and the load now.
  function drawKnee(cv, r, C) {
    const [ctx, w, h] = sizeCanvas(cv);
    ctx.clearRect(0, 0, w, h);
    const hr = r.headroom, pts = hr.curve;
    const loads = pts.map((p) => p.load).concat([hr.load_iops, hr.knee_iops].filter((v) => v > 0));
    const lat = pts.map((p) => p.p99_ns).concat([hr.knee_p99_ns].filter((v) => v > 0));
    const lx = [Math.log10(Math.min(...loads)) - 0.1, Math.log10(Math.max(...loads)) + 0.1];
    const ly = [Math.log10(Math.min(...lat)) - 0.1, Math.log10(Math.max(...lat)) + 0.1];
    const x = (v) => M + ((Math.log10(Math.max(v, 1e-9)) - lx[0]) / (lx[1] - lx[0])) * (w - M - 4);
    const y = (v) => 4 + (1 - (Math.log10(Math.max(v, 1e-9)) - ly[0]) / (ly[1] - ly[0])) * (h - 22);
    plotFrame(ctx, w, h, `IO/s ${num(10 ** lx[0])}–${num(10 ** lx[1])} (log)`, 'p99 (log)');
    ctx.fillText(fmt(10 ** ly[1], 'ns'), 2, 18);
    ctx.textBaseline = 'bottom';
    ctx.fillText(fmt(10 ** ly[0], 'ns'), 2, h - 18);
    if (hr.unloaded_p99_ns) dashed(ctx, '#0b57d0', M, y(hr.unloaded_p99_ns), w - 4, y(hr.unloaded_p99_ns));
    if (hr.knee_p99_ns) dashed(ctx, '#d0142a', M, y(hr.knee_p99_ns), w - 4, y(hr.knee_p99_ns));
    if (hr.knee_iops) dashed(ctx, '#d0142a', x(hr.knee_iops), 4, x(hr.knee_iops), h - 18);
    if (hr.load_iops > 0) dashed(ctx, '#00856a', x(hr.load_iops), 4, x(hr.load_iops), h - 18);
    ctx.strokeStyle = '#1d232b'; ctx.fillStyle = '#1d232b';
    ctx.beginPath();
    pts.forEach((p, i) => (i ? ctx.lineTo(x(p.load), y(p.p99_ns)) : ctx.moveTo(x(p.load), y(p.p99_ns))));
    ctx.stroke();
    for (const p of pts) { ctx.beginPath(); ctx.arc(x(p.load), y(p.p99_ns), 2.5, 0, 7); ctx.fill(); }
  }
  // The forecast signal's 10-minute means over the recording, the saturation level,
  // and ahead of the end: the trend to the predicted time with its interval; grey dots
  // are each refit's predicted time.
  function drawTrend(cv, r, C) {
    const [ctx, w, h] = sizeCanvas(cv);
    ctx.clearRect(0, 0, w, h);
    const f = r.forecast, sat = f.state === 'saturating' && f.upper_h !== 0;
    const ahead = sat ? Math.max(0.5, (f.upper_h == null ? 2 * f.hours : f.upper_h) * 1.15) : 0;
    const x1 = Math.max(C.hours, ...r.trend.map((p) => p[0])) + ahead;
    const ymax = Math.max(1, ...r.trend.map((p) => p[1]));
    const x = (v) => M + (Math.min(Math.max(v, 0), x1) / Math.max(x1, 1e-9)) * (w - M - 4);
    const y = (v) => 4 + (1 - v / ymax) * (h - 22);
    plotFrame(ctx, w, h, `hours from the start (0–${num(x1)}${C.stretch > 1 ? ', stretched' : ''}); end of data at ${num(C.hours)}`,
      r.trend_signal || '');
    ctx.fillText(num(ymax), 2, 18);
    ctx.textBaseline = 'bottom';
    ctx.fillText('0', 2, h - 18);
    dashed(ctx, '#d0142a', M, y(C.saturation), w - 4, y(C.saturation));
    dashed(ctx, '#888', x(C.hours), 4, x(C.hours), h - 18);
    ctx.strokeStyle = '#0b57d0'; ctx.lineWidth = 1.5;
    ctx.beginPath();
    r.trend.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[1])) : ctx.moveTo(x(p[0]), y(p[1]))));
    ctx.stroke(); ctx.lineWidth = 1;
    ctx.fillStyle = 'rgba(100,100,110,.6)';
    for (const [at, point] of r.refits) {
      if (point != null && at + point <= x1) { ctx.beginPath(); ctx.arc(x(at + point), y(C.saturation) - 6, 2, 0, 7); ctx.fill(); }
    }
    if (sat) {
      const end = C.hours, last = r.trend[r.trend.length - 1];
      ctx.fillStyle = 'rgba(208,20,42,.18)';
      const lo = x(end + (f.lower_h || 0)), hi = f.upper_h == null ? w - 4 : x(end + f.upper_h);
      ctx.fillRect(lo, y(C.saturation) - 5, Math.max(2, hi - lo), 10);
      if (last) dashed(ctx, '#d0142a', x(last[0]), y(last[1]), x(end + f.hours), y(C.saturation));
      ctx.fillStyle = '#d0142a';
      ctx.beginPath(); ctx.arc(x(end + f.hours), y(C.saturation), 3.5, 0, 7); ctx.fill();
    }
  }
  function capacitySection() {
    const C = V.capacity;
    capDraws.length = 0;
    if (!C) return null;
    const hours = C.stretch > 1 ? `${num(C.hours)} stretched h (each recorded second read as ${C.stretch})` : `${num(C.hours)} h`;
    const sec = el('section', { id: 'capacity' }, el('h2', {}, `Capacity (${C.resources.length} resources, worst first)`),
      el('div', { class: 'meta' }, `Learned over ${hours} of the recording, as nodepulse capacity --from does; ` +
        `saturation at ${C.saturation}, knee where p99 reaches ${C.knee_multiple}× its unloaded value, ` +
        `${C.interval_percent} % intervals. Knee: p99 per load bin (blue: unloaded p99, red: the knee's p99 and load, ` +
        'green: the load now). Trend: 10-minute means (blue), saturation (red), predicted time with its interval.'));
    for (const r of C.resources) {
      const f = r.forecast, hr = r.headroom;
      const attrs = { class: 'cap ' + f.state, 'data-resource': r.resource, 'data-kind': r.kind, 'data-forecast': f.state };
      if (f.state === 'saturating') {
        attrs['data-hours'] = String(f.hours);
        attrs['data-lower'] = f.lower_h == null ? '' : String(f.lower_h);
        attrs['data-upper'] = f.upper_h == null ? 'never' : String(f.upper_h);
      }
      if (hr && hr.headroom != null) { attrs['data-headroom'] = String(hr.headroom); attrs['data-knee'] = String(hr.knee_iops); }
      const plots = el('div', { class: 'cap-plots' });
      if (hr && hr.curve.length > 0) {
        const cv = el('canvas', { class: 'knee', 'data-points': String(hr.curve.length) });
        plots.append(cv);
        capDraws.push(() => drawKnee(cv, r, C));
      }
      if (r.trend.length > 0) {
        const cv = el('canvas', { class: 'trend', 'data-points': String(r.trend.length), 'data-refits': String(r.refits.length) });
        plots.append(cv);
        capDraws.push(() => drawTrend(cv, r, C));
      }
      const bar = hr && hr.headroom != null
        ? el('span', { class: 'bar', title: 'headroom to the knee' }, el('i', { style: `width:${Math.round(hr.headroom * 100)}%` })) : null;
      sec.append(el('div', attrs,
        el('h3', {}, r.resource + ' ', el('span', { class: 'n' }, r.kind)),
        el('div', { class: 'now' }, r.now_text || '–'),
        r.headroom_text == null ? null : el('div', { class: 'headroom' }, el('b', {}, 'headroom '), bar, ' ', r.headroom_text),
        el('div', { class: 'forecast' }, el('b', {}, 'forecast '), r.forecast_text),
        plots.childNodes.length ? plots : null));
    }
    return sec;
  }

  function footer() {
    const f = el('footer', {}, el('h2', {}, 'Probes'));
    if (V.probes.length === 0) {
      f.append(el('p', { class: 'meta' }, 'The recording carries no probe states (a trimmed recording).'));
    } else {
      f.append(el('table', { id: 'probes' },
        el('tr', {}, ...['probe', 'state (last report)', 'attach', 'reports not up', 'errors'].map((t) => el('th', {}, t))),
        ...V.probes.map((p) => el('tr', { 'data-probe': p.probe, 'data-state': p.state },
          el('td', {}, p.probe), el('td', {}, p.state), el('td', {}, p.attach || '–'),
          el('td', {}, String(p.reports_not_up)), el('td', {}, p.errors.join('; '))))));
      const progs = V.probes.flatMap((p) => p.programs.map((g) => [p.probe, g]));
      f.append(el('h2', {}, 'Agent cost in the kernel'), el('table', {},
        el('tr', {}, ...['program', 'events', 'kernel time', 'per event'].map((t) => el('th', {}, t))),
        ...progs.map(([, g]) => el('tr', {}, el('td', {}, g.program), el('td', {}, g.events.toLocaleString('en')),
          el('td', {}, fmt(g.run_time_ns, 'ns')), el('td', {}, g.events ? fmt(g.run_time_ns / g.events, 'ns') : '–')))));
    }
    const a = V.agent;
    f.append(el('h2', {}, 'Agent cost in userspace'), el('p', { id: 'agent-cost' },
      a.cpu_percent_mean == null ? 'The recording carries no agent usage.'
        : `CPU ${num(a.cpu_percent_mean)} % on average (${num(Math.max(...a.cpu_percent.filter((x) => x != null)))} % at most), ` +
          `RSS at most ${fmt(a.rss_bytes_max, 'By')}; dropped events: ` +
          (Object.entries(a.dropped_total).map(([k, v]) => `${k} ${v}`).join(', ') || 'none')));
    return f;
  }

  function build() {
    const app = document.getElementById('app');
    app.textContent = '';
    if (observer) observer.disconnect();
    const families = [...new Set(V.series.map((s) => s.family))];
    if (filter.families.size === 0) families.forEach((f) => filter.families.add(f));
    const famBoxes = families.map((f) => el('label', {},
      el('input', { type: 'checkbox', 'data-family': f, ...(filter.families.has(f) ? { checked: '' } : {}),
        onchange: (ev) => { if (ev.target.checked) filter.families.add(f); else filter.families.delete(f); applyFilter(); } }),
      ' ' + f));
    const search = el('input', { type: 'search', id: 'labels', placeholder: 'filter: words in family{label=value,…}',
      oninput: (ev) => { filter.terms = ev.target.value.toLowerCase().split(/\s+/).filter(Boolean); applyFilter(); } });
    search.value = filter.terms.join(' ');
    const alarmed = el('input', { type: 'checkbox', id: 'alarmed', ...(filter.alarmedOnly ? { checked: '' } : {}),
      onchange: (ev) => { filter.alarmedOnly = ev.target.checked; applyFilter(); } });
    const spanS = V.per_column * V.interval_s;
    const header = el('header', {},
      el('h1', {}, `nodepulse: ${V.node || 'node'}`),
      el('div', { class: 'meta' }, `${V.source}: ${V.reports} reports every ${num(V.interval_s)} s; ` +
        `one column = ${V.per_column} report(s) (${num(spanS)} s). `, el('span', { id: 'range' })),
      el('div', { class: 'controls' }, ...famBoxes, search, el('label', {}, alarmed, ' only series with alarms'),
        el('span', { id: 'shown', class: 'meta' })),
      el('canvas', { id: 'overview' }),
      el('div', { class: 'legend' }, 'colour: share of the column\'s samples in each bucket (log scale);',
        ...QUANTILES.map(([q, c]) => [el('i', { style: 'background:' + c }), QNAMES[q]]).flat(),
        '; bars: events per second; shaded: alarms'));
    const main = el('main', {});
    const alarmList = el('section', { id: 'alarms' }, el('h2', {}, `Alarms (${V.alarms.length}, ` +
      (V.alarm_source === 'replay' ? 'from the detector replayed over the recording)' : 'raised while recording)')));
    for (const a of V.alarms) {
      alarmList.append(el('div', { class: 'alarm ' + a.severity },
        el('a', { href: a.index == null ? '#' : '#s-' + a.index }, a.severity.toUpperCase()), ' ', a.summary));
    }
    main.append(alarmList);
    const cap = capacitySection();
    if (cap) main.append(cap);
    cards = V.series.map((_, i) => buildCard(i));
    for (const f of families) {
      main.append(el('section', { class: 'family', 'data-family': f }, el('h2', {}, f),
        ...cards.filter((c) => V.series[c.idx].family === f).map((c) => c.el)));
    }
    app.append(header, main, footer(), tip);
    for (const d of capDraws) d();
    brushEvents(document.getElementById('overview'));
    observer = new IntersectionObserver((entries) => {
      for (const e of entries) if (e.isIntersecting && stale.has(e.target._card)) draw(e.target._card);
    }, { rootMargin: '200px' });
    for (const c of cards) { stale.add(c); observer.observe(c.el); }
    const n = V.times.length;
    const keep = range[1] > 0 && range[1] <= n && !document.body.dataset.live;
    setRange(keep ? range[0] : 0, keep ? range[1] : n);
    applyFilter();
    document.body.dataset.series = String(V.series.length);
    document.body.dataset.alarms = String(V.alarms.length);
    document.body.dataset.capacity = String(V.capacity ? V.capacity.resources.length : 0);
  }

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (V) { drawOverview(); redrawOnScreen(); capDraws.forEach((d) => d()); } }, 150);
  });

  // A link can carry the view: #family=a,b&labels=words&alarmed=1&from=ISO&to=ISO.
  function fromHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.get('family')) filter.families = new Set(h.get('family').split(','));
    if (h.has('labels')) filter.terms = h.get('labels').toLowerCase().split(/\s+/).filter(Boolean);
    filter.alarmedOnly = h.get('alarmed') === '1';
    const from = Date.parse(h.get('from') || ''), to = Date.parse(h.get('to') || '');
    if (isFinite(from) || isFinite(to)) {
      range = [isFinite(from) ? Math.floor(colOf(from)) : 0, isFinite(to) ? Math.ceil(colOf(to)) : V.times.length];
    }
  }

  async function start() {
    const t0 = performance.now();
    V = await decode(document.getElementById('data').textContent);
    fromHash();
    build();
    document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
    document.body.dataset.ready = 'true';
    const live = document.body.dataset.live;
    if (live) {
      // One retry: the agent closes a kept-alive connection idle for 5 s, and a poll
      // can meet that close on the way.
      const get = async () => {
        const r = await fetch(live, { cache: 'no-store' });
        if (!r.ok) throw new Error(`${live}: HTTP ${r.status}`);
        return r.json();
      };
      setInterval(async () => {
        try {
          V = await get().catch(() => new Promise((ok) => setTimeout(ok, 500)).then(get));
          build();
        } catch (e) { fail('cannot refresh: ' + e.message); }
      }, Math.max(2, V.interval_s || 10) * 1000);
    }
  }
  start();
})();
