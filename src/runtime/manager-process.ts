// The manager process: drives ManagerCore with the real clock, a state file on disk and the TCP
// transport, and serves the manager's HTTP API (cluster map, status of every server, switchover,
// membership and K changes). It decides nothing itself: every decision is the core's; this file
// only validates requests and carries inputs and effects.

import { mkdir, readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ManagerEffect, ManagerState, NewServer } from '../core/manager.ts';
import { defaultManagerTimings, initialManagerState, ManagerCore } from '../core/manager.ts';
import { Dashboard } from '../dashboard/server.ts';
import { decodeMessage, encodeMessage } from '../protocol/codec.ts';
import type { Member, ServerToManager } from '../protocol/messages.ts';
import { serverId } from '../protocol/types.ts';
import { writeFileAtomic } from '../storage/atomic-file.ts';
import { TcpTransport } from '../transport/tcp.ts';
import type { HostPort, ServerAddressBook } from './config.ts';
import { formatHostPort, listen, parseHostPort } from './config.ts';
import { ManagerMetrics } from './manager-metrics.ts';

export interface ManagerProcessConfig {
  /** A new cluster's epoch before its first appointment (the epoch of restored data). */
  initialEpoch?: number;
  dataDir: string;
  listenHttp: HostPort;
  listenPeer: HostPort;
  servers: ServerAddressBook[];
  ackQuorum: number;
  heartbeatMs: number;
  failoverAfterMs: number;
  logger: Logger;
}

export interface RunningManager {
  core: ManagerCore;
  httpAddress: HostPort;
  peerAddress: HostPort;
  close(): Promise<void>;
}

const now = (): number => performance.now();

function memberOf(server: ServerAddressBook): Member {
  return {
    id: serverId(server.id), role: 'standby', priority: 0,
    address: `http://${formatHostPort(server.http)}`, peerAddress: formatHostPort(server.peer),
  };
}

async function loadState(path: string, config: ManagerProcessConfig): Promise<{ state: ManagerState; fresh: boolean }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    return { state: initialManagerState(config.servers.map(memberOf), config.ackQuorum, config.initialEpoch ?? 0), fresh: true };
  }
  return { state: JSON.parse(text) as ManagerState, fresh: false };
}

