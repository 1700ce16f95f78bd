// Line charts for the dashboard, drawn as plain SVG: a time axis over the rate window ending now,
// a value axis from zero to a rounded maximum, one path per series with gaps where a value is
// unknown. Each series has its own colour and dash pattern, so it reads without colour too.
import { amount, s } from './dom.js';

/**
 * @typedef {object} Series
 * @property {string} name
 * @property {string} className  styles the line and its legend swatch (style.css)
 * @property {(number | null)[]} values  one per time in ChartData.times
 *
 * @typedef {object} ChartData
 * @property {number[]} times  milliseconds, ascending
 * @property {Series[]} series
 * @property {number} nowMs  the right edge
 * @property {number} windowMs  the span shown
 * @property {string} unit  shown on the value axis
 */

const width = 480;
const height = 170;
const margin = { left: 48, right: 10, top: 22, bottom: 24 };

/**
 * A round maximum for the value axis (1, 2 or 5 times a power of ten) at or above `value`.
 * @param {number} value
 */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

/**
 * A time span for the time axis: seconds below two minutes, then minutes.
 * @param {number} ms
 */
function ago(ms) {
  return ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Number((ms / 60_000).toFixed(1))} min`;
}

/**
 * Replaces the content of `svg` with the chart of `data`.
 * @param {SVGSVGElement} svg
 * @param {ChartData} data
 */
export function drawChart(svg, data) {
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const start = data.nowMs - data.windowMs;
  const values = data.series.flatMap((series) => series.values).filter((value) => value !== null);
  const top = niceMax(Math.max(0, ...values));
  /** @param {number} atMs */
  const x = (atMs) => margin.left + ((atMs - start) / data.windowMs) * plotWidth;
  /** @param {number} value */
  const y = (value) => margin.top + plotHeight - (value / top) * plotHeight;

  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const children = [];
  for (const fraction of [0, 0.5, 1]) {
    const value = top * fraction;
    children.push(s('line', { class: 'grid', x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value) }));
    children.push(s('text', { class: 'axis', x: margin.left - 6, y: y(value) + 4, 'text-anchor': 'end' }, amount(value)));
  }
  children.push(s('text', { class: 'axis unit', x: margin.left - 6, y: 11, 'text-anchor': 'end' }, data.unit));
  for (const fraction of [0, 0.5, 1]) {
    const label = fraction === 1 ? 'now' : `−${ago(data.windowMs * (1 - fraction))}`;
    const anchor = fraction === 0 ? 'start' : fraction === 1 ? 'end' : 'middle';
    children.push(s('text', { class: 'axis', x: margin.left + fraction * plotWidth, y: height - 6, 'text-anchor': anchor }, label));
  }
  for (const series of data.series) {
    let path = '';
    let drawing = false;
    series.values.forEach((value, index) => {
      const atMs = /** @type {number} */ (data.times[index]);
      if (value === null || atMs < start) {
        drawing = false;
        return;
      }
      path += `${drawing ? 'L' : 'M'}${x(atMs).toFixed(1)} ${y(value).toFixed(1)} `;
      drawing = true;
    });
    if (path !== '') children.push(s('path', { class: `line ${series.className}`, d: path.trim() }));
  }
  svg.replaceChildren(...children);
}
