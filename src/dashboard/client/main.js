// The dashboard page's entry point: opens the manager's live stream (GET /v1/events, server-sent
// events), keeps the latest view, timeline and rate series, and redraws what changed once per
// animation frame. The stream starts with a snapshot of everything, also after a reconnection,
// so the page never has to patch up a gap.
/* global EventSource, HTMLElement, requestAnimationFrame */
import { setupActions, updateActionChoices } from './actions.js';
import { byId, time } from './dom.js';
import { renderRates, renderServers, renderSummary, renderTimeline } from './render.js';

/**
 * @typedef {import('../model.ts').DashboardSnapshot} DashboardSnapshot
 * @typedef {import('../model.ts').DashboardView} DashboardView
 * @typedef {import('../model.ts').TimelineEntry} TimelineEntry
 * @typedef {import('../model.ts').RatePoint} RatePoint
 */

const state = {
  /** @type {DashboardView | null} */
  view: null,
  /** @type {TimelineEntry[]} oldest first */
  timeline: [],
  /** @type {RatePoint[]} oldest first */
  rates: [],
  rateWindowMs: 10 * 60_000,
  timelineMax: 500,
  startedAtMs: 0,
  dirty: { view: false, timeline: false, rates: false },
  frameRequested: false,
};

function draw() {
  state.frameRequested = false;
  const { dirty } = state;
  if (dirty.view && state.view !== null) {
    renderSummary(state.view);
    renderServers(state.view);
    updateActionChoices(state.view);
  }
  if (dirty.timeline) renderTimeline(state.timeline);
  if (dirty.rates || dirty.view) {
    const lastRate = state.rates[state.rates.length - 1];
    const nowMs = Math.max(state.view?.atMs ?? 0, lastRate?.atMs ?? 0);
    renderRates(state.rates, nowMs, state.rateWindowMs);
  }
  state.dirty = { view: false, timeline: false, rates: false };
}

/** @param {'view' | 'timeline' | 'rates'} part */
function changed(part) {
  state.dirty[part] = true;
  if (!state.frameRequested) {
    state.frameRequested = true;
    requestAnimationFrame(draw);
  }
}

/**
 * @param {'live' | 'connecting' | 'lost'} status
 * @param {string} text
 */
function showConnection(status, text) {
  const connection = byId('connection', HTMLElement);
  connection.dataset.status = status;
  connection.textContent = text;
}

/**
 * @template T
 * @param {Event} event
 * @returns {T}
 */
const dataOf = (event) => JSON.parse(/** @type {MessageEvent<string>} */ (event).data);

function connect() {
  const source = new EventSource('/v1/events');
  source.addEventListener('open', () => showConnection('live', 'Live'));
  source.addEventListener('error', () => {
    // EventSource reconnects by itself (after the retry the manager set) unless it gave up.
    showConnection(source.readyState === EventSource.CLOSED ? 'lost' : 'connecting',
      source.readyState === EventSource.CLOSED ? 'Disconnected: reload the page to retry' : 'Reconnecting to the manager…');
  });
  source.addEventListener('snapshot', (event) => {
    /** @type {DashboardSnapshot} */
    const snapshot = dataOf(event);
    state.view = snapshot.view;
    state.timeline = snapshot.timeline;
    state.rates = snapshot.rates;
    state.rateWindowMs = snapshot.rateWindowMs;
    state.timelineMax = snapshot.timelineMax;
    if (snapshot.startedAtMs !== state.startedAtMs) {
      state.startedAtMs = snapshot.startedAtMs;
      byId('started-at', HTMLElement).replaceChildren(time(snapshot.startedAtMs));
    }
    showConnection('live', 'Live');
    changed('view');
    changed('timeline');
    changed('rates');
  });
  source.addEventListener('view', (event) => {
    state.view = dataOf(event);
    changed('view');
  });
  source.addEventListener('timeline', (event) => {
    /** @type {TimelineEntry} */
    const entry = dataOf(event);
    // An entry with a known id is an update of that entry (a failover's tally of fence replies).
    const known = state.timeline.findIndex((other) => other.id === entry.id);
    if (known >= 0) state.timeline[known] = entry;
    else state.timeline.push(entry);
    if (state.timeline.length > state.timelineMax) state.timeline.splice(0, state.timeline.length - state.timelineMax);
    changed('timeline');
  });
  source.addEventListener('rate', (event) => {
    /** @type {RatePoint} */
    const point = dataOf(event);
    state.rates.push(point);
    const oldest = point.atMs - state.rateWindowMs;
    while (state.rates.length > 0 && /** @type {RatePoint} */ (state.rates[0]).atMs < oldest) state.rates.shift();
    changed('rates');
  });
}

setupActions(() => state.view);
showConnection('connecting', 'Connecting to the manager…');
connect();