export async function startManagerProcess(config: ManagerProcessConfig): Promise<RunningManager> {
  const logger = config.logger;
  await mkdir(config.dataDir, { recursive: true });
  const statePath = join(config.dataDir, 'manager-state.json');
  const { state, fresh } = await loadState(statePath, config);
  logger.info({ epoch: state.epoch, main: state.main, phase: state.phase, members: state.members.map((member) => member.id), ackQuorum: state.ackQuorum, fresh },
    fresh ? 'Starting a new cluster' : 'Resuming from the persisted manager state');

  const timings = { ...defaultManagerTimings, heartbeatMs: config.heartbeatMs, failoverAfterMs: config.failoverAfterMs, statusFreshMs: config.failoverAfterMs };
  const core = new ManagerCore({ timings }, state, now());
  // The web dashboard (GET /, /dashboard/*, /v1/events): it samples the cluster view and hears the core's events.
  const dashboard = new Dashboard({ view: () => clusterView(core), logger });
  const peerMap = (members: readonly Member[]): Map<string, HostPort> =>
    new Map(members.map((member) => [member.id as string, parseHostPort(member.peerAddress, `the peer address of ${member.id}`)]));
  const transport = new TcpTransport({ selfId: 'manager', listen: config.listenPeer, peers: peerMap(state.members), logger });
  const metrics = new ManagerMetrics(core, { statusFreshMs: timings.statusFreshMs, transport });
  // The transport's address book follows the members: a server added is reachable at once, one
  // removed is disconnected. Rebuilt only when the members or their addresses change.
  const peersKey = (members: readonly Member[]): string => JSON.stringify(members.map((member) => [member.id, member.peerAddress]));
  let knownPeers = peersKey(state.members);
  const refreshPeers = (): void => {
    const members = core.currentState.members;
    const key = peersKey(members);
    if (key === knownPeers) return;
    knownPeers = key;
    logger.info({ peers: members.map((member) => `${member.id}=${member.peerAddress}`) }, 'The members changed: updating the peer address book');
    transport.updatePeers(peerMap(members));
  };

  // Persisting is serialized: one state write at a time, each acknowledged to the core in order.
  let persistChain: Promise<void> = Promise.resolve();
  let stopped = false;

  const run = (effects: ManagerEffect[]): void => {
    // The core's members may have changed (an operator's change, a promotion, a removal): the
    // transport must know every member's address before anything is sent to it.
    refreshPeers();
    for (const effect of effects) {
      switch (effect.kind) {
        case 'send':
          transport.send(effect.to, encodeMessage(effect.message));
          break;
        case 'persist': {
          const { persistId } = effect;
          const text = `${JSON.stringify(effect.state, null, 2)}\n`;
          persistChain = persistChain.then(async () => {
            await writeFileAtomic(statePath, text);
            if (!stopped) run(core.onPersisted(now(), persistId));
          }).catch((error: unknown) => {
            // The manager may not announce what it could not persist: stop, a restart resumes.
            logger.fatal({ err: error }, 'Cannot persist the manager state; stopping');
            process.exit(1);
          });
          break;
        }
        case 'event':
          logger[effect.level]({ event: effect.event }, effect.message);
          metrics.onEvent(effect.event);
          dashboard.onEvent(effect.level, effect.message, effect.event);
          break;
      }
    }
  };

  transport.onMessage = (from: string, payload: Uint8Array): void => {
    let message;
    try {
      message = decodeMessage(payload) as ServerToManager;
    } catch (error) {
      logger.warn({ from, err: error }, 'Ignoring an undecodable message');
      return;
    }
    if (message.type === 'status') run(core.onStatus(now(), serverId(from), message));
    else if (message.type === 'fenceReply') run(core.onFenceReply(now(), serverId(from), message));
    else if (message.type === 'switchoverReady') run(core.onSwitchoverReady(now(), serverId(from), message));
    else logger.debug({ from, type: (message as { type: string }).type }, 'Ignoring a message not meant for the manager');
  };

  transport.onPeerLost = (from: string): void => run(core.onPeerLost(now(), serverId(from)));

  await transport.start();
  run(core.start(now()));
  const ticker = setInterval(() => run(core.tick(now())), Math.max(5, Math.floor(config.heartbeatMs / 2)));

  const http = createServer((request, response) => {
    if (metrics.serve(request, response)) return;
    if (dashboard.serve(request, response)) return;
    handleHttp(core, request, response, run, () => persistChain).catch((error: unknown) => {
      logger.error({ err: error }, 'HTTP handler failed');
      if (!response.headersSent) response.writeHead(500, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ error: { code: 'INTERNAL', message: 'Internal error', definite: true } }));
    });
  });
  await listen(http, config.listenHttp);
  const httpAddress = http.address() as { address: string; port: number };
  logger.info({ http: `${httpAddress.address}:${httpAddress.port}`, peer: formatHostPort(config.listenPeer) }, 'Manager is listening');

  return {
    core,
    httpAddress: { host: httpAddress.address, port: httpAddress.port },
    peerAddress: config.listenPeer,
    async close(): Promise<void> {
      stopped = true;
      clearInterval(ticker);
      dashboard.close();
      const closed = new Promise<void>((resolve) => http.close(() => resolve()));
      http.closeAllConnections();
      await closed;
      await transport.close();
      await persistChain;
    },
  };
}


/** The cluster as the manager sees it: the map, every server's last status, and any configuration change in progress. */
export function clusterView(core: ManagerCore): unknown {
  const state = core.currentState;
  const map = core.currentMap;
  const joint = state.jointWith;
  return {
    epoch: state.epoch,
    main: state.main,
    phase: state.phase,
    ackQuorum: state.ackQuorum,
    mapVersion: state.mapVersion,
    failoverReason: state.phase === 'fencing' ? state.reason : undefined,
    // A change that makes failover less demanding (removing a standby, raising K) keeps the
    // previous configuration's rule in force until the main confirms it (SPEC.md section 7).
    configurationChangePending: joint !== null || state.pendingRemoval !== null,
    jointWith: joint === null ? null : {
      ackQuorum: joint.ackQuorum, sinceMapVersion: joint.sinceMapVersion,
      members: joint.members.map((member) => ({ id: member.id, role: member.role })),
    },
    pendingRemoval: state.pendingRemoval,
    map: map === undefined ? null : { ...map, members: map.members.map((member) => ({ ...member })) },
    servers: state.members.map((member) => {
      const seen = core.serverStatus(member.id);
      return {
        id: member.id, role: member.id === state.main ? 'main' : member.role, priority: member.priority, address: member.address, peerAddress: member.peerAddress,
        health: seen === undefined ? 'unknown' : seen.ageMs < 1000 ? 'up' : 'down',
        statusAgeMs: seen === undefined ? null : Math.round(seen.ageMs),
        status: seen === undefined ? null : {
          promisedEpoch: seen.status.promisedEpoch, acting: seen.status.role, lastEpoch: seen.status.lastEpoch,
          lastSeq: seen.status.lastSeq, commitSeq: seen.status.commitSeq, appliedSeq: seen.status.appliedSeq,
          incomplete: seen.status.incomplete, contacts: seen.status.contacts,
          mapVersion: seen.status.mapVersion, confirmedMapVersion: seen.status.confirmedMapVersion,
        },
      };
    }),
  };
}

