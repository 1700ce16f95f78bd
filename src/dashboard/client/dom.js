// Small helpers for the dashboard page: building elements from data without ever parsing HTML
// (every server-provided string becomes a text node), and formatting numbers, durations and times.
/* global document */

/**
 * @typedef {string | number | Node | null | undefined | false} Child
 * @typedef {Record<string, string | number | boolean | undefined>} Attributes
 */

/**
 * An HTML element with attributes (false or undefined leave one out) and children.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attributes} [attributes]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

const svgNamespace = 'http://www.w3.org/2000/svg';

/**
 * An SVG element.
 * @param {string} tag
 * @param {Attributes} [attributes]
 * @param {...(Child | Child[])} children
 * @returns {SVGElement}
 */
export function s(tag, attributes = {}, ...children) {
  const element = /** @type {SVGElement} */ (document.createElementNS(svgNamespace, tag));
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

/**
 * @param {Element} element
 * @param {Attributes} attributes
 */
function setAttributes(element, attributes) {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue;
    element.setAttribute(name, value === true ? '' : String(value));
  }
}

/**
 * @param {Element} element
 * @param {(Child | Child[])[]} children
 */
function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(typeof child === 'number' ? String(child) : child);
  }
}

/**
 * The element with this id, of the expected class: a missing one is a bug in the page.
 * @template {Element} T
 * @param {string} id
 * @param {new (...args: never[]) => T} type
 * @returns {T}
 */
export function byId(id, type) {
  const element = document.getElementById(id);
  if (!(element instanceof type)) throw new Error(`The page has no ${type.name} #${id}`);
  return element;
}

const integer = new Intl.NumberFormat('en', { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });
const precise = new Intl.NumberFormat('en', { maximumFractionDigits: 2 });

/**
 * A count or seq, with thousands separators; an em dash if unknown.
 * @param {number | null | undefined} value
 */
export function count(value) {
  return value === null || value === undefined ? '—' : integer.format(value);
}

/**
 * A rate or small quantity: more digits below 10.
 * @param {number | null | undefined} value
 */
export function amount(value) {
  if (value === null || value === undefined) return '—';
  return Math.abs(value) < 10 ? precise.format(value) : Math.abs(value) < 100 ? decimal.format(value) : integer.format(value);
}

/**
 * A duration: milliseconds below 10 s, then seconds, then minutes.
 * @param {number} ms
 */
export function duration(ms) {
  if (ms < 10_000) return `${integer.format(ms)} ms`;
  if (ms < 120_000) return `${decimal.format(ms / 1000)} s`;
  return `${decimal.format(ms / 60_000)} min`;
}

/**
 * @param {number} value
 * @param {string} one
 * @param {string} many
 */
export function plural(value, one, many) {
  return `${count(value)} ${value === 1 ? one : many}`;
}

/**
 * A wall-clock time as a <time> element (local time, ISO in its datetime).
 * @param {number} atMs
 */
export function time(atMs) {
  const date = new Date(atMs);
  return h('time', { datetime: date.toISOString() }, date.toLocaleTimeString([], { hour12: false }));
}
