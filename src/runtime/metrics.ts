// Prometheus metrics of a server process (prom-client), served at GET /metrics: client requests
// (counts and latency by kind, consistency and outcome), HTTP answers and errors by code, the log
// positions and lags, fsync latency and group-commit sizes of the file log, the core's notable
// events (role changes, fences, snapshots, compactions), the TCP transport, and the process
// (prom-client's default metrics). It observes and counts; it decides nothing. The shell calls one
// method per hook (see docs/ops/README.md for the list and for every metric's meaning).

import type { Metric } from 'prom-client';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { DiskOperation, ServerCore, ServerEffect, ServerEventCode } from '../core/server.ts';
import type { AnyMessage } from '../protocol/codec.ts';
import type { ClientRequest, ClientResponse } from '../protocol/types.ts';
import type { LogFileSystem } from '../storage/file-log-system.ts';
import { nodeFileSystem } from '../storage/file-log-system.ts';
import type { TransportStats } from '../transport/tcp.ts';
import type { CounterSeries, HistogramSeries } from './fast-metrics.ts';
import { FastHistogram, fastCounter } from './fast-metrics.ts';

/** Bounds of the client request latency histogram, in seconds (read by the dashboard too). */
export const requestSecondsBuckets = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Bounds of the fsync latency histogram, in seconds: from a fast NVMe sync to a stalled disk. */
export const fsyncSecondsBuckets = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
/** Bounds of the entries one group commit makes durable (batchEntriesMax is 512 by default). */
export const groupCommitEntriesBuckets = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16_384];
/** Bounds of the bytes one group commit writes (a group is at most 8 MiB of records by default). */
export const groupCommitBytesBuckets = [256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 8_388_608, 16_777_216];
/**
 * Disk operations waiting for their durability report, at most: without the onDiskDurable hook
 * they would pile up, so the oldest are forgotten past this (their entries are then not counted).
 */
const pendingOperationsMax = 65_536;

/** Anything with TcpTransport's stats(). */
export interface TransportStatsSource {
  stats(): TransportStats;
}

/** prom-client's default process metrics (CPU, memory, event loop lag, GC, handles), unprefixed as usual. */
export function registerProcessMetrics(registry: Registry): void {
  collectDefaultMetrics({ register: registry });
}

/**
 * A counter whose value is a running total kept elsewhere (the transport's own counts), read at
 * every scrape. It never goes down while the process lives, as a counter must.
 */
function counterFrom<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[], read: () => [Partial<Record<L, string>>, number][]): void {
  new Counter<L>({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.inc(labels, value);
    },
  });
}

/** A gauge with one value per label set, read at every scrape; label sets not read disappear. */
function gaugeFrom<L extends string>(registry: Registry, name: string, help: string, labelNames: readonly L[], read: () => [Partial<Record<L, string>>, number][]): void {
  new Gauge<L>({
    name, help, labelNames, registers: [registry],
    collect() {
      this.reset();
      for (const [labels, value] of read()) this.set(labels, value);
    },
  });
}

/**
 * The TCP transport's connections and queues (the same names on servers and the manager). Until
 * `source()` returns a transport, the per-peer metrics have no samples and the others are zero.
 */