async function readJson(request: IncomingMessage, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of request) {
    length += (chunk as Buffer).length;
    if (length > limit) throw new SyntaxError(`The body is larger than ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return text.trim() === '' ? {} : JSON.parse(text) as unknown;
}

/** A bad request: the message says what is wrong and what is expected. */
class BadRequest extends Error {}

/** The body as a JSON object with only the `allowed` fields, or a BadRequest saying what is wrong. */
async function readFields(request: IncomingMessage, allowed: readonly string[], shape: string): Promise<Record<string, unknown>> {
  let body: unknown;
  try {
    body = await readJson(request, 4096);
  } catch (error) {
    throw new BadRequest(`Cannot parse the body: ${(error as Error).message}; expected ${shape}`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadRequest(`The body must be a JSON object: ${shape}`);
  const fields = body as Record<string, unknown>;
  const unknown = Object.keys(fields).filter((key) => !allowed.includes(key));
  if (unknown.length > 0) throw new BadRequest(`Unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((key) => JSON.stringify(key)).join(', ')}; expected ${shape}`);
  return fields;
}

const serverIdPattern = /^[A-Za-z0-9_.-]{1,64}$/;

/** The same rule as --servers: 1 to 64 letters, digits, '.', '_' or '-', and not "manager". */
function checkServerId(value: unknown, what: string): string {
  if (typeof value !== 'string') throw new BadRequest(`${what} must be a string`);
  if (!serverIdPattern.test(value)) throw new BadRequest(`${what} ${JSON.stringify(value)} must be 1 to 64 letters, digits, '.', '_' or '-'`);
  if (value === 'manager') throw new BadRequest(`${what} "manager" is reserved`);
  return value;
}

/** A server's client base URL, normalized to scheme://host[:port] (the form the manager's --servers yields). */
function checkClientAddress(value: unknown): string {
  const expected = 'the server\'s client HTTP base URL, like "http://127.0.0.1:7104"';
  if (typeof value !== 'string') throw new BadRequest(`"address" must be a string: ${expected}`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new BadRequest(`"address" ${JSON.stringify(value)} is not a URL; expected ${expected}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new BadRequest(`"address" ${JSON.stringify(value)} must use http or https; expected ${expected}`);
  if (url.username !== '' || url.password !== '' || url.pathname !== '/' || url.search !== '' || url.hash !== '' || url.hostname === '') {
    throw new BadRequest(`"address" ${JSON.stringify(value)} must have no credentials, path, query or fragment; expected ${expected}`);
  }
  return `${url.protocol}//${url.host}`;
}

/** host:port of a server's peer listener, normalized. */
function checkPeerAddress(value: unknown): string {
  const expected = 'host:port of the server\'s peer listener (its --listen-peer), like "127.0.0.1:7204"';
  if (typeof value !== 'string') throw new BadRequest(`"peerAddress" must be a string: ${expected}`);
  let address: HostPort;
  try {
    address = parseHostPort(value, '"peerAddress"');
  } catch (error) {
    throw new BadRequest(`${(error as Error).message}; expected ${expected}`);
  }
  if (address.host === '' || /\s/.test(address.host) || address.port === 0) throw new BadRequest(`"peerAddress" ${JSON.stringify(value)} needs a host and a port from 1 to 65535`);
  return formatHostPort(address);
}

const priorityMax = 1_000_000;

function checkPriority(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || Math.abs(value) > priorityMax) {
    throw new BadRequest(`"priority" must be a whole number from -${priorityMax} to ${priorityMax} (higher wins failover ties)`);
  }
  return value;
}

const serverShape = '{"id": "<server id>", "address": "http://host:port", "peerAddress": "host:port", "priority"?: <integer>}';

/**
 * `durable()` resolves once every state write issued so far is on disk: an accepted operator
 * request is answered only then, so a manager crash cannot lose a change it reported accepted.
 */
