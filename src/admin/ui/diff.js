// A line diff (longest common subsequence) of the running configuration and the edited text,
// shown as unified-diff hunks with three lines of context. Configuration files are small; past
// a size where the quadratic table would be slow it falls back to "everything changed".

const LIMIT = 4_000_000; // cells of the LCS table

/** [{ op: ' ' | '-' | '+', text }] */
export function diffLines(a, b) {
  const x = a.split('\n');
  const y = b.split('\n');
  // Common prefix and suffix cost nothing and shrink the table to the edited region.
  let start = 0;
  while (start < x.length && start < y.length && x[start] === y[start]) start++;
  let endX = x.length;
  let endY = y.length;
  while (endX > start && endY > start && x[endX - 1] === y[endY - 1]) { endX--; endY--; }
  const mx = x.slice(start, endX);
  const my = y.slice(start, endY);
  const out = x.slice(0, start).map((text) => ({ op: ' ', text }));
  if ((mx.length + 1) * (my.length + 1) > LIMIT) {
    out.push(...mx.map((text) => ({ op: '-', text })), ...my.map((text) => ({ op: '+', text })));
  } else {
    const n = mx.length;
    const m = my.length;
    const w = m + 1;
    const t = new Uint32Array((n + 1) * w);
    for (let i = n - 1; i >= 0; i--) {
      for (let j = m - 1; j >= 0; j--) {
        t[i * w + j] = mx[i] === my[j] ? t[(i + 1) * w + j + 1] + 1 : Math.max(t[(i + 1) * w + j], t[i * w + j + 1]);
      }
    }
    let i = 0;
    let j = 0;
    while (i < n && j < m) {
      if (mx[i] === my[j]) { out.push({ op: ' ', text: mx[i] }); i++; j++; }
      else if (t[(i + 1) * w + j] >= t[i * w + j + 1]) out.push({ op: '-', text: mx[i++] });
      else out.push({ op: '+', text: my[j++] });
    }
    while (i < n) out.push({ op: '-', text: mx[i++] });
    while (j < m) out.push({ op: '+', text: my[j++] });
  }
  out.push(...x.slice(endX).map((text) => ({ op: ' ', text })));
  return out;
}

/** Keeps changed lines with `context` lines around them; gaps become { op: '@', text: '…' }. */
export function hunks(lines, context = 3) {
  const keep = new Array(lines.length).fill(false);
  lines.forEach((l, i) => {
    if (l.op !== ' ') for (let k = Math.max(0, i - context); k <= Math.min(lines.length - 1, i + context); k++) keep[k] = true;
  });
  const out = [];
  let skipped = false;
  lines.forEach((l, i) => {
    if (keep[i]) {
      if (skipped && out.length) out.push({ op: '@', text: '⋯' });
      skipped = false;
      out.push(l);
    } else {
      skipped = true;
    }
  });
  return out;
}