export function registerTransportMetrics(registry: Registry, source: () => TransportStatsSource | undefined): void {
  // One stats() call per scrape serves every metric below.
  let cached: { stats: TransportStats; atMs: number } | undefined;
  const stats = (): TransportStats | undefined => {
    const transport = source();
    if (transport === undefined) return undefined;
    const nowMs = performance.now();
    if (cached === undefined || nowMs - cached.atMs > 100) cached = { stats: transport.stats(), atMs: nowMs };
    return cached.stats;
  };
  const perPeer = (read: (peer: TransportStats['peers'][number]) => number) => (): [{ peer: string }, number][] =>
    (stats()?.peers ?? []).map((peer) => [{ peer: peer.id }, read(peer)]);
  const whole = (read: (all: TransportStats) => number) => (): [Record<never, string>, number][] => {
    const all = stats();
    return all === undefined ? [] : [[{}, read(all)]];
  };
  gaugeFrom(registry, 'mainstay_transport_peer_connected', '1 if the outbound connection to this peer is established', ['peer'], perPeer((peer) => (peer.connected ? 1 : 0)));
  gaugeFrom(registry, 'mainstay_transport_peers_connected', 'Peers (servers and the manager) with an established outbound connection', [], whole((all) => all.peers.filter((peer) => peer.connected).length));
  gaugeFrom(registry, 'mainstay_transport_peers', 'Peers in the address book', [], whole((all) => all.peers.length));
  gaugeFrom(registry, 'mainstay_transport_queued_messages', 'Messages queued for a peer and not yet handed to its socket', ['peer'], perPeer((peer) => peer.queuedMessages));
  gaugeFrom(registry, 'mainstay_transport_queued_bytes', 'Frame bytes queued for a peer and not yet handed to its socket', ['peer'], perPeer((peer) => peer.queuedBytes));
  gaugeFrom(registry, 'mainstay_transport_socket_buffered_bytes', 'Bytes handed to a peer\'s socket and not yet passed to the kernel', ['peer'], perPeer((peer) => peer.socketBufferedBytes));
  counterFrom(registry, 'mainstay_transport_sent_messages_total', 'Messages written to a peer\'s socket', ['peer'], perPeer((peer) => peer.sentMessages));
  counterFrom(registry, 'mainstay_transport_dropped_messages_total', 'Messages to a peer dropped because its queue was full', ['peer'], perPeer((peer) => peer.dropped));
  counterFrom(registry, 'mainstay_transport_reconnects_total', 'Connection attempts to a peer after the first', ['peer'], perPeer((peer) => peer.reconnects));
  counterFrom(registry, 'mainstay_transport_dropped_no_address_messages_total', 'Messages dropped because the address book had no address for their peer', [], whole((all) => all.droppedNoAddress));
  gaugeFrom(registry, 'mainstay_transport_inbound_connections', 'Inbound peer connections that said hello', [], whole((all) => all.inboundConnections));
  counterFrom(registry, 'mainstay_transport_received_messages_total', 'Messages received from peers', [], whole((all) => all.receivedMessages));
  counterFrom(registry, 'mainstay_transport_rejected_connections_total', 'Inbound connections closed for a bad hello, a hello timeout or a framing error', [], whole((all) => all.rejectedConnections));
}

/**
 * The file log's disk: fsync latency, bytes written, and what each group commit made durable.
 * Made before the log is opened, so that `instrument` can wrap the file system the log uses;
 * ServerMetrics then serves its metrics.
 */
export class DiskMetrics {
  private readonly fsyncSeconds = new Histogram({
    name: 'mainstay_log_fsync_seconds', help: 'Latency of the file log\'s fsync and fdatasync calls (segments, meta file, directories)',
    buckets: fsyncSecondsBuckets, registers: [],
  });
  private readonly fsyncErrors = new Counter({ name: 'mainstay_log_fsync_errors_total', help: 'fsync and fdatasync calls of the file log that failed (the server then stops)', registers: [] });
  private readonly writtenBytes = new Counter({ name: 'mainstay_log_written_bytes_total', help: 'Bytes the file log wrote (records, meta and log-start files)', registers: [] });
  private readonly groupEntries = new Histogram({
    name: 'mainstay_log_group_commit_entries', help: 'Log entries made durable by one group commit (one sync and one durability report)',
    buckets: groupCommitEntriesBuckets, registers: [],
  });
  private readonly groupBytes = new Histogram({
    name: 'mainstay_log_group_commit_bytes', help: 'Bytes written by one group commit, from the previous durability report to this one',
    buckets: groupCommitBytesBuckets, registers: [],
  });
  /** Bytes written since the last durability report. */
  private bytesSinceReport = 0;
  /** Appends submitted and not yet reported durable, in submission (so operation id) order. */
  private readonly pending: { operationId: number; entries: number }[] = [];

  /** The metrics, for a registry. */
  get metrics(): Metric[] {
    return [this.fsyncSeconds, this.fsyncErrors, this.writtenBytes, this.groupEntries, this.groupBytes];
  }

