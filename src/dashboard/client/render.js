// Draws the dashboard from the state the manager streams: the summary, the servers table with
// each standby's lag and failover candidacy, the rate charts and the timeline. Every function
// replaces what it owns from the data alone, so drawing twice changes nothing.
/* global SVGSVGElement, HTMLElement, HTMLTableSectionElement, HTMLOListElement */
import { drawChart } from './charts.js';
import { amount, byId, count, duration, h, plural, time } from './dom.js';

/**
 * @typedef {import('../model.ts').DashboardView} DashboardView
 * @typedef {import('../model.ts').ServerRow} ServerRow
 * @typedef {import('../model.ts').TimelineEntry} TimelineEntry
 * @typedef {import('../model.ts').RatePoint} RatePoint
 */

/** @param {DashboardView} view */
export function renderSummary(view) {
  const main = byId('summary-main', HTMLElement);
  main.textContent = view.main ?? 'none';
  main.dataset.main = view.main ?? '';
  byId('summary-epoch', HTMLElement).textContent = count(view.epoch);
  const phase = byId('summary-phase', HTMLElement);
  phase.textContent = view.phase === 'stable' ? 'Stable' : `Failing over${view.failoverReason === null ? '' : `: ${view.failoverReason}`}`;
  phase.dataset.phase = view.phase;
  byId('summary-k', HTMLElement).textContent = view.jointAckQuorum === null ? String(view.ackQuorum) : `${view.ackQuorum} (K = ${view.jointAckQuorum} also applies until the main confirms)`;
  const pending = view.pendingRemoval === null ? 'a change is pending' : `removing ${view.pendingRemoval}`;
  byId('summary-config', HTMLElement).textContent = `Version ${view.mapVersion}${view.configurationChangePending ? `, ${pending}` : ''}`;
  byId('summary-commit', HTMLElement).textContent = view.mainCommitSeq === null ? '—' : `${count(view.mainCommitSeq)} (last seq ${count(view.mainLastSeq)})`;
  const verdict = byId('failover-verdict', HTMLElement);
  verdict.textContent = view.failoverVerdict;
  verdict.dataset.safe = String(view.safeCandidates.length > 0);
}

/** @param {ServerRow} row */
function roleCell(row) {
  // What a server that stopped reporting last said it did is history, not its role.
  const acting = row.health === 'up' && row.acting !== null && row.acting !== row.role ? h('span', { class: 'sub' }, ` acting ${row.acting}`) : null;
  return h('td', {}, h(row.role === 'main' ? 'strong' : 'span', { class: `badge role-${row.role}` }, row.role), acting);
}

/** @param {ServerRow} row */
function healthCell(row) {
  const label = row.health === 'up' ? 'Up' : row.health === 'down' ? 'Down' : 'Unknown';
  // Rounded so that a steady server's row does not change with every heartbeat.
  const age = row.statusAgeMs === null ? 'never reported'
    : row.statusAgeMs < 500 ? 'reporting' : `${row.health === 'up' ? 'last status' : 'no status for'} ${(row.statusAgeMs / 1000).toFixed(1)} s${row.health === 'up' ? ' ago' : ''}`;
  return h('td', {}, h('span', { class: `health health-${row.health}` }, label), h('span', { class: 'sub' }, age));
}

/** @param {ServerRow} row */
function epochCell(row) {
  if (row.promisedEpoch === null) return h('td', { class: 'number' }, '—');
  const log = row.lastEpoch !== null && row.lastEpoch !== row.promisedEpoch ? h('span', { class: 'sub' }, `log ends in ${row.lastEpoch}`) : null;
  return h('td', { class: 'number' }, count(row.promisedEpoch), log);
}

/** @param {ServerRow} row */
function lagCell(row) {
  if (row.role === 'main') return h('td', { class: 'number' }, h('span', { class: 'sub' }, 'the reference'));
  if (row.lag === null) return h('td', { class: 'number' }, '—');
  const { entries, ms, msAtLeast } = row.lag;
  const time = ms === null || entries === 0 ? '' : ms < 1 ? ' · just now' : ` · ${msAtLeast ? '>' : '≈'} ${duration(ms)}`;
  const backlog = row.applyBacklog !== null && row.applyBacklog > 0 ? h('span', { class: 'sub' }, `${count(row.applyBacklog)} to apply`) : null;
  return h('td', { class: 'number' }, `${plural(entries, 'entry', 'entries')}${time}`, backlog);
}

/** @param {ServerRow} row */
function candidateCell(row) {
  const candidacy = row.candidacy;
  switch (candidacy.verdict) {
    case 'main':
      return h('td', { 'data-candidate': 'main' }, h('span', { class: 'sub' }, 'the main'));
    case 'safe': {
      const cost = candidacy.lacksEntries === 0 ? 'has every entry the main logged' : `would lose ${plural(candidacy.lacksEntries, 'uncommitted entry', 'uncommitted entries')}`;
      return h('td', { 'data-candidate': 'safe' }, h('span', { class: 'verdict-safe' }, '✓ Safe'), h('span', { class: 'sub' }, cost));
    }
    case 'unsafe': {
      const cost = candidacy.lacksCommitted !== null && candidacy.lacksCommitted > 0 ? ` (lacks ${plural(candidacy.lacksCommitted, 'committed entry', 'committed entries')})` : '';
      return h('td', { 'data-candidate': 'unsafe' }, h('span', { class: 'verdict-unsafe' }, '✗ Not safe'), h('span', { class: 'sub' }, `${candidacy.reason}${candidacy.reason.includes('committed') ? '' : cost}`));
    }
    default:
      return h('td', { 'data-candidate': 'ineligible' }, h('span', { class: 'sub' }, candidacy.reason));
  }
}

