// Unit tests of the metrics modules: what each hook counts, read back through a Prometheus text
// parser (parse-prometheus-text-format) — a server core driven to main and fed acknowledgements,
// fences and requests; the file log's group commits through an instrumented file system; the
// manager's gauges, failover counters by reason (with reasons the real ManagerCore writes) and
// its /metrics route.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { MemoryKvStore } from '../core/kv.ts';
import type { FailoverCause, ManagerEffect, ManagerEvent } from '../core/manager.ts';
import { defaultManagerTimings, failoverCauses, initialManagerState, ManagerCore } from '../core/manager.ts';
import type { ServerEffect } from '../core/server.ts';
import { defaultServerLimits, defaultServerTimings, ServerCore, type ServerLimits } from '../core/server.ts';
import type { ClusterMap, Member, StatusMessage } from '../protocol/messages.ts';
import type { ClientRequest, ClientResponse, LogEntry } from '../protocol/types.ts';
import { epoch, seq, serverId } from '../protocol/types.ts';
import { nodeFileSystem } from '../storage/file-log-system.ts';
import { openFileLog } from '../storage/file-log.ts';
import type { TransportStats } from '../transport/tcp.ts';
import { ManagerMetrics } from './manager-metrics.ts';
import { answerErrorCode, DiskMetrics, ServerMetrics } from './metrics.ts';

interface Family {
  name: string;
  help: string;
  type: string;
  metrics: { value?: string; labels?: Record<string, string>; count?: string; sum?: string }[];
}

const parseText = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => Family[];

async function families(source: { render(): Promise<string> }): Promise<Map<string, Family>> {
  return new Map(parseText(await source.render()).map((family) => [family.name, family]));
}

/** Sum of the samples of a counter or gauge whose labels include `labels`; undefined if it has none. */
function read(all: Map<string, Family>, name: string, labels: Record<string, string> = {}): number | undefined {
  const family = all.get(name);
  assert.ok(family !== undefined, `no ${name}`);
  const matching = family.metrics.filter((sample) => Object.entries(labels).every(([key, wanted]) => sample.labels?.[key] === wanted));
  return matching.length === 0 ? undefined : matching.reduce((total, sample) => total + Number(sample.value), 0);
}

function histogram(all: Map<string, Family>, name: string): { count: number; sum: number } {
  const family = all.get(name);
  assert.equal(family?.type, 'HISTOGRAM', `${name} is a histogram`);
  return { count: Number(family?.metrics[0]?.count ?? 0), sum: Number(family?.metrics[0]?.sum ?? 0) };
}

const member = (id: string, role: Member['role'] = 'standby'): Member =>
  ({ id: serverId(id), role, priority: 0, address: `http://${id}`, peerAddress: `${id}:1` });

function newServerCore(limits: Partial<ServerLimits> = {}): ServerCore {
  return new ServerCore({ id: serverId('s1'), timings: defaultServerTimings, limits: { ...defaultServerLimits, ...limits } }, {
    meta: { promisedEpoch: epoch(0), incomplete: false }, entries: [], corruptionFound: false, bootId: 1, store: new MemoryKvStore(),
  });
}

/** Hands effects to the metrics as the shell would, and completes every disk operation at once. */
function settle(core: ServerCore, metrics: ServerMetrics, effects: ServerEffect[]): ServerEffect[] {
  const all: ServerEffect[] = [];
  let pending = effects;
  while (pending.length > 0) {
    metrics.onEffects(pending);
    for (const effect of pending) if (effect.kind === 'event') metrics.onEvent(effect.code);
    all.push(...pending);
    const last = pending.filter((effect) => effect.kind === 'disk').at(-1);
    pending = [];
    if (last !== undefined && last.kind === 'disk') {
      metrics.onDiskDurable(last.operationId);
      pending = core.onDiskDone(0, last.operationId);
    }
  }
  return all;
}