  /**
   * `fileSystem` (node's by default) with its syncs timed and its writes counted. Each call looks
   * the method up on `fileSystem` when it runs, as the file log's own wrapper does.
   */
  instrument(fileSystem: LogFileSystem = nodeFileSystem): LogFileSystem {
    const wrapped: Record<string, unknown> = {};
    for (const name of Object.keys(nodeFileSystem) as (keyof LogFileSystem)[]) {
      const call = (...args: unknown[]): Promise<unknown> => (fileSystem[name] as (...args: unknown[]) => Promise<unknown>).apply(fileSystem, args);
      if (name === 'fsync' || name === 'fdatasync') {
        wrapped[name] = async (...args: unknown[]): Promise<unknown> => {
          const started = performance.now();
          try {
            return await call(...args);
          } catch (error) {
            this.fsyncErrors.inc();
            throw error;
          } finally {
            this.fsyncSeconds.observe((performance.now() - started) / 1000);
          }
        };
      } else if (name === 'write') {
        wrapped[name] = async (...args: unknown[]): Promise<unknown> => {
          const written = await call(...args);
          if (typeof written === 'number' && written > 0) {
            this.writtenBytes.inc(written);
            this.bytesSinceReport += written;
          }
          return written;
        };
      } else {
        wrapped[name] = call;
      }
    }
    return wrapped as unknown as LogFileSystem;
  }

  /** The core asked for a disk operation (FileLog.submit). */
  onSubmit(operationId: number, operation: DiskOperation): void {
    if (operation.type !== 'append') return;
    this.pending.push({ operationId, entries: operation.entries.length });
    if (this.pending.length > pendingOperationsMax) this.pending.shift();
  }

  /** The log reported operation `operationId` and every one before it durable (FileLog.onDurable). */
  onDurable(operationId: number): void {
    let entries = 0;
    while (this.pending.length > 0 && (this.pending[0] as { operationId: number }).operationId <= operationId) {
      entries += (this.pending.shift() as { entries: number }).entries;
    }
    // A report that covers only a meta write or a cut is not a group commit of entries.
    if (entries > 0) {
      this.groupEntries.observe(entries);
      this.groupBytes.observe(this.bytesSinceReport);
    }
    this.bytesSinceReport = 0;
  }
}

export interface ServerMetricsOptions {
  /** The file log's disk metrics, made before the log was opened; without it the log metrics stay at zero. */
  disk?: DiskMetrics;
  /** The peer transport (or observeTransport later). */
  transport?: TransportStatsSource;
  /** prom-client's default process metrics (default true). */
  processMetrics?: boolean;
}

/** The code of an HTTP error answer to a client request, or undefined for a success. */
export function answerErrorCode(response: ClientResponse): string | undefined {
  switch (response.type) {
    case 'error':
      return response.error.code;
    case 'read':
      return response.item === undefined ? 'NOT_FOUND' : undefined;
    case 'write':
      return response.result.status === 'preconditionFailed' ? 'PRECONDITION_FAILED' : undefined;
    case 'list':
      return undefined;
  }
}

/** Consistency label of a request: reads say theirs; writes are always linearizable. */
function consistencyOf(request: ClientRequest): string {
  return request.type === 'write' ? 'linearizable' : request.consistency;
}

/** What the wire protocol's front door counts (src/runtime/wire-server.ts). */
export interface WireDoorStats {
  readonly openConnections: number;
  readonly counts: { readonly requests: number; readonly refused: number; readonly broken: number };
}

export class ServerMetrics {
  private readonly registry = new Registry();
  private readonly core: ServerCore;
  private readonly disk: DiskMetrics;
  private transport: TransportStatsSource | undefined;
  private readonly requests: ReturnType<typeof fastCounter<'kind' | 'consistency' | 'outcome'>>;
  private readonly latency: FastHistogram<'kind' | 'consistency'>;
  private frontDoor: WireDoorStats | undefined;
  /** The series observeRequest counts into, by their label values (see fast-metrics.ts). */
  private readonly requestSeries = new Map<string, { count: CounterSeries; latency: HistogramSeries }>();
  private readonly events: Counter<'code'>;
  private readonly roleChanges: Counter<'role'>;
  private readonly fences: Counter;
  private readonly snapshotsSent: Counter;
  private readonly snapshotsInstalled: Counter;
  private readonly compactions: Counter;
  private readonly httpResponses: Counter<'route' | 'status'>;
  private readonly errors: Counter<'code'>;
  /**
   * As a main: the highest seq each peer acknowledged durable and matching (appendReply ok), with
   * the epoch it was acknowledged in; only acknowledgements of the current epoch count.
   */
  private readonly acknowledged = new Map<string, { epoch: number; seq: number }>();
  /** As a standby: the main's last seq as its heartbeats and appends say, in their epoch. */
  private mainPosition: { main: string; epoch: number; lastSeq: number } | undefined;