/** @param {DashboardView} view */
export function renderServers(view) {
  const body = byId('servers-body', HTMLTableSectionElement);
  const rows = view.servers.map((row) => h('tr', {
    'data-server': row.id, 'data-role': row.role, 'data-health': row.health, class: row.role === 'main' ? 'is-main' : undefined,
  },
  h('th', { scope: 'row' }, row.id, row.priority !== 0 ? h('span', { class: 'sub' }, `priority ${row.priority}`) : null),
  roleCell(row), healthCell(row), epochCell(row),
  h('td', { class: 'number' }, count(row.lastSeq)),
  h('td', { class: 'number' }, count(row.commitSeq)),
  h('td', { class: 'number' }, count(row.appliedSeq)),
  lagCell(row), candidateCell(row),
  h('td', {}, h('span', { class: 'address' }, row.address), h('span', { class: 'sub' }, `peer ${row.peerAddress}`))));
  // Only rows that changed are replaced, so an operator's text selection survives the updates.
  const old = [...body.rows];
  rows.forEach((row, index) => {
    const before = old[index];
    if (before === undefined) body.append(row);
    else if (before.outerHTML !== row.outerHTML) before.replaceWith(row);
  });
  for (const extra of old.slice(rows.length)) extra.remove();
}

const kindLabels = /** @type {Record<string, string>} */ ({
  appointment: 'Appointment', failover: 'Failover', fence: 'Fence', switchover: 'Switchover', join: 'Join', removal: 'Removal',
  quorum: 'K change', configuration: 'Configuration', health: 'Health', incomplete: 'Incomplete log', info: 'Note',
});

/** How many timeline entries the page lists (the manager keeps more). */
const timelineShownMax = 200;

/** @param {TimelineEntry[]} entries  oldest first */
export function renderTimeline(entries) {
  const list = byId('timeline', HTMLOListElement);
  const newest = entries.slice(-timelineShownMax).reverse();
  list.replaceChildren(...newest.map((entry) => h('li', {
    'data-kind': entry.kind, 'data-level': entry.level, 'data-server': entry.server, class: `entry kind-${entry.kind} level-${entry.level}`,
  },
  time(entry.atMs),
  h('span', { class: 'kind' }, kindLabels[entry.kind] ?? entry.kind),
  h('span', { class: 'what' }, h('strong', {}, entry.title), entry.durationMs === undefined ? null : h('span', { class: 'took' }, ` (${duration(entry.durationMs)})`),
    entry.detail === '' ? null : h('span', { class: 'detail' }, entry.detail)))));
  if (newest.length === 0) list.replaceChildren(h('li', { class: 'empty' }, 'Nothing has happened since the manager started.'));
}

/**
 * @param {string} id
 * @param {RatePoint[]} points
 * @param {number} nowMs
 * @param {number} windowMs
 * @param {string} unit
 * @param {{ name: string, className: string, value: (point: RatePoint) => number | null, unit: string }[]} series
 */
function chart(id, points, nowMs, windowMs, unit, series) {
  drawChart(byId(`${id}-svg`, SVGSVGElement), {
    times: points.map((point) => point.atMs), nowMs, windowMs, unit,
    series: series.map((one) => ({ name: one.name, className: one.className, values: points.map(one.value) })),
  });
  const last = points[points.length - 1];
  byId(`${id}-now`, HTMLElement).textContent = last === undefined
    ? 'no data yet'
    : `now: ${series.map((one) => `${one.name} ${amount(one.value(last))}${one.unit}`).join(', ')}`;
}

/**
 * @param {RatePoint[]} points
 * @param {number} nowMs
 * @param {number} windowMs
 */
export function renderRates(points, nowMs, windowMs) {
  // A young series is drawn over the time it covers (at least a minute, whole minutes), not
  // squeezed against the right edge of the full window.
  const first = points[0];
  const covered = first === undefined ? 0 : nowMs - first.atMs;
  const shownMs = Math.min(windowMs, Math.max(60_000, Math.ceil(covered / 60_000) * 60_000));
  chart('chart-writes', points, nowMs, shownMs, 'per s', [
    { name: 'committed entries', className: 'series-a', value: (point) => point.commitsPerSecond, unit: '/s' },
    { name: 'write requests', className: 'series-b', value: (point) => point.writesPerSecond, unit: '/s' },
  ]);
  chart('chart-reads', points, nowMs, shownMs, 'per s', [
    { name: 'read requests', className: 'series-a', value: (point) => point.readsPerSecond, unit: '/s' },
  ]);
  chart('chart-write-latency', points, nowMs, shownMs, 'ms', [
    { name: 'p50', className: 'series-a', value: (point) => point.writeLatencyMs?.p50 ?? null, unit: ' ms' },
    { name: 'p99', className: 'series-b', value: (point) => point.writeLatencyMs?.p99 ?? null, unit: ' ms' },
  ]);
  chart('chart-read-latency', points, nowMs, shownMs, 'ms', [
    { name: 'p50', className: 'series-a', value: (point) => point.readLatencyMs?.p50 ?? null, unit: ' ms' },
    { name: 'p99', className: 'series-b', value: (point) => point.readLatencyMs?.p99 ?? null, unit: ' ms' },
  ]);
  const last = points[points.length - 1];
  byId('rates-note', HTMLElement).textContent = last === undefined || last.metricsServers > 0
    ? `Committed entries come from the growth of commitSeq; requests and latency from every server's /metrics${last === undefined ? '' : ` (${plural(last.metricsServers, 'server', 'servers')} read at the last sample)`}.`
    : 'Committed entries come from the growth of commitSeq. No server\'s /metrics could be read at the last sample: request rates and latency are unknown.';
}