const map = (version: number, main: string | null): ClusterMap =>
  ({ version, epoch: epoch(1), main: main === null ? null : serverId(main), members: [member('s1'), member('s2'), member('s3', 'learner')], ackQuorum: 1 });

const transportStats: TransportStats = {
  peers: [
    { id: 'manager', host: '127.0.0.1', port: 1, connected: true, queuedMessages: 0, queuedBytes: 0, socketBufferedBytes: 0, sentMessages: 5, dropped: 0, reconnects: 0 },
    { id: 's2', host: '127.0.0.1', port: 2, connected: false, queuedMessages: 7, queuedBytes: 700, socketBufferedBytes: 0, sentMessages: 9, dropped: 3, reconnects: 2 },
  ],
  inboundConnections: 1, receivedMessages: 12, rejectedConnections: 0, droppedNoAddress: 4,
};

describe('ServerMetrics', () => {
  it('counts requests by kind, consistency and outcome, and HTTP answers and errors by code', async () => {
    const metrics = new ServerMetrics(newServerCore(), { processMetrics: false });
    const write: ClientRequest = { type: 'write', write: { type: 'put', key: 'a', value: new Uint8Array([1]) } };
    const localRead: ClientRequest = { type: 'read', key: 'a', consistency: 'local' };
    const linearizableRead: ClientRequest = { type: 'read', key: 'a', consistency: 'linearizable' };
    const written: ClientResponse = { type: 'write', result: { status: 'ok', seq: seq(1), epoch: epoch(1), version: 1 } };
    const notMain: ClientResponse = { type: 'error', error: { code: 'NOT_MAIN', message: 'Not the main', definite: true } };
    const absent: ClientResponse = { type: 'read', item: undefined, appliedSeq: seq(1) };
    metrics.observeRequest(write, written, 2);
    metrics.observeRequest(write, written, 4);
    metrics.observeRequest(write, notMain, 1);
    metrics.observeRequest(localRead, absent, 1);
    metrics.observeRequest(linearizableRead, absent, 1);
    metrics.observeHttp({ kind: 'client', request: write }, 200);
    metrics.observeHttp({ kind: 'error', error: { code: 'BAD_REQUEST' } }, 400);
    metrics.observeHttp({ kind: 'metrics' }, 200);
    const all = await families(metrics);
    assert.equal(read(all, 'mainstay_requests_total', { kind: 'write', outcome: 'ok', consistency: 'linearizable' }), 2);
    assert.equal(read(all, 'mainstay_requests_total', { kind: 'write', outcome: 'NOT_MAIN' }), 1);
    // A read of an absent key succeeded (the dashboard counts it as a read), and answered 404.
    assert.equal(read(all, 'mainstay_requests_total', { kind: 'read', consistency: 'local', outcome: 'ok' }), 1);
    assert.equal(read(all, 'mainstay_requests_total', { kind: 'read', consistency: 'linearizable', outcome: 'ok' }), 1);
    assert.equal(read(all, 'mainstay_errors_total', { code: 'NOT_FOUND' }), 2);
    assert.equal(read(all, 'mainstay_errors_total', { code: 'NOT_MAIN' }), 1);
    assert.equal(read(all, 'mainstay_errors_total', { code: 'BAD_REQUEST' }), 1);
    assert.equal(read(all, 'mainstay_http_responses_total', { route: 'write', status: '200' }), 1);
    assert.equal(read(all, 'mainstay_http_responses_total', { route: 'invalid', status: '400' }), 1);
    assert.equal(read(all, 'mainstay_http_responses_total', { route: 'metrics' }), 1);
    assert.equal(all.get('mainstay_request_seconds')?.type, 'HISTOGRAM');
    assert.equal(all.has('process_cpu_user_seconds_total'), false, 'process metrics are off when asked');
  });

  it('names every answer\'s error code', () => {
    assert.equal(answerErrorCode({ type: 'list', items: [], appliedSeq: seq(0) }), undefined);
    assert.equal(answerErrorCode({ type: 'write', result: { status: 'preconditionFailed', seq: seq(1), epoch: epoch(1), version: 3 } }), 'PRECONDITION_FAILED');
    assert.equal(answerErrorCode({ type: 'write', result: { status: 'txn', seq: seq(1), epoch: epoch(1), succeeded: false } }), undefined);
  });

  it('follows the core: role, fences once per epoch, peers\' acknowledgements and lag, group commits', async () => {
    const core = newServerCore();
    const metrics = new ServerMetrics(core, { processMetrics: false });
    const manager = 'manager';
    let all = await families(metrics);
    assert.equal(read(all, 'mainstay_role', { role: 'standby' }), 1);
    assert.equal(read(all, 'mainstay_peer_lag_entries'), undefined, 'no peer lag on a standby');

    // A fence raises the promised epoch: counted once, however often the manager resends it.
    for (let i = 0; i < 3; i++) {
      const fence = { type: 'fence', epoch: epoch(1) } as const;
      metrics.onMessage(manager, fence);
      settle(core, metrics, core.onManagerMessage(0, fence));
    }
    // Appointed: the core persists nothing more (the fence made epoch 1 durable) and acts as main.
    const appoint = { type: 'map', map: map(1, 's1') } as const;
    metrics.onMessage(manager, appoint);
    settle(core, metrics, core.onManagerMessage(0, appoint));
    assert.ok(core.isMain);
    all = await families(metrics);
    assert.equal(read(all, 'mainstay_fences_total'), 1);
    assert.equal(read(all, 'mainstay_role', { role: 'main' }), 1);
    assert.equal(read(all, 'mainstay_role_changes_total', { role: 'main' }), 1);
    assert.equal(read(all, 'mainstay_server_events_total', { code: 'becameMain' }), 1);
    assert.equal(read(all, 'mainstay_epoch'), 1);

    // Writes: one batch of three requests, one append, one group commit of three entries plus the epoch start.
    const requests = [0, 1, 2].map((i) => ({ requestId: i + 1, request: { type: 'write', write: { type: 'put', key: `k${i}`, value: new Uint8Array([i]) } } as ClientRequest }));
    const effects = settle(core, metrics, core.onRequests(0, requests));
    const appended = effects.filter((effect): effect is ServerEffect & { kind: 'send' } => effect.kind === 'send' && effect.to === serverId('s2') && effect.message.type === 'append')
      .flatMap((effect) => (effect.message.type === 'append' ? effect.message.entries : [] as LogEntry[]));
    assert.equal(core.lastSeq, 4);
    assert.ok(appended.length >= 3);
    // s2 acknowledges up to 2, then (late, duplicated) up to 1; s3 (a learner) says nothing.
    const reply = (ackSeq: number) => ({
      type: 'appendReply', epoch: epoch(1), bootId: 2, generation: 0, ok: true, ackSeq: seq(ackSeq), lastEpoch: epoch(1), lastSeq: seq(ackSeq), readRound: 0, appliedSeq: seq(0),
    } as const);
    metrics.onMessage('s2', reply(2));
    metrics.onMessage('s2', reply(1));
    metrics.onMessage('s2', { ...reply(4), ok: false, reason: 'mismatch' });
    all = await families(metrics);
    assert.equal(read(all, 'mainstay_peer_match_seq', { peer: 's2' }), 2);
    assert.equal(read(all, 'mainstay_peer_lag_entries', { peer: 's2' }), 2);
    assert.equal(read(all, 'mainstay_peer_lag_entries', { peer: 's3' }), 4);
    assert.equal(read(all, 'mainstay_peer_lag_entries', { peer: 's1' }), undefined, 'no lag of the main to itself');
    assert.equal(read(all, 'mainstay_last_seq'), 4);
    const groups = histogram(all, 'mainstay_log_group_commit_entries');
    assert.equal(groups.sum, 4, 'the epoch start and three writes were made durable');
    assert.ok(groups.count >= 1 && groups.count <= 2);
  });

  it('shows how the in-memory log holds its entries: objects, frozen, and the frozen bytes', async () => {
    const core = newServerCore({ logHotEntries: 1, logChunkEntries: 2 });
    const metrics = new ServerMetrics(core, { processMetrics: false });
    settle(core, metrics, core.onManagerMessage(0, { type: 'fence', epoch: epoch(1) }));
    settle(core, metrics, core.onManagerMessage(0, { type: 'map', map: map(1, 's1') }));
    const requests = [0, 1, 2, 3].map((i) => ({ requestId: i + 1, request: { type: 'write', write: { type: 'put', key: `k${i}`, value: new Uint8Array(10) } } as ClientRequest }));
    settle(core, metrics, core.onRequests(0, requests));
    assert.equal(core.lastSeq, 5, 'the epoch start and four writes');
    const all = await families(metrics);
    // Five entries, one hot at least, the rest frozen two to a chunk: 4 frozen and 1 object.
    assert.equal(read(all, 'mainstay_log_memory_entries', { form: 'frozen' }), 4);
    assert.equal(read(all, 'mainstay_log_memory_entries', { form: 'objects' }), 1);
    assert.ok((read(all, 'mainstay_log_memory_frozen_bytes') ?? 0) > 4 * 10, 'the frozen chunks hold the values');
  });

  it('reports a standby\'s lag behind the main from heartbeats and appends, in the promised epoch only', async () => {
    const core = newServerCore();
    const metrics = new ServerMetrics(core, { processMetrics: false });
    const heartbeat = (lastSeq: number, heartbeatEpoch = 1) => ({
      type: 'heartbeat', epoch: epoch(heartbeatEpoch), commitSeq: seq(0), epochStartSeq: seq(1), readRound: 0, forBootId: 1, lastSeq: seq(lastSeq), ackQuorum: 1,
    } as const);
    metrics.onMessage('s2', heartbeat(10));
    let all = await families(metrics);
    assert.equal(read(all, 'mainstay_standby_lag_entries'), undefined, 'epoch 1 is not promised yet');
    settle(core, metrics, core.onManagerMessage(0, { type: 'fence', epoch: epoch(1) }));
    all = await families(metrics);
    assert.equal(read(all, 'mainstay_standby_lag_entries', { main: 's2' }), 10);
    metrics.onMessage('s2', heartbeat(7));
    metrics.onMessage('s2', { type: 'append', epoch: epoch(1), generation: 0, prevSeq: seq(10), prevEpoch: epoch(1), entries: [
      { epoch: epoch(1), seq: seq(11), write: { type: 'epochStart' } }, { epoch: epoch(1), seq: seq(12), write: { type: 'epochStart' } },
    ], commitSeq: seq(0), ackQuorum: 1 });
    all = await families(metrics);
    assert.equal(read(all, 'mainstay_standby_lag_entries', { main: 's2' }), 12, 'the highest position heard in the epoch');
  });

  it('serves the transport\'s connections, queues and drops', async () => {
    const metrics = new ServerMetrics(newServerCore(), { processMetrics: false });
    let all = await families(metrics);
    assert.equal(read(all, 'mainstay_transport_peers_connected'), 0, 'no transport yet');
    assert.equal(read(all, 'mainstay_transport_peer_connected'), undefined, 'no peers yet');
    metrics.observeTransport({ stats: () => transportStats });
    all = await families(metrics);
    assert.equal(read(all, 'mainstay_transport_peers_connected'), 1);
    assert.equal(read(all, 'mainstay_transport_peer_connected', { peer: 's2' }), 0);
    assert.equal(read(all, 'mainstay_transport_queued_messages', { peer: 's2' }), 7);
    assert.equal(read(all, 'mainstay_transport_dropped_messages_total', { peer: 's2' }), 3);
    assert.equal(read(all, 'mainstay_transport_dropped_no_address_messages_total'), 4);
    assert.equal(all.get('mainstay_transport_dropped_messages_total')?.type, 'COUNTER');
  });

  it('includes prom-client\'s default process metrics by default', async () => {
    const all = await families(new ServerMetrics(newServerCore()));
    for (const name of ['process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_heap_size_used_bytes']) assert.ok(all.has(name), name);
  });
});

