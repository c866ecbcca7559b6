/**
 * Small DOM helpers for the views. Text from the kernel is only ever set as textContent,
 * never as HTML: layer names and messages come from user code.
 */

export type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: { [name: string]: string | undefined } = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== undefined) {
      el.setAttribute(name, value);
    }
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) {
      continue;
    }
    el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return el;
}

/** Inline code in a sentence: "run `import gradsight` in this notebook" -> text + <code>. */
export function prose(text: string): DocumentFragment {
  const frag = document.createDocumentFragment();
  text.split('`').forEach((part, i) => {
    if (part) {
      frag.appendChild(i % 2 ? h('code', {}, part) : document.createTextNode(part));
    }
  });
  return frag;
}

export function empty(text: string, cls = ''): HTMLElement {
  return h('div', { class: `jp-gradsight-empty ${cls}`.trim() }, prose(text));
}

/** Compact numbers for tables and ticks: 3 significant digits, exponent outside 1e-3..1e4. */
export function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined || Number.isNaN(x)) {
    return '–';
  }
  if (!Number.isFinite(x) || Math.abs(x) >= 1e300) {
    return x > 0 ? '+Inf' : '-Inf';
  }
  if (x === 0) {
    return '0';
  }
  const a = Math.abs(x);
  if (a >= 1e-3 && a < 1e4) {
    return String(Number(x.toPrecision(3)));
  }
  return x
    .toExponential(2)
    .replace(/\.?0+e/, 'e')
    .replace('e+', 'e');
}

/** Edges of signed log-spaced bins as short labels: "-1e-3", "0", "1e-6". */
export function fmtEdge(x: number): string {
  if (x === 0) {
    return '0';
  }
  const a = Math.abs(x);
  if (a >= 0.01 && a < 1000) {
    return String(Number(x.toPrecision(2)));
  }
  return x.toExponential(0).replace('e+', 'e');
}

export function replaceChildren(el: HTMLElement, ...children: Child[]): void {
  while (el.firstChild) {
    el.removeChild(el.firstChild);
  }
  for (const c of children) {
    if (c !== null && c !== undefined && c !== false) {
      el.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    }
  }
}