  constructor(core: ServerCore, options: ServerMetricsOptions = {}) {
    const registry = this.registry;
    this.core = core;
    this.disk = options.disk ?? new DiskMetrics();
    this.transport = options.transport;
    for (const metric of this.disk.metrics) registry.registerMetric(metric);

    // Requests. The dashboard reads mainstay_requests_total and mainstay_request_seconds by kind
    // (src/dashboard/prometheus.ts): keep their names and the kind and outcome labels.
    this.requests = fastCounter({
      name: 'mainstay_requests_total', help: 'Client requests by kind (write, read, list), consistency and outcome (ok or the error code)',
      labelNames: ['kind', 'consistency', 'outcome'], registers: [registry],
    });
    this.latency = new FastHistogram({
      name: 'mainstay_request_seconds', help: 'Client request latency, from parsed request to the core\'s answer, by kind and consistency',
      labelNames: ['kind', 'consistency'], registers: [registry], buckets: requestSecondsBuckets,
    });
    this.httpResponses = new Counter({
      name: 'mainstay_http_responses_total', help: 'HTTP answers by route (write, read, list, status, health, metrics, invalid …) and status code',
      labelNames: ['route', 'status'], registers: [registry],
    });
    this.errors = new Counter({
      name: 'mainstay_errors_total', help: 'HTTP error answers by error code (NOT_MAIN, TIMEOUT, NOT_FOUND, BAD_REQUEST …)',
      labelNames: ['code'], registers: [registry],
    });

    // Events of the core.
    this.events = new Counter({ name: 'mainstay_server_events_total', help: 'Notable server events by code (role changes, truncations, repairs, snapshots, duplicates absorbed)', labelNames: ['code'], registers: [registry] });
    this.roleChanges = new Counter({ name: 'mainstay_role_changes_total', help: 'Times this server started acting as main (role="main") or stopped (role="standby")', labelNames: ['role'], registers: [registry] });
    for (const role of ['main', 'standby']) this.roleChanges.inc({ role }, 0);
    this.fences = new Counter({ name: 'mainstay_fences_total', help: 'Fences from the manager that raised this server\'s promised epoch', registers: [registry] });
    this.snapshotsSent = new Counter({ name: 'mainstay_snapshots_sent_total', help: 'Snapshots of the state this server (as main) started sending to a peer', registers: [registry] });
    this.snapshotsInstalled = new Counter({ name: 'mainstay_snapshots_installed_total', help: 'Snapshots of the state this server installed from a main', registers: [registry] });
    this.compactions = new Counter({ name: 'mainstay_compactions_total', help: 'Log compactions the core asked for (segments below the seq may be removed)', registers: [registry] });

    // Positions and lags, read from the core at every scrape.
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
    };
    gauge('mainstay_epoch', 'Promised epoch', () => core.promised);
    gauge('mainstay_is_main', '1 if this server acts as the main', () => (core.isMain ? 1 : 0));
    gauge('mainstay_last_seq', 'Last seq in the log (written, perhaps not yet durable)', () => core.lastSeq);
    gauge('mainstay_durable_seq', 'Highest seq durable on this server\'s disk', () => core.status().lastSeq);
    gauge('mainstay_first_seq', 'First seq the log holds (entries below were compacted or came in a snapshot)', () => core.firstSeq);
    gauge('mainstay_commit_seq', 'Highest seq known committed', () => core.committed);
    gauge('mainstay_applied_seq', 'Highest seq applied to the state', () => core.applied);
    gauge('mainstay_apply_lag_entries', 'Committed entries not yet applied (commitSeq - appliedSeq)', () => Math.max(0, core.committed - core.applied));
    gauge('mainstay_incomplete', '1 if the log is incomplete (awaiting repair)', () => (core.isIncomplete ? 1 : 0));
    gauge('mainstay_installing_snapshot', '1 while a snapshot is being installed', () => (core.isInstallingSnapshot ? 1 : 0));
    gaugeFrom(registry, 'mainstay_log_memory_entries', 'Log entries held in memory for replication, as objects (the newest) or frozen in encoded chunks', ['form'], () => {
      const memory = core.logMemory;
      return [[{ form: 'objects' }, memory.objectEntries], [{ form: 'frozen' }, memory.frozenEntries]];
    });
    gauge('mainstay_log_memory_frozen_bytes', 'Bytes of the in-memory log\'s frozen chunks', () => core.logMemory.frozenBytes);
    gauge('mainstay_map_version', 'Version of the cluster map this server holds (0: none yet)', () => core.currentMap?.version ?? 0);
    gaugeFrom(registry, 'mainstay_server_info', 'Always 1; names this server', ['server'], () => [[{ server: core.id }, 1]]);
    gaugeFrom(registry, 'mainstay_role', '1 for the role this server has now: main, standby or learner (a standby may also be out of the map)', ['role'], () => {
      const role = this.role();
      return ['main', 'standby', 'learner'].map((candidate) => [{ role: candidate }, candidate === role ? 1 : 0]);
    });
    gaugeFrom(registry, 'mainstay_standby_lag_entries', 'As a standby: entries the main has logged that this server does not hold durably, as of the main\'s last heartbeat or append', ['main'], () => {
      const position = this.mainPosition;
      if (core.isMain || position === undefined || position.epoch !== core.promised) return [];
      return [[{ main: position.main }, Math.max(0, position.lastSeq - core.status().lastSeq)]];
    });
    gaugeFrom(registry, 'mainstay_peer_match_seq', 'As the main: the highest seq each peer acknowledged durable and matching in this epoch', ['peer'], () => this.peerMatches().map(([peer, match]) => [{ peer }, match]));
    gaugeFrom(registry, 'mainstay_peer_lag_entries', 'As the main: entries of its log each peer has not acknowledged (lastSeq - the peer\'s matchSeq)', ['peer'], () =>
      this.peerMatches().map(([peer, match]) => [{ peer }, Math.max(0, core.lastSeq - match)]));

