// The dashboard's model: from the manager's cluster views, its events and the servers' metrics, it
// derives what the page shows — every server's lag in entries and milliseconds, which standbys are
// safe failover candidates right now and what a failover would cost, the rate series, and the
// timeline. It decides nothing for the cluster: it only reads. Pure and synchronous (time and
// scrapes are inputs), so it is unit-tested without processes; the page shares its types.

import type { ManagerEvent } from '../core/manager.ts';
import type { Histogram, RequestCounters } from './prometheus.ts';
import { histogramDelta, histogramQuantile, histogramSum } from './prometheus.ts';

// ---------------------------------------------------------------- input: GET /v1/cluster

/** A server's last status report as the manager's cluster view shows it. */
export interface ClusterServerStatus {
  promisedEpoch: number;
  /** What the server does now: a restarted main acts as a standby. */
  acting: string;
  lastEpoch: number;
  lastSeq: number;
  commitSeq: number;
  appliedSeq: number;
  incomplete: boolean;
  contacts: string[];
  mapVersion: number;
  confirmedMapVersion: number;
}

export interface ClusterServer {
  id: string;
  /** 'main', 'standby' or 'learner' (the role the manager assigned). */
  role: string;
  priority: number;
  address: string;
  peerAddress: string;
  /** 'up' (a status within the last second), 'down' or 'unknown' (never reported). */
  health: string;
  statusAgeMs: number | null;
  status: ClusterServerStatus | null;
}

/** The manager's cluster view (clusterView in src/runtime/manager-process.ts). */
export interface ClusterView {
  epoch: number;
  main: string | null;
  /** 'stable', or 'fencing' while a failover is in progress. */
  phase: string;
  ackQuorum: number;
  mapVersion: number;
  failoverReason?: string;
  configurationChangePending: boolean;
  jointWith: { ackQuorum: number; sinceMapVersion: number; members: { id: string; role: string }[] } | null;
  pendingRemoval: string | null;
  servers: ClusterServer[];
}

// ---------------------------------------------------------------- output: what the page shows

/** Whether promoting this server now would lose an acknowledged write, and what it would cost. */
export type Candidacy =
  | { verdict: 'main' }
  /** Holds every committed entry; it lacks `lacksEntries` entries the main logged but has not committed. */
  | { verdict: 'safe'; lacksEntries: number }
  /** `lacksCommitted`: committed (acknowledged) entries it does not hold, when known. */
  | { verdict: 'unsafe'; reason: string; lacksEntries: number | null; lacksCommitted: number | null }
  /** Not a standby: failover does not count on it. */
  | { verdict: 'ineligible'; reason: string };

export interface Lag {
  /** Entries the main has logged that this server has not (main lastSeq − its lastSeq). */
  entries: number;
  /** How long ago the main had logged the oldest entry this server lacks; null if unknown. */
  ms: number | null;
  /** The history is shorter than the lag: `ms` is a lower bound. */
  msAtLeast: boolean;
}

export interface ServerRow {
  id: string;
  role: string;
  acting: string | null;
  priority: number;
  address: string;
  peerAddress: string;
  health: string;
  statusAgeMs: number | null;
  promisedEpoch: number | null;
  lastEpoch: number | null;
  lastSeq: number | null;
  commitSeq: number | null;
  appliedSeq: number | null;
  incomplete: boolean | null;
  inContactWithMain: boolean | null;
  /** Null for the main and for a server that never reported. */
  lag: Lag | null;
  /** Entries logged but not yet applied to the state (lastSeq − appliedSeq). */
  applyBacklog: number | null;
  candidacy: Candidacy;
}

export interface DashboardView {
  atMs: number;
  epoch: number;
  main: string | null;
  phase: string;
  ackQuorum: number;
  mapVersion: number;
  failoverReason: string | null;
  configurationChangePending: boolean;
  pendingRemoval: string | null;
  /** K of the previous configuration while a change is unconfirmed (both rules apply). */
  jointAckQuorum: number | null;
  mainLastSeq: number | null;
  mainCommitSeq: number | null;
  servers: ServerRow[];
  /** Safe candidates, best first (latest log, then priority, then id: the switchover's choice). */
  safeCandidates: string[];
  /** One sentence: what a failover now would cost. */
  failoverVerdict: string;
}

