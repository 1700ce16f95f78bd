// The server process: drives ServerCore with the real clock, the file log, the LMDB state and the
// TCP transport, and serves the client HTTP API. It translates and carries; every decision (roles,
// commits, acks, what to answer) is the core's. Client requests that arrive in one event-loop turn
// reach the core as one batch, so one disk write and one message per standby cover them all.

import { randomInt } from 'node:crypto';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { mkdir } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { join, resolve as resolvePath } from 'node:path';
import type { Logger } from 'pino';
import type { DiskOperation, IncomingRequest, ServerEffect, ServerLimits, ServerTimings } from '../core/server.ts';
import { ServerCore } from '../core/server.ts';
import { decodeMessage, encodeMessage } from '../protocol/codec.ts';
import type { ClusterMap, PeerMessage } from '../protocol/messages.ts';
import type { ClientRequest, ClientResponse, Seq, ServerId } from '../protocol/types.ts';
import { serverId } from '../protocol/types.ts';
import type { HttpApiLimits } from '../server/http-api.ts';
import { memberAddress, parseHttpRequest, renderClientResponse, renderParseError } from '../server/http-api.ts';
import { plantedBugsFromEnv } from '../core/bugs.ts';
import { faultFileSystemFromEnv } from '../storage/fault-fs.ts';
import { openFileLog } from '../storage/file-log.ts';
import { openLmdbStore } from '../storage/lmdb-store.ts';
import { compactLog, LogArchiver } from '../storage/log-archive.ts';
import { TcpTransport } from '../transport/tcp.ts';
import type { HostPort } from './config.ts';
import { formatHostPort, listen, parseHostPort } from './config.ts';
import { DiskMetrics, ServerMetrics } from './metrics.ts';
import { handleSnapshotRequest, snapshotPath } from './snapshot-http.ts';
import { openStepTrace } from './step-trace.ts';
import { WatchHub } from './watch-http.ts';
import { ClientFrontDoor } from './wire-server.ts';

export interface ServerProcessConfig {
  id: string;
  dataDir: string;
  listenHttp: HostPort;
  listenPeer: HostPort;
  manager: HostPort;
  timings: ServerTimings;
  limits: ServerLimits;
  httpLimits: HttpApiLimits;
  segmentBytesMax: number;
  /** See LmdbStoreOptions.commitDelayMs. */
  stateCommitDelayMs?: number;
  /** Where compacted log segments are archived (in a subfolder named by id) before deletion; unset: nowhere. */
  logArchiveDir?: string;
  /** Where the timeline of this server's steps goes (--trace-steps, see step-trace.ts); unset: nowhere. */
  traceStepsFile?: string;
  logger: Logger;
}

export interface RunningServer {
  core: ServerCore;
  httpAddress: HostPort;
  close(): Promise<void>;
}

const now = (): number => performance.now();

function countReplies(effects: readonly ServerEffect[]): number {
  let replies = 0;
  for (const effect of effects) if (effect.kind === 'reply') replies++;
  return replies;
}

const MANAGER = 'manager';