    const door = (read: (door: WireDoorStats) => number) => (): [Record<never, string>, number][] =>
      (this.frontDoor === undefined ? [] : [[{}, read(this.frontDoor)]]);
    gaugeFrom(registry, 'mainstay_wire_connections', 'Open connections of the binary wire protocol', [], door((stats) => stats.openConnections));
    counterFrom(registry, 'mainstay_wire_requests_total', 'Requests received over the wire protocol (answered or refused)', [], door((stats) => stats.counts.requests + stats.counts.refused));
    counterFrom(registry, 'mainstay_wire_refused_requests_total', 'Wire requests refused before reaching the core (they broke a limit or did not decode)', [], door((stats) => stats.counts.refused));
    counterFrom(registry, 'mainstay_wire_broken_connections_total', 'Wire connections closed for a protocol error (bad preamble, oversized or tagless frame)', [], door((stats) => stats.counts.broken));

    registerTransportMetrics(registry, () => this.transport);
    if (options.processMetrics ?? true) registerProcessMetrics(registry);
  }

  /** The client port's front door, for the wire-protocol metrics. */
  observeFrontDoor(door: WireDoorStats): void {
    this.frontDoor = door;
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }

  // ---------------------------------------------------------------- hooks of the server process

  /** A client request got its answer from the core after `elapsedMs`. */
  observeRequest(request: ClientRequest, response: ClientResponse, elapsedMs: number): void {
    const outcome = response.type === 'error' ? response.error.code : 'ok';
    const consistency = consistencyOf(request);
    const key = `${request.type} ${consistency} ${outcome}`;
    let series = this.requestSeries.get(key);
    if (series === undefined) {
      series = { count: this.requests.labels({ kind: request.type, consistency, outcome }), latency: this.latency.labels({ kind: request.type, consistency }) };
      this.requestSeries.set(key, series);
    }
    series.count.inc();
    series.latency.observe(elapsedMs / 1000);
    const code = answerErrorCode(response);
    if (code !== undefined) this.errors.inc({ code });
  }

  /**
   * An HTTP answer was sent with `status`. `parsed` is what parseHttpRequest made of the request:
   * its kind, and a client request or a parse error. Client error codes are counted by observeRequest.
   */
  observeHttp(parsed: { kind: string; request?: { type: string }; error?: { code: string } }, status: number): void {
    const route = parsed.kind === 'client' ? parsed.request?.type ?? 'client' : parsed.kind === 'error' ? 'invalid' : parsed.kind;
    this.httpResponses.inc({ route, status: String(status) });
    if (parsed.kind === 'error' && parsed.error !== undefined) this.errors.inc({ code: parsed.error.code });
  }

  /** An event effect of the core (it is logged by the shell). */
  onEvent(code: ServerEventCode): void {
    this.events.inc({ code });
    switch (code) {
      case 'becameMain':
        this.roleChanges.inc({ role: 'main' });
        this.acknowledged.clear();
        break;
      case 'steppedDown':
        this.roleChanges.inc({ role: 'standby' });
        break;
      case 'snapshotSent':
        this.snapshotsSent.inc();
        break;
      case 'snapshotInstalled':
        this.snapshotsInstalled.inc();
        break;
      default:
        break;
    }
  }

  /** Effects of the core, before the shell runs them: disk appends (for group-commit sizes) and compactions. Events go to onEvent. */
  onEffects(effects: readonly ServerEffect[]): void {
    for (const effect of effects) {
      if (effect.kind === 'disk') this.disk.onSubmit(effect.operationId, effect.operation);
      else if (effect.kind === 'compact') this.compactions.inc();
    }
  }

  /** The file log reported operation `operationId` and all before it durable. */
  onDiskDurable(operationId: number): void {
    this.disk.onDurable(operationId);
  }

  /**
   * A decoded message from `from` (a peer's id, or "manager"), before the core sees it: fences,
   * the main's position (for a standby's lag) and peers' acknowledgements (for the main's view).
   */
  onMessage(from: string, message: AnyMessage): void {
    switch (message.type) {
      case 'fence':
        if (message.epoch > this.core.promised) this.fences.inc();
        break;
      case 'heartbeat':
        this.noteMainPosition(from, message.epoch, message.lastSeq);
        break;
      case 'append':
        this.noteMainPosition(from, message.epoch, message.prevSeq + message.entries.length);
        break;
      case 'appendReply': {
        if (!message.ok) break;
        const known = this.acknowledged.get(from);
        if (known !== undefined && known.epoch > message.epoch) break;
        const seq = known?.epoch === message.epoch ? Math.max(known.seq, message.ackSeq) : message.ackSeq;
        this.acknowledged.set(from, { epoch: message.epoch, seq });
        break;
      }
      default:
        break;
    }
  }

  /** The peer transport, once it exists. */
  observeTransport(transport: TransportStatsSource): void {
    this.transport = transport;
  }

  // ---------------------------------------------------------------- derived views

  private role(): 'main' | 'standby' | 'learner' {
    if (this.core.isMain) return 'main';
    const member = this.core.currentMap?.members.find((candidate) => candidate.id === this.core.id);
    return member?.role ?? 'standby';
  }

  private noteMainPosition(main: string, epoch: number, lastSeq: number): void {
    const known = this.mainPosition;
    if (known !== undefined && known.epoch === epoch && known.main === main && known.lastSeq >= lastSeq) return;
    if (known !== undefined && known.epoch > epoch) return;
    this.mainPosition = { main, epoch, lastSeq };
  }

  /** As the main: every other member with the seq it acknowledged in this epoch (0 if none yet). */
  private peerMatches(): [string, number][] {
    if (!this.core.isMain) return [];
    const epoch = this.core.promised;
    return (this.core.currentMap?.members ?? [])
      .filter((member) => member.id !== this.core.id)
      .map((member) => {
        const known = this.acknowledged.get(member.id);
        return [member.id, known !== undefined && known.epoch === epoch ? known.seq : 0];
      });
  }
}