export type TimelineKind = 'appointment' | 'failover' | 'fence' | 'switchover' | 'join' | 'removal' | 'quorum' | 'configuration' | 'health' | 'incomplete' | 'info';

export interface TimelineEntry {
  id: number;
  atMs: number;
  kind: TimelineKind;
  level: 'info' | 'warn';
  title: string;
  detail: string;
  /** The server the entry is about, if one. */
  server?: string;
  /** How long a failover or switchover took, from fencing to appointment. */
  durationMs?: number;
}

export interface LatencyMs {
  p50: number;
  p99: number;
}

/** One point of the rate charts: averages over the interval that ends at `atMs`. */
export interface RatePoint {
  atMs: number;
  /** Entries committed per second (growth of commitSeq). */
  commitsPerSecond: number | null;
  /** Successful write and read requests per second, summed over the servers' /metrics. */
  writesPerSecond: number | null;
  readsPerSecond: number | null;
  writeLatencyMs: LatencyMs | null;
  readLatencyMs: LatencyMs | null;
  /** How many servers' metrics could be read for this point. */
  metricsServers: number;
}

export interface DashboardSnapshot {
  startedAtMs: number;
  view: DashboardView | null;
  timeline: TimelineEntry[];
  rates: RatePoint[];
  /** The span of the rate series and the number of timeline entries kept. */
  rateWindowMs: number;
  timelineMax: number;
}

// ---------------------------------------------------------------- derivation

/** How long of the main's progress is kept to estimate lag in milliseconds. */
export const progressWindowMs = 10 * 60_000;
/** The rate charts' span. */
export const rateWindowMs = 10 * 60_000;
export const timelineMax = 500;

/** The main's lastSeq and commitSeq over time: how long ago it had logged an entry, and what it had committed when. */
export class ProgressHistory {
  /** Samples in time order; neither seq decreases along them (a decrease starts afresh). */
  private samples: { atMs: number; lastSeq: number; commitSeq: number }[] = [];
  private owner = '';

  /** Records the main's position as reported at `atMs`; a new main or epoch starts a new history. */
  record(owner: string, atMs: number, lastSeq: number, commitSeq: number): void {
    const last = this.samples[this.samples.length - 1];
    if (owner !== this.owner || (last !== undefined && (lastSeq < last.lastSeq || commitSeq < last.commitSeq))) {
      this.owner = owner;
      this.samples = [];
    }
    const previous = this.samples[this.samples.length - 1];
    // Report times are estimated (now − the status's age, rounded): keep them in order.
    if (previous === undefined || lastSeq > previous.lastSeq || commitSeq > previous.commitSeq) {
      this.samples.push({ atMs: Math.max(atMs, previous?.atMs ?? atMs), lastSeq, commitSeq });
    }
    while (this.samples.length > 1 && atMs - (this.samples[0] as { atMs: number }).atMs > progressWindowMs) this.samples.shift();
  }

  /** How long before `nowMs` the main first reported a lastSeq above `lastSeq`. */
  lagMs(lastSeq: number, nowMs: number): { ms: number | null; atLeast: boolean } {
    const latest = this.samples[this.samples.length - 1];
    if (latest === undefined) return { ms: null, atLeast: false };
    if (lastSeq >= latest.lastSeq) return { ms: 0, atLeast: false };
    const first = this.samples.findIndex((sample) => sample.lastSeq > lastSeq);
    const sample = this.samples[first] as { atMs: number };
    return { ms: Math.max(0, Math.round(nowMs - sample.atMs)), atLeast: first === 0 };
  }

  /**
   * The main's commitSeq as it reported it at `atMs` (its last report then), so that a standby's
   * status is compared with the main's from the same moment; undefined before the history starts.
   */
  commitSeqAt(atMs: number): number | undefined {
    let found: number | undefined;
    for (const sample of this.samples) {
      if (sample.atMs > atMs) break;
      found = sample.commitSeq;
    }
    return found;
  }
}

const nonNegative = (value: number): number => Math.max(0, value);