describe('DiskMetrics', () => {
  const folders: string[] = [];
  after(async () => {
    await Promise.all(folders.map((folder) => rm(folder, { recursive: true, force: true })));
  });

  it('times the file log\'s syncs and measures its group commits', async () => {
    const folder = await mkdtemp(join(tmpdir(), 'mainstay-metrics-'));
    folders.push(folder);
    const disk = new DiskMetrics();
    const metrics = new ServerMetrics(newServerCore(), { disk, processMetrics: false });
    const { log } = await openFileLog(folder, { fileSystem: disk.instrument() });
    const durable: number[] = [];
    log.onDurable = (operationId) => {
      metrics.onDiskDurable(operationId);
      durable.push(operationId);
    };
    const entries = (from: number, count: number): LogEntry[] =>
      Array.from({ length: count }, (_, i) => ({ epoch: epoch(1), seq: seq(from + i), write: { type: 'put', key: `k${from + i}`, value: new Uint8Array(100) } }));
    const submit = (operationId: number, from: number, count: number): void => {
      const operation = { type: 'append', entries: entries(from, count) } as const;
      metrics.onEffects([{ kind: 'disk', operationId, operation }]);
      log.submit(operationId, operation);
    };
    // Three appends in one turn of the event loop: one group, one sync, one report.
    submit(1, 1, 5);
    submit(2, 6, 5);
    submit(3, 11, 2);
    while (!durable.includes(3)) await new Promise((resolve) => setTimeout(resolve, 5));
    submit(4, 13, 1);
    while (!durable.includes(4)) await new Promise((resolve) => setTimeout(resolve, 5));
    await log.close();
    const all = await families(metrics);
    const groups = histogram(all, 'mainstay_log_group_commit_entries');
    assert.deepEqual(groups, { count: 2, sum: 13 });
    const bytes = histogram(all, 'mainstay_log_group_commit_bytes');
    assert.equal(bytes.count, 2);
    assert.ok(bytes.sum > 13 * 100, `the groups wrote ${bytes.sum} bytes`);
    assert.ok(histogram(all, 'mainstay_log_fsync_seconds').count >= 2, 'each group was synced');
    assert.ok((read(all, 'mainstay_log_written_bytes_total') as number) >= bytes.sum);
    assert.equal(read(all, 'mainstay_log_fsync_errors_total'), 0);
  });

  it('counts a failed sync and passes its error on', async () => {
    const disk = new DiskMetrics();
    const failing = { ...nodeFileSystem, fdatasync: () => Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' })) };
    await assert.rejects(disk.instrument(failing).fdatasync(3), /EIO/);
    const registry = new ServerMetrics(newServerCore(), { disk, processMetrics: false });
    const all = await families(registry);
    assert.equal(read(all, 'mainstay_log_fsync_errors_total'), 1);
    assert.equal(histogram(all, 'mainstay_log_fsync_seconds').count, 1);
  });
});

/** Drives a ManagerCore: persists at once, and hands every event to the metrics. */
class ManagerDriver {
  readonly events: ManagerEvent[] = [];
  readonly core: ManagerCore;
  readonly metrics: ManagerMetrics;
  now = 0;

  constructor(members: Member[], ackQuorum: number) {
    this.core = new ManagerCore({ timings: defaultManagerTimings }, initialManagerState(members, ackQuorum), 0);
    this.metrics = new ManagerMetrics(this.core, { processMetrics: false, statusFreshMs: defaultManagerTimings.statusFreshMs });
  }

  run(effects: ManagerEffect[]): void {
    for (const effect of effects) {
      if (effect.kind === 'event') {
        this.metrics.onEvent(effect.event);
        if (effect.event !== undefined) this.events.push(effect.event);
      } else if (effect.kind === 'persist') {
        this.run(this.core.onPersisted(this.now, effect.persistId));
      }
    }
  }

  status(id: string, fields: Partial<StatusMessage>): void {
    const status: StatusMessage = {
      type: 'status', bootId: 1, promisedEpoch: this.core.currentState.epoch, role: 'standby', lastEpoch: epoch(1), lastSeq: seq(0), commitSeq: seq(0), appliedSeq: seq(0),
      incomplete: false, contacts: [], standbysInContact: 0, mapVersion: this.core.currentMap?.version ?? 0, confirmedMapVersion: 0, ...fields,
    };
    this.run(this.core.onStatus(this.now, serverId(id), status));
  }

  /** Start, fence everyone, and appoint s1 (every log equal: the lowest id wins). */
  appoint(): void {
    this.run(this.core.start(this.now));
    for (const id of ['s1', 's2', 's3']) {
      this.run(this.core.onFenceReply(this.now, serverId(id), { type: 'fenceReply', epoch: this.core.currentState.epoch, lastEpoch: epoch(0), lastSeq: seq(0), incomplete: false }));
    }
  }
}

describe('ManagerMetrics', () => {
  const servers: Server[] = [];
  after(() => {
    for (const server of servers) server.close();
  });

  it('follows the cluster: main present, K, reporting, in contact, lag, and failovers by the core\'s own reasons', async () => {
    const driver = new ManagerDriver([member('s1'), member('s2'), member('s3')], 1);
    let all = await families(driver.metrics);
    assert.equal(read(all, 'mainstay_manager_main_present'), 0);
    for (const reason of ['initial', 'main_restarted', 'main_did_not_start', 'main_silent', 'main_connection_closed', 'main_isolated', 'switchover']) assert.equal(read(all, 'mainstay_manager_failovers_total', { reason }), 0, 'every reason starts at zero');

    driver.appoint();
    assert.equal(driver.core.currentState.main, 's1');
    driver.now = 100;
    driver.status('s1', { role: 'main', bootId: 7, lastSeq: seq(50), commitSeq: seq(48), standbysInContact: 2 });
    driver.status('s2', { lastSeq: seq(45), contacts: [serverId('s1')] });
    driver.status('s3', { lastSeq: seq(50), incomplete: true, contacts: [serverId('s1')] });
    driver.run(driver.core.tick(driver.now));
    all = await families(driver.metrics);
    assert.equal(read(all, 'mainstay_manager_main_present'), 1);
    assert.equal(read(all, 'mainstay_manager_epoch'), 1);
    assert.equal(read(all, 'mainstay_manager_ack_quorum'), 1);
    assert.equal(read(all, 'mainstay_manager_servers_reporting'), 3);
    assert.equal(read(all, 'mainstay_manager_standbys'), 2);
    assert.equal(read(all, 'mainstay_manager_standbys_in_contact'), 2);
    assert.equal(read(all, 'mainstay_manager_standbys_reporting_complete'), 1);
    assert.equal(read(all, 'mainstay_manager_server_lag_entries', { server: 's2' }), 5);
    assert.equal(read(all, 'mainstay_manager_server_lag_entries', { server: 's3' }), 0);
    assert.equal(read(all, 'mainstay_manager_server_lag_entries', { server: 's1' }), undefined);
    assert.equal(read(all, 'mainstay_manager_server_incomplete', { server: 's3' }), 1);
    assert.equal(read(all, 'mainstay_manager_failovers_total', { reason: 'initial' }), 1);
    assert.equal(read(all, 'mainstay_manager_appointments_total'), 1);
    assert.ok((read(all, 'mainstay_manager_fence_quorum_waits_total') as number) >= 1, 'the first fence replies were not a quorum yet');

    // The main comes back with another bootId: the core fails over because it restarted.
    driver.now = 200;
    driver.status('s1', { role: 'standby', bootId: 8, promisedEpoch: epoch(1) });
    driver.run(driver.core.tick(driver.now));
    all = await families(driver.metrics);
    assert.equal(read(all, 'mainstay_manager_failovers_total', { reason: 'main_restarted' }), 1);
    assert.equal(read(all, 'mainstay_manager_failover_in_progress'), 1);
    assert.equal(read(all, 'mainstay_manager_main_present'), 0);
    assert.equal(read(all, 'mainstay_manager_standbys_in_contact'), 0);
    assert.equal(read(all, 'mainstay_manager_epoch'), 2);

    // Once statuses go stale, nobody is reporting.
    driver.now = 200 + defaultManagerTimings.statusFreshMs + 1;
    driver.run(driver.core.tick(driver.now));
    all = await families(driver.metrics);
    assert.equal(read(all, 'mainstay_manager_servers_reporting'), 0);
    assert.equal(read(all, 'mainstay_manager_server_up', { server: 's2' }), 0);
  });

  it('names the reason of a main lost with its connection', async () => {
    const driver = new ManagerDriver([member('s1'), member('s2'), member('s3')], 1);
    driver.appoint();
    driver.now = 10;
    driver.status('s1', { role: 'main', bootId: 7 });
    driver.run(driver.core.onPeerLost(driver.now, serverId('s1')));
    driver.now = 10 + defaultManagerTimings.lostFailoverMs;
    driver.status('s2', {});
    driver.status('s3', {});
    driver.run(driver.core.tick(driver.now));
    const started = driver.events.filter((event) => event.type === 'failoverStarted');
    assert.equal(started.length, 2, JSON.stringify(started));
    const all = await families(driver.metrics);
    assert.equal(read(all, 'mainstay_manager_failovers_total', { reason: 'main_connection_closed' }), 1, (started[1] as { reason: string }).reason);
  });

  it('labels every failover cause the core reports', async () => {
    const expected: [FailoverCause, string][] = [
      ['initial', 'initial'], ['mainRestarted', 'main_restarted'], ['mainDidNotStart', 'main_did_not_start'], ['mainSilent', 'main_silent'],
      ['mainConnectionClosed', 'main_connection_closed'], ['mainIsolated', 'main_isolated'], ['switchover', 'switchover'],
    ];
    assert.deepEqual(expected.map(([cause]) => cause), [...failoverCauses], 'every cause has a label here');
    const driver = new ManagerDriver([member('s1'), member('s2')], 1);
    for (const [cause] of expected) driver.metrics.onEvent({ type: 'failoverStarted', epoch: epoch(9), cause, reason: 'words' });
    const all = await families(driver.metrics);
    for (const [, label] of expected) assert.equal(read(all, 'mainstay_manager_failovers_total', { reason: label }), 1, label);
  });

  it('serves GET /metrics and leaves other paths to the caller', async () => {
    const driver = new ManagerDriver([member('s1'), member('s2')], 1);
    driver.metrics.onEvent({ type: 'switchoverRequested', target: serverId('s2') });
    const server = createServer((request, response) => {
      if (driver.metrics.serve(request, response)) return;
      response.writeHead(404);
      response.end();
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    const ok = await fetch(`${base}/metrics`);
    assert.equal(ok.status, 200);
    assert.match(ok.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const parsed = new Map(parseText(await ok.text()).map((family) => [family.name, family]));
    assert.equal(read(parsed, 'mainstay_manager_switchovers_requested_total'), 1);
    const post = await fetch(`${base}/metrics`, { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(post.headers.get('allow'), 'GET, HEAD');
    assert.equal((await fetch(`${base}/v1/cluster`)).status, 404);
  });
});