export async function startServerProcess(config: ServerProcessConfig): Promise<RunningServer> {
  const logger = config.logger;
  const trace = openStepTrace(config.traceStepsFile, (error) => logger.warn({ err: error }, 'Could not write the step trace'));
  const id: ServerId = serverId(config.id);
  await mkdir(config.dataDir, { recursive: true });
  // Test-only storage faults (fault-fs.ts), when the chaos harness sets MAINSTAY_TEST_FAULTS.
  const faults = faultFileSystemFromEnv(process.env);
  if (faults !== undefined) logger.warn({ powerLoss: faults.powerLoss, controlFile: faults.controlFile }, 'Test-only storage faults are on (MAINSTAY_TEST_FAULTS)');
  const diskMetrics = new DiskMetrics();
  const opened = await openFileLog(config.dataDir, { segmentBytesMax: config.segmentBytesMax, fileSystem: diskMetrics.instrument(faults) });
  for (const warning of opened.warnings ?? []) logger.warn(warning);
  const { log, recovered } = opened;
  const store = await openLmdbStore(join(config.dataDir, 'state'), config.stateCommitDelayMs === undefined ? {} : { commitDelayMs: config.stateCommitDelayMs });
  let archiver: LogArchiver | undefined;
  if (config.logArchiveDir !== undefined) {
    try {
      archiver = await LogArchiver.open(resolvePath(config.logArchiveDir), config.id);
    } catch (error) {
      await log.close();
      await store.close();
      throw new Error(`Cannot use the log archive folder ${config.logArchiveDir}: ${(error as Error).message}`, { cause: error });
    }
    logger.info({ archive: archiver.directory }, 'Archiving compacted log segments');
  }
  if (recovered.tornTailCut) logger.warn('The log ended in a torn record (a write cut by a crash); it was cut');
  if (recovered.corruptionFound) logger.error('The log failed its checksum below its last record: this server is incomplete until repaired from the main');
  const bootId = randomInt(1, 2 ** 47);
  const bugs = plantedBugsFromEnv(process.env);
  if (bugs.size > 0) logger.warn({ bugs: [...bugs] }, 'Planted protocol bugs are on (MAINSTAY_PLANTED_BUGS): this server is unsafe by design');
  // The change stream (GET /v1/watch) records what each entry changes as the core applies it.
  const watches = new WatchHub(store, { logger });
  const core = new ServerCore({ id, timings: config.timings, limits: config.limits, bugs, checksum: (bytes) => zlibCrc32(bytes) }, {
    meta: recovered.meta, entries: recovered.entries, firstSeq: recovered.firstSeq, baseEpoch: recovered.baseEpoch,
    corruptionFound: recovered.corruptionFound, bootId, store: watches.store,
  });
  watches.attach(core);
  logger.info({ lastSeq: core.lastSeq, appliedSeq: core.applied, promisedEpoch: core.promised, bootId }, 'Recovered; starting as a standby');

  const metrics = new ServerMetrics(core, { disk: diskMetrics });
  const transport = new TcpTransport({ selfId: config.id, listen: config.listenPeer, peers: new Map([[MANAGER, config.manager]]), logger });
  metrics.observeTransport(transport);
  const waiting = new Map<number, (response: ClientResponse) => void>();
  let batch: IncomingRequest[] = [];
  let nextRequestId = 1;
  let knownMapVersion = -1;
  let stopping = false;

  const updatePeers = (map: ClusterMap | undefined): void => {
    if (map === undefined || map.version === knownMapVersion) return;
    knownMapVersion = map.version;
    const peers = new Map<string, HostPort>([[MANAGER, config.manager]]);
    for (const member of map.members) {
      if (member.id !== id) peers.set(member.id, parseHostPort(member.peerAddress, `the peer address of ${member.id}`));
    }
    transport.updatePeers(peers);
  };

  // Compaction: once the state store is durable up to throughSeq (it is at least there when the
  // core compacts), the log's segments wholly below throughSeq + 1 may go; with an archive, only
  // those archived first, durably (compactLog). One at a time.
  let compacting: Promise<void> = Promise.resolve();
  const compact = (throughSeq: Seq): void => {
    compacting = compacting
      .then(() => store.flushed())
      .then(async () => {
        let result;
        try {
          result = await compactLog(log, archiver, throughSeq);
        } catch (error) {
          if (stopping) return;
          if (archiver !== undefined && log.failed === undefined) {
            logger.error({ err: error, archive: archiver.directory }, 'Cannot archive the log segments a compaction would delete; the log keeps them and the next compaction tries again');
          } else {
            logger.warn({ err: error }, 'Log compaction failed; the log keeps its old segments');
          }
          return;
        }
        const { removed, archive } = result;
        if (archive !== undefined && archive.vanished.length > 0) {
          logger.warn({ segments: archive.vanished.map((segment) => segment.name) }, 'Log segments were deleted before they could be archived: the log was reset to a snapshot (their entries are in the archive of the server that compacted them, if it archives)');
        }
        if (removed > 0) logger.debug({ throughSeq, removed, archived: archive?.archived.length, firstSeq: log.firstSeq }, 'Compacted the log');
      });
  };

  // A resetLog (after a snapshot install, or before one) may reach the disk only once the state
  // store holds what it relies on (the core's contract): it and every disk operation after it
  // wait for LMDB to be durable, in order. Otherwise a crash could leave a log that starts after
  // a snapshot the store does not hold, and the restart would discard entries already acknowledged.
  let diskGate: Promise<void> | null = null;
  const submitDisk = (operationId: number, operation: DiskOperation): void => {
    if (operation.type === 'resetLog' || diskGate !== null) {
      const gate: Promise<void> = (diskGate ?? Promise.resolve())
        .then(() => (operation.type === 'resetLog' ? store.flushed() : undefined))
        .then(() => log.submit(operationId, operation))
        .catch((error: unknown) => log.onError(error as Error))
        .finally(() => {
          if (diskGate === gate) diskGate = null;
        });
      diskGate = gate;
      return;
    }
    log.submit(operationId, operation);
  };

  const run = (effects: ServerEffect[]): void => {
    metrics.onEffects(effects);
    updatePeers(core.currentMap);
    // Messages first, and out at once (one socket write per peer): standbys start on an append
    // while this server encodes and writes its own copy. Nothing depends on the order: the core
    // learns what is durable only from onDiskDone.
    let sent = false;
    for (const effect of effects) {
      if (effect.kind === 'send') transport.send(effect.to, encodeMessage(effect.message));
      else if (effect.kind === 'sendManager') transport.send(MANAGER, encodeMessage(effect.message));
      else continue;
      sent = true;
    }
    if (sent) transport.flushNow();
    if (trace.enabled) trace.mark('sent', countReplies(effects));
    for (const effect of effects) {
      switch (effect.kind) {
        case 'send':
        case 'sendManager':
          break;
        case 'disk':
          submitDisk(effect.operationId, effect.operation);
          break;
        case 'reply': {
          const resolve = waiting.get(effect.requestId);
          waiting.delete(effect.requestId);
          resolve?.(effect.response);
          break;
        }
        case 'compact':
          compact(effect.throughSeq);
          break;
        case 'event':
          metrics.onEvent(effect.code);
          logger[effect.level]({ code: effect.code }, effect.message);
          break;
      }
    }
    watches.onProgress();
    trace.mark('stepEnd');
  };

  log.onDurable = (operationId: number): void => {
    trace.mark('durable');
    metrics.onDiskDurable(operationId);
    run(core.onDiskDone(now(), operationId));
  };
  log.onError = (error: Error): void => {
    // The disk failed: nothing after this may be acknowledged. Stop; a restart recovers from what
    // is durable (retrying an fsync after a failure cannot be trusted).
    logger.fatal({ err: error }, 'The disk failed; stopping without acknowledging anything more');
    process.exit(1);
  };
  // A peer's connection closed: maybe its process is gone (see ServerCore.onPeerLost).
  transport.onPeerLost = (from: string): void => {
    if (from !== MANAGER) run(core.onPeerLost(now(), serverId(from)));
  };
  transport.onMessage = (from: string, payload: Uint8Array): void => {
    let message;
    try {
      message = decodeMessage(payload);
    } catch (error) {
      logger.warn({ from, err: error }, 'Ignoring an undecodable message');
      return;
    }
    if (message.type === 'append') trace.mark('append', message.entries.length);
    else if (message.type === 'appendReply') trace.mark('ack');
    metrics.onMessage(from, message);
    if (from === MANAGER) {
      if (message.type === 'map' || message.type === 'fence' || message.type === 'switchover') run(core.onManagerMessage(now(), message));
      else logger.debug({ type: message.type }, 'Ignoring a message the manager does not send');
      return;
    }
    run(core.onPeerMessage(now(), serverId(from), message as PeerMessage));
  };

  // Requests that arrive in one event-loop turn, over HTTP or the wire protocol, reach the core together.
  const dispatchBatch = (): void => {
    if (batch.length === 0) return;
    const requests = batch;
    batch = [];
    trace.mark('requests', requests.length);
    run(core.onRequests(now(), requests));
  };
  const enqueue = (request: ClientRequest, answer: (response: ClientResponse) => void): void => {
    const requestId = nextRequestId++;
    waiting.set(requestId, answer);
    batch.push({ requestId, request });
    if (batch.length === 1) setImmediate(dispatchBatch);
  };
  const submit = (request: ClientRequest): Promise<ClientResponse> => new Promise((resolve) => enqueue(request, resolve));

  await transport.start();
  const ticker = setInterval(() => run(core.tick(now())), Math.max(5, Math.floor(config.timings.heartbeatMs / 2)));
  run(core.tick(now()));

  const http = createServer({ keepAlive: true }, (request, response) => {
    if (new URL(request.url ?? '/', 'http://server').pathname === snapshotPath) {
      handleSnapshotRequest(store, request, response, { onError: (error) => logger.warn({ err: error }, 'A snapshot stream failed') })
        .catch((error: unknown) => logger.error({ err: error }, 'The snapshot handler failed'));
      return;
    }
    handleHttp(request, response).catch((error: unknown) => {
      logger.error({ err: error }, 'HTTP handler failed');
      if (!response.headersSent) response.writeHead(500, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ error: { code: 'INTERNAL', message: 'Internal error', definite: false } }));
    });
  });

  async function handleHttp(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const body = await readBody(request, config.httpLimits.requestBodyBytesMax);
    const url = new URL(request.url ?? '/', 'http://server');
    const headers: Record<string, string | undefined> = {};
    for (const [name, value] of Object.entries(request.headers)) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    const parsed = body === 'tooLarge'
      ? parseHttpRequest({ method: request.method ?? 'GET', path: url.pathname, query: url.search, headers, body: new Uint8Array(0), bodyTooLarge: true }, config.httpLimits)
      : parseHttpRequest({ method: request.method ?? 'GET', path: url.pathname, query: url.search, headers, body }, config.httpLimits);
    const started = now();
    let output: { status: number; headers: Record<string, string>; body: Uint8Array | string };
    switch (parsed.kind) {
      case 'error':
        output = renderParseError(parsed);
        break;
      case 'watch':
        watches.serve(parsed.watch, response);
        return;
      case 'health':
        output = { status: 200, headers: { 'content-type': 'application/json' }, body: `${JSON.stringify({ ok: true, id: config.id })}\n` };
        break;
      case 'status':
        output = { status: 200, headers: { 'content-type': 'application/json' }, body: `${JSON.stringify(serverStatusView(core, config, transport))}\n` };
        break;
      case 'metrics':
        output = { status: 200, headers: { 'content-type': metrics.contentType }, body: await metrics.render() };
        break;
      case 'client': {
        if (stopping) {
          output = { status: 503, headers: { 'content-type': 'application/json' }, body: `${JSON.stringify({ error: { code: 'UNAVAILABLE', message: 'The server is shutting down', definite: true } })}\n` };
          break;
        }
        const clientResponse = await submit(parsed.request);
        metrics.observeRequest(parsed.request, clientResponse, now() - started);
        const context: { mainAddress?: string; target?: string } = { target: request.url ?? '/' };
        const main = clientResponse.type === 'error' && clientResponse.error.main !== undefined
          ? memberAddress(core.currentMap, clientResponse.error.main) : undefined;
        if (main !== undefined) context.mainAddress = main;
        output = renderClientResponse(clientResponse, parsed.request, context);
        break;
      }
    }
    metrics.observeHttp(parsed, output.status);
    response.writeHead(output.status, output.headers);
    response.end(output.body);
  }

  // One port for both client protocols: the front door hands HTTP connections to `http`.
  const frontDoor = new ClientFrontDoor({
    http, limits: config.httpLimits, logger,
    submit: (request, answer) => {
      const started = now();
      enqueue(request, (response) => {
        metrics.observeRequest(request, response, now() - started);
        answer(response);
      });
    },
    // A wire chunk's requests go to the core as soon as the chunk is read (with whatever else is
    // waiting), not a turn later: a chunk usually holds every request its client had ready.
    afterChunk: dispatchBatch,
    onAnswersWritten: (count) => trace.mark('answered', count),
    mainAddress: (response) => (response.type === 'error' && response.error.main !== undefined ? memberAddress(core.currentMap, response.error.main) : undefined),
  });
  metrics.observeFrontDoor(frontDoor);
  await listen(frontDoor.server, config.listenHttp);
  // node:http starts tracking its connections (request and header timeouts, closeIdleConnections)
  // when it starts listening; the front door listens for it, so tell it.
  http.emit('listening');
  const address = frontDoor.server.address() as { address: string; port: number };
  logger.info({ http: `${address.address}:${address.port}`, peer: formatHostPort(config.listenPeer) }, 'Server is listening');

  return {
    core,
    httpAddress: { host: address.address, port: address.port },
    async close(): Promise<void> {
      stopping = true;
      clearInterval(ticker);
      watches.close();
      // Stop accepting; let requests in progress finish briefly, then cut what is left.
      frontDoor.stop();
      const closed = new Promise<void>((resolve) => frontDoor.server.close(() => resolve()));
      http.closeIdleConnections();
      const grace = setTimeout(() => frontDoor.destroyAll(), 1000);
      await closed;
      clearTimeout(grace);
      // Stops node:http's connection checks (it never listened itself, so the callback reports that).
      http.close(() => {});
      await transport.close();
      trace.close();
      await compacting;
      await log.close();
      await store.close();
    },
  };
}