function candidacyOf(server: ClusterServer, view: ClusterView, main: ClusterServer | undefined, progress: ProgressHistory, nowMs: number): Candidacy {
  if (server.id === view.main) return { verdict: 'main' };
  if (server.role !== 'standby') return { verdict: 'ineligible', reason: `A ${server.role}: failover counts only standbys` };
  const status = server.status;
  const unsafe = (reason: string, lacksEntries: number | null = null, lacksCommitted: number | null = null): Candidacy =>
    ({ verdict: 'unsafe', reason, lacksEntries, lacksCommitted });
  if (view.phase !== 'stable' || main === undefined) return unsafe('No main is appointed: a failover is in progress');
  const mainStatus = main.status;
  if (main.health !== 'up' || mainStatus === null) return unsafe(`The main ${main.id} is not reporting: what it committed is unknown`);
  if (server.health !== 'up' || status === null) return unsafe('Not reporting');
  const lacksEntries = nonNegative(mainStatus.lastSeq - status.lastSeq);
  // What the main had committed when this standby reported (statuses arrive at different times).
  const reportedAtMs = nowMs - (server.statusAgeMs ?? 0);
  const committed = Math.min(mainStatus.commitSeq, progress.commitSeqAt(reportedAtMs) ?? mainStatus.commitSeq);
  const lacksCommitted = nonNegative(committed - status.lastSeq);
  if (status.incomplete) return unsafe('Its log is incomplete (awaiting repair)', lacksEntries, lacksCommitted);
  if (status.promisedEpoch !== view.epoch) return unsafe(`It has not joined epoch ${view.epoch} yet`, lacksEntries, lacksCommitted);
  if (!status.contacts.includes(main.id)) return unsafe(`Not in contact with the main ${main.id}`, lacksEntries, lacksCommitted);
  if (status.lastEpoch !== mainStatus.lastEpoch) {
    return unsafe(`Its log ends in epoch ${status.lastEpoch}, the main's in epoch ${mainStatus.lastEpoch}`, lacksEntries, lacksCommitted);
  }
  if (lacksCommitted > 0) return unsafe(`Lacks ${lacksCommitted} committed ${lacksCommitted === 1 ? 'entry' : 'entries'}`, lacksEntries, lacksCommitted);
  return { verdict: 'safe', lacksEntries };
}

const plural = (count: number, one: string, many: string): string => `${count} ${count === 1 ? one : many}`;

function verdictOf(view: ClusterView, rows: readonly ServerRow[], safe: readonly string[]): string {
  if (view.phase !== 'stable') return `A failover is in progress (epoch ${view.epoch})${view.failoverReason === undefined ? '' : `: ${view.failoverReason}`}.`;
  if (view.main === null) return 'No main is appointed yet.';
  const best = rows.find((row) => row.id === safe[0]);
  if (best !== undefined && best.candidacy.verdict === 'safe') {
    const asynchronous = view.ackQuorum === 0 ? ' (K = 0: this holds only while they keep up, nothing waits for them)' : '';
    const lacks = best.candidacy.lacksEntries;
    const cost = lacks === 0
      ? `${best.id}, the most complete, would take over with every entry the main logged`
      : `${best.id}, the most complete, would take over without the ${plural(lacks, 'entry', 'entries')} the main logged but had not committed (their writers get definite: false)`;
    return `A failover now would lose no acknowledged write: ${plural(safe.length, 'standby holds', 'standbys hold')} every committed entry (${safe.join(', ')})${asynchronous}; ${cost}.`;
  }
  const losses = rows.flatMap((row) => (row.candidacy.verdict === 'unsafe' && row.candidacy.lacksCommitted !== null && row.health === 'up' ? [row.candidacy.lacksCommitted] : []));
  if (view.ackQuorum === 0 && losses.length > 0) {
    return `No standby holds every committed entry: with K = 0, a failover now would lose at least ${plural(Math.min(...losses), 'acknowledged write', 'acknowledged writes')}.`;
  }
  return 'No standby is a safe candidate right now: a failover would wait for enough fence replies before it appoints a main.';
}

