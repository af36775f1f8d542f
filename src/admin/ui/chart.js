// Time-series charts drawn as SVG: a line with a soft area under it over a fixed time window,
// right-aligned at "now" so the x axis always means the same span. Created once, updated in
// place every sample (no re-creation, so nothing flickers and focus is never lost).

import { h } from './dom.js';

const SVG = 'svg:';

/**
 * createChart({ width, height, window: seconds, floor: smallest y range, format: v => text,
 *               label: 'Requests per second', kind: 'rps'|'err'|'lat', grid: bool })
 * returns { el, update(points, now) } where points are [{ t: seconds, v }].
 */
export function createChart(opts) {
  const { width = 96, height = 24, kind = 'rps', grid = false } = opts;
  const pad = grid ? 14 : 2;
  const area = h(`${SVG}path`, { class: 'chart-area' });
  const line = h(`${SVG}path`, { class: 'chart-line' });
  const dot = h(`${SVG}circle`, { class: 'chart-dot', r: grid ? 2.5 : 1.8, cx: -10, cy: -10 });
  const title = h(`${SVG}title`);
  const children = [title];
  let maxLabel = null;
  if (grid) {
    maxLabel = h(`${SVG}text`, { class: 'chart-label', x: 0, y: 9 });
    children.push(
      h(`${SVG}line`, { class: 'chart-grid', x1: 0, x2: width, y1: pad, y2: pad }),
      h(`${SVG}line`, { class: 'chart-base', x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 }),
      maxLabel,
    );
  } else {
    children.push(h(`${SVG}line`, { class: 'chart-base', x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5 }));
  }
  children.push(area, line, dot);
  const el = h(`${SVG}svg`, {
    class: `chart chart-${kind}`,
    viewBox: `0 0 ${width} ${height}`,
    width,
    height,
    role: 'img',
    preserveAspectRatio: 'none',
  }, children);

  function update(points, now, window) {
    const win = window || opts.window || 300;
    const visible = points.filter((p) => now - p.t <= win && Number.isFinite(p.v));
    const peak = visible.reduce((m, p) => Math.max(m, p.v), 0);
    const top = Math.max(opts.floor || 1, peak * 1.15);
    const x = (t) => width - ((now - t) / win) * width;
    const y = (v) => height - 1 - (Math.min(v, top) / top) * (height - 1 - pad);
    // A gap of more than 3 samples (a lost stream) breaks the line instead of drawing a ramp.
    const runs = [];
    let run = [];
    for (let i = 0; i < visible.length; i++) {
      if (i && visible[i].t - visible[i - 1].t > 3.5) { runs.push(run); run = []; }
      run.push(visible[i]);
    }
    if (run.length) runs.push(run);
    let dLine = '';
    let dArea = '';
    for (const r of runs) {
      const pts = r.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
      dLine += `M${pts.join('L')}`;
      if (r.length > 1) {
        dArea += `M${x(r[0].t).toFixed(1)},${height}L${pts.join('L')}L${x(r[r.length - 1].t).toFixed(1)},${height}Z`;
      }
    }
    line.setAttribute('d', dLine || 'M0,0');
    area.setAttribute('d', dArea || 'M0,0');
    const last = visible[visible.length - 1];
    dot.style.visibility = last ? 'visible' : 'hidden';
    if (last) {
      dot.setAttribute('cx', x(last.t).toFixed(1));
      dot.setAttribute('cy', y(last.v).toFixed(1));
    }
    const fmt = opts.format || String;
    if (maxLabel) maxLabel.textContent = `${fmt(top)}`;
    const span = win < 90 ? `${Math.round(win)} seconds` : `${Math.round(win / 60)} minutes`;
    const text = `${opts.label || 'value'}, last ${span}: now ${last ? fmt(last.v) : 'no data'}, peak ${fmt(peak)}`;
    title.textContent = text;
    el.setAttribute('aria-label', text);
  }

  return { el, update };
}
