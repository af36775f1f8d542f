// Number and time formatting shared by the views.

export function rate(perSecond) {
  if (!Number.isFinite(perSecond)) return '—';
  if (perSecond === 0) return '0';
  if (perSecond < 10) return perSecond.toFixed(1);
  if (perSecond < 10000) return Math.round(perSecond).toLocaleString();
  return `${(perSecond / 1000).toFixed(1)}k`;
}

export function percent(fraction) {
  if (!Number.isFinite(fraction)) return '—';
  const p = fraction * 100;
  if (p === 0) return '0%';
  if (p < 0.1) return '<0.1%';
  if (p < 10) return `${p.toFixed(1)}%`;
  return `${Math.round(p)}%`;
}

export function ms(value) {
  if (!Number.isFinite(value) || value <= 0) return '—';
  if (value < 1) return `${(value * 1000).toFixed(0)} µs`;
  if (value < 100) return `${value.toFixed(1)} ms`;
  if (value < 10000) return `${Math.round(value)} ms`;
  return `${(value / 1000).toFixed(1)} s`;
}

export function count(n) {
  return Number.isFinite(n) ? n.toLocaleString() : '—';
}

export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** Unix seconds → "14:03:07" today, otherwise "Mar 4, 14:03". */
export function clock(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })}, ${time}`;
}

/** Unix seconds → "12s ago". */
export function ago(unixSeconds) {
  const s = Date.now() / 1000 - unixSeconds;
  if (s < 5) return 'just now';
  return `${duration(s)} ago`;
}

export function iso(unixSeconds) {
  return new Date(unixSeconds * 1000).toISOString();
}