/** The page's view of the cluster at `nowMs`, from the manager's view and the main's progress. */
export function deriveView(view: ClusterView, progress: ProgressHistory, nowMs: number): DashboardView {
  const main = view.main === null ? undefined : view.servers.find((server) => server.id === view.main);
  const mainStatus = main?.health === 'up' ? main.status : null;
  const rows = view.servers.map((server): ServerRow => {
    const status = server.status;
    let lag: Lag | null = null;
    if (status !== null && mainStatus !== null && server.id !== view.main) {
      const entries = nonNegative(mainStatus.lastSeq - status.lastSeq);
      const estimate = progress.lagMs(status.lastSeq, nowMs);
      lag = { entries, ms: entries === 0 ? 0 : estimate.ms, msAtLeast: estimate.atLeast };
    }
    return {
      id: server.id, role: server.role, acting: status?.acting ?? null, priority: server.priority, address: server.address, peerAddress: server.peerAddress,
      health: server.health, statusAgeMs: server.statusAgeMs,
      promisedEpoch: status?.promisedEpoch ?? null, lastEpoch: status?.lastEpoch ?? null, lastSeq: status?.lastSeq ?? null,
      commitSeq: status?.commitSeq ?? null, appliedSeq: status?.appliedSeq ?? null, incomplete: status?.incomplete ?? null,
      inContactWithMain: status === null || main === undefined || server.id === main.id ? null : status.contacts.includes(main.id),
      lag, applyBacklog: status === null ? null : nonNegative(status.lastSeq - status.appliedSeq),
      candidacy: candidacyOf(server, view, main, progress, nowMs),
    };
  });
  const position = (row: ServerRow): [number, number] => [row.lastEpoch ?? -1, row.lastSeq ?? -1];
  const safe = rows.filter((row) => row.candidacy.verdict === 'safe').sort((a, b) => {
    const [epochA, seqA] = position(a);
    const [epochB, seqB] = position(b);
    return epochB - epochA || seqB - seqA || b.priority - a.priority || (a.id < b.id ? -1 : 1);
  }).map((row) => row.id);
  return {
    atMs: nowMs, epoch: view.epoch, main: view.main, phase: view.phase, ackQuorum: view.ackQuorum, mapVersion: view.mapVersion,
    failoverReason: view.failoverReason ?? null, configurationChangePending: view.configurationChangePending, pendingRemoval: view.pendingRemoval,
    jointAckQuorum: view.jointWith?.ackQuorum ?? null,
    mainLastSeq: mainStatus?.lastSeq ?? null, mainCommitSeq: mainStatus?.commitSeq ?? null,
    servers: rows, safeCandidates: safe, failoverVerdict: verdictOf(view, rows, safe),
  };
}

// ---------------------------------------------------------------- timeline

type Draft = Omit<TimelineEntry, 'id' | 'atMs'>;

const plannedSwitchover = /^planned switchover/;
const firstAppointment = 'the cluster has no main yet';