/** Read a request body, refusing (without buffering) more than `limit` bytes. */
function readBody(request: IncomingMessage, limit: number): Promise<Uint8Array | 'tooLarge'> {
  return new Promise((resolve, reject) => {
    const declared = Number(request.headers['content-length'] ?? '0');
    if (declared > limit) {
      request.resume();
      resolve('tooLarge');
      return;
    }
    const chunks: Buffer[] = [];
    let length = 0;
    let tooLarge = false;
    request.on('data', (chunk: Buffer) => {
      length += chunk.length;
      if (length > limit) tooLarge = true;
      else chunks.push(chunk);
    });
    request.on('end', () => resolve(tooLarge ? 'tooLarge' : new Uint8Array(Buffer.concat(chunks))));
    request.on('error', reject);
  });
}

export function serverStatusView(core: ServerCore, config: ServerProcessConfig, transport: TcpTransport): unknown {
  const status = core.status();
  const map = core.currentMap;
  return {
    id: config.id,
    role: status.role,
    epoch: status.promisedEpoch,
    lastEpoch: status.lastEpoch,
    lastSeq: core.lastSeq,
    durableSeq: status.lastSeq,
    firstSeq: core.firstSeq,
    commitSeq: status.commitSeq,
    appliedSeq: status.appliedSeq,
    incomplete: status.incomplete,
    contacts: status.contacts,
    map: map ?? null,
    peers: transport.stats(),
  };
}