async function handleHttp(core: ManagerCore, request: IncomingMessage, response: ServerResponse, run: (effects: ManagerEffect[]) => void, durable: () => Promise<void>): Promise<void> {
  const url = new URL(request.url ?? '/', 'http://manager');
  const send = (status: number, body: unknown): void => {
    response.writeHead(status, { 'content-type': 'application/json' });
    response.end(`${JSON.stringify(body)}\n`);
  };
  const methodNotAllowed = (allow: string): void => {
    response.setHeader('allow', allow);
    send(405, { error: { code: 'METHOD_NOT_ALLOWED', message: `Use ${allow} on ${url.pathname}`, definite: true } });
  };
  /** Runs an operator's request through the core, carries out its effects, and answers 202 or 409. */
  const operate = async (outcome: { result: { accepted: boolean; message: string }; effects: ManagerEffect[] }, extra: Record<string, unknown> = {}): Promise<void> => {
    run(outcome.effects);
    if (!outcome.result.accepted) {
      send(409, { error: { code: 'REFUSED', message: outcome.result.message, definite: true } });
      return;
    }
    await durable();
    send(202, { accepted: true, message: outcome.result.message, ...extra, mapVersion: core.currentState.mapVersion });
  };
  try {
    if (url.pathname === '/v1/cluster' || url.pathname === '/v1/status') {
      if (request.method !== 'GET') return methodNotAllowed('GET');
      send(200, clusterView(core));
      return;
    }
    if (url.pathname === '/v1/switchover') {
      if (request.method !== 'POST') return methodNotAllowed('POST');
      const fields = await readFields(request, ['to'], '{} or {"to": "<server id>"}');
      const to = fields.to;
      if (to !== undefined && typeof to !== 'string') throw new BadRequest('"to" must be a server id (a string); the body must be {} or {"to": "<server id>"}');
      const { result, effects } = core.requestSwitchover(performance.now(), to === undefined ? undefined : serverId(to));
      run(effects);
      if (!result.accepted) {
        send(409, { error: { code: 'REFUSED', message: result.message, definite: true } });
        return;
      }
      send(202, { accepted: true, target: result.target, message: result.message });
      return;
    }
    if (url.pathname === '/v1/servers') {
      if (request.method !== 'POST') return methodNotAllowed('POST');
      const fields = await readFields(request, ['id', 'address', 'peerAddress', 'priority'], serverShape);
      for (const required of ['id', 'address', 'peerAddress']) {
        if (fields[required] === undefined) throw new BadRequest(`Missing field "${required}"; expected ${serverShape}`);
      }
      const id = checkServerId(fields.id, '"id"');
      const server: NewServer = { id: serverId(id), address: checkClientAddress(fields.address), peerAddress: checkPeerAddress(fields.peerAddress) };
      const priority = checkPriority(fields.priority);
      if (priority !== undefined) server.priority = priority;
      await operate(core.addServer(performance.now(), server), { id });
      return;
    }
    if (url.pathname.startsWith('/v1/servers/')) {
      if (request.method !== 'DELETE') return methodNotAllowed('DELETE');
      const raw = url.pathname.slice('/v1/servers/'.length);
      let decoded: string;
      try {
        decoded = decodeURIComponent(raw);
      } catch {
        throw new BadRequest(`Cannot decode the server id in ${url.pathname}`);
      }
      const id = checkServerId(decoded, 'The server id');
      await operate(core.removeServer(performance.now(), serverId(id)), { id });
      return;
    }
    if (url.pathname === '/v1/ack-quorum') {
      if (request.method !== 'PUT') return methodNotAllowed('PUT');
      const shape = '{"ackQuorum": <K, a whole number, 0 or more>}';
      const fields = await readFields(request, ['ackQuorum'], shape);
      const ackQuorum = fields.ackQuorum;
      if (ackQuorum === undefined) throw new BadRequest(`Missing field "ackQuorum"; expected ${shape}`);
      if (typeof ackQuorum !== 'number' || !Number.isInteger(ackQuorum) || ackQuorum < 0) {
        throw new BadRequest(`"ackQuorum" must be a whole number, 0 or more (got ${JSON.stringify(ackQuorum)})`);
      }
      await operate(core.setAckQuorum(performance.now(), ackQuorum), { ackQuorum });
      return;
    }
    if (url.pathname === '/healthz') {
      send(200, { ok: true });
      return;
    }
    send(404, { error: { code: 'NOT_FOUND', message: `No route ${request.method} ${url.pathname}`, definite: true } });
  } catch (error) {
    if (!(error instanceof BadRequest)) throw error;
    send(400, { error: { code: 'BAD_REQUEST', message: error.message, definite: true } });
  }
}