function capitalized(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** The kind of a configuration change, from the change's description (ManagerCore.announceConfiguration). */
function configurationKind(change: string): { kind: TimelineKind; server?: string } {
  const server = (pattern: RegExp): string | undefined => pattern.exec(change)?.[1];
  if (/^added /.test(change)) return { kind: 'join', server: server(/^added (\S+)/) };
  if (/^promoted the learner /.test(change)) return { kind: 'join', server: server(/^promoted the learner (\S+)/) };
  if (/^removed the learner /.test(change)) return { kind: 'removal', server: server(/^removed the learner (\S+)/) };
  if (/^demoted /.test(change)) return { kind: 'removal', server: server(/^demoted (\S+)/) };
  if (/; removed /.test(change)) return { kind: 'removal', server: server(/; removed (\S+)/) };
  if (/^K changed/.test(change)) return { kind: 'quorum' };
  return { kind: 'configuration' };
}

/** A timeline entry for one of the manager core's events (debug-level chatter is left out). */
export function entryForEvent(level: 'info' | 'warn' | 'debug', message: string, event: ManagerEvent | undefined): Draft | undefined {
  if (level === 'debug') return undefined;
  if (event === undefined) return { kind: 'info', level, title: message, detail: '' };
  switch (event.type) {
    case 'failoverStarted': {
      const planned = plannedSwitchover.test(event.reason);
      return {
        kind: planned ? 'switchover' : 'fence', level,
        title: `Epoch ${event.epoch}: the manager fences the servers`,
        detail: `${planned ? 'Switchover' : 'Failover'} started: ${event.reason}.`,
      };
    }
    case 'fenceQuorumWait':
      return { kind: 'fence', level, title: `Epoch ${event.epoch}: waiting for fence replies (${event.have} of ${event.need})`, detail: message };
    case 'appointed': {
      const main = event.main as string;
      if (event.reason === firstAppointment) {
        return { kind: 'appointment', level, server: main, durationMs: event.tookMs, title: `${main} appointed main of epoch ${event.epoch}`, detail: `First main of the cluster, after ${event.tookMs} ms.` };
      }
      const planned = plannedSwitchover.test(event.reason);
      return {
        kind: planned ? 'switchover' : 'failover', level, server: main, durationMs: event.tookMs,
        title: `${planned ? 'Switchover' : 'Failover'}: ${main} is the main of epoch ${event.epoch}`,
        detail: `Reason: ${event.reason}. Took ${event.tookMs} ms from fencing to appointment.${message.includes(';') ? ` ${capitalized(message.slice(message.indexOf(';') + 1).trim())}.` : ''}`,
      };
    }
    case 'switchoverRequested':
      return { kind: 'switchover', level, server: event.target, title: `Switchover to ${event.target} requested`, detail: message };
    case 'switchoverAbandoned':
      return { kind: 'switchover', level, server: event.target, title: `Switchover to ${event.target} abandoned`, detail: message };
    case 'configurationChanged': {
      const { kind, server } = configurationKind(event.change);
      const draft: Draft = { kind, level, title: capitalized(event.change), detail: `Configuration ${event.mapVersion}.` };
      if (server !== undefined) draft.server = server;
      return draft;
    }
    default:
      return { kind: 'info', level, title: message, detail: '' };
  }
}

/** Entries for what changed between two views that the manager core does not announce: health and incomplete logs. */
export function entriesForChanges(previous: ClusterView | undefined, next: ClusterView): Draft[] {
  if (previous === undefined) return [];
  const drafts: Draft[] = [];
  for (const server of next.servers) {
    const before = previous.servers.find((candidate) => candidate.id === server.id);
    if (before === undefined) continue;
    if (before.health !== 'down' && server.health === 'down') {
      drafts.push({ kind: 'health', level: 'warn', server: server.id, title: `${server.id} stopped reporting`, detail: `No status from ${server.id} for ${server.statusAgeMs ?? '?'} ms.` });
    } else if (before.health !== 'up' && server.health === 'up') {
      drafts.push({ kind: 'health', level: 'info', server: server.id, title: `${server.id} is reporting${before.health === 'down' ? ' again' : ''}`, detail: `Acting as ${server.status?.acting ?? 'unknown'} in epoch ${server.status?.promisedEpoch ?? '?'}.` });
    }
    const wasIncomplete = before.status?.incomplete ?? false;
    const isIncomplete = server.status?.incomplete ?? false;
    if (!wasIncomplete && isIncomplete) {
      drafts.push({ kind: 'incomplete', level: 'warn', server: server.id, title: `${server.id} reports an incomplete log`, detail: 'Its log lost entries it had acknowledged (a torn or damaged tail): it is repaired from the main and is no failover candidate until then.' });
    } else if (wasIncomplete && !isIncomplete && server.status !== null) {
      drafts.push({ kind: 'incomplete', level: 'info', server: server.id, title: `${server.id}'s log is complete again`, detail: 'The repair finished.' });
    }
  }
  return drafts;
}

/**
 * The key of an entry that later events update in place rather than repeat: a failover's wait
 * for fence replies is one entry whose tally changes, not one entry per reply.
 */
export function updateKey(event: ManagerEvent | undefined): string | undefined {
  return event?.type === 'fenceQuorumWait' ? `fenceQuorumWait/${event.epoch}` : undefined;
}

/**
 * The last `timelineMax` entries, oldest first, each with an increasing id. An entry added with
 * the key of one still kept replaces it, keeping its id (the page replaces it by id too).
 */
export class Timeline {
  private readonly entries: TimelineEntry[] = [];
  private readonly keys = new Map<string, number>();
  private nextId = 1;

  add(atMs: number, draft: Draft, key?: string): TimelineEntry {
    const updated = key === undefined ? undefined : this.entries.find((entry) => entry.id === this.keys.get(key));
    if (updated !== undefined) {
      const entry: TimelineEntry = { id: updated.id, atMs: updated.atMs, ...draft };
      this.entries[this.entries.indexOf(updated)] = entry;
      return entry;
    }
    const entry: TimelineEntry = { id: this.nextId++, atMs, ...draft };
    this.entries.push(entry);
    if (key !== undefined) this.keys.set(key, entry.id);
    if (this.entries.length > timelineMax) {
      const dropped = this.entries.splice(0, this.entries.length - timelineMax);
      const droppedIds = new Set(dropped.map((old) => old.id));
      for (const [oldKey, id] of this.keys) if (droppedIds.has(id)) this.keys.delete(oldKey);
    }
    return entry;
  }

  all(): TimelineEntry[] {
    return [...this.entries];
  }
}

// ---------------------------------------------------------------- rates

const quantiles = (histogram: Histogram): LatencyMs | null => {
  const p50 = histogramQuantile(histogram, 0.5);
  const p99 = histogramQuantile(histogram, 0.99);
  return p50 === null || p99 === null ? null : { p50: p50 * 1000, p99: p99 * 1000 };
};

/**
 * The rate series: each point averages the interval since the previous one. Commits come from the
 * highest commitSeq any server reports (seqs are global, so this holds across failovers); request
 * rates and latency from the difference between two scrapes of each server's counters.
 */
export class RateSeries {
  private readonly points: RatePoint[] = [];
  private lastCommit: { atMs: number; seq: number } | undefined;
  private readonly lastScrape = new Map<string, { atMs: number; counters: RequestCounters }>();

  /** Adds the point at `atMs`; `scrapes` holds each server's counters read now (absent: not read). */
  add(atMs: number, commitSeq: number | null, scrapes: ReadonlyMap<string, RequestCounters>): RatePoint {
    let commitsPerSecond: number | null = null;
    if (commitSeq !== null) {
      if (this.lastCommit !== undefined && atMs > this.lastCommit.atMs) {
        commitsPerSecond = nonNegative(commitSeq - this.lastCommit.seq) / ((atMs - this.lastCommit.atMs) / 1000);
      }
      this.lastCommit = { atMs, seq: commitSeq };
    }
    let reads = 0;
    let writes = 0;
    let measured = 0;
    const readLatency: Histogram[] = [];
    const writeLatency: Histogram[] = [];
    for (const [server, counters] of scrapes) {
      const previous = this.lastScrape.get(server);
      this.lastScrape.set(server, { atMs, counters });
      if (previous === undefined || atMs <= previous.atMs) continue;
      const seconds = (atMs - previous.atMs) / 1000;
      const restarted = counters.reads < previous.counters.reads || counters.writes < previous.counters.writes;
      reads += (restarted ? counters.reads : counters.reads - previous.counters.reads) / seconds;
      writes += (restarted ? counters.writes : counters.writes - previous.counters.writes) / seconds;
      readLatency.push(histogramDelta(counters.readLatency, previous.counters.readLatency));
      writeLatency.push(histogramDelta(counters.writeLatency, previous.counters.writeLatency));
      measured += 1;
    }
    for (const server of [...this.lastScrape.keys()]) {
      // Forget servers not read for a whole window (removed ones), so the map stays bounded.
      if (atMs - (this.lastScrape.get(server) as { atMs: number }).atMs > rateWindowMs) this.lastScrape.delete(server);
    }
    const point: RatePoint = {
      atMs, commitsPerSecond,
      writesPerSecond: measured === 0 ? null : writes, readsPerSecond: measured === 0 ? null : reads,
      writeLatencyMs: measured === 0 ? null : quantiles(histogramSum(writeLatency)),
      readLatencyMs: measured === 0 ? null : quantiles(histogramSum(readLatency)),
      metricsServers: measured,
    };
    this.points.push(point);
    while (this.points.length > 0 && atMs - (this.points[0] as RatePoint).atMs > rateWindowMs) this.points.shift();
    return point;
  }

  all(): RatePoint[] {
    return [...this.points];
  }
}

/** The highest commitSeq any server reports, or null if none has reported. */
export function clusterCommitSeq(view: ClusterView): number | null {
  const seqs = view.servers.flatMap((server) => (server.status === null ? [] : [server.status.commitSeq]));
  return seqs.length === 0 ? null : Math.max(...seqs);
}
