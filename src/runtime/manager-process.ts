// The manager process: drives ManagerCore with the real clock, a state file on disk and the TCP
// transport, and serves the manager's HTTP API (cluster map, status of every server). It decides
// nothing itself: every decision is the core's; this file only carries inputs and effects.

import { mkdir, readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ManagerEffect, ManagerState } from '../core/manager.ts';
import { defaultManagerTimings, initialManagerState, ManagerCore } from '../core/manager.ts';
import { decodeMessage, encodeMessage } from '../protocol/codec.ts';
import type { Member, ServerToManager } from '../protocol/messages.ts';
import { serverId } from '../protocol/types.ts';
import { writeFileAtomic } from '../storage/atomic-file.ts';
import { TcpTransport } from '../transport/tcp.ts';
import type { HostPort, ServerAddressBook } from './config.ts';
import { formatHostPort, parseHostPort } from './config.ts';

export interface ManagerProcessConfig {
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
    return { state: initialManagerState(config.servers.map(memberOf), config.ackQuorum), fresh: true };
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
  const peers = new Map(state.members.map((member) => [member.id as string, parseHostPort(member.peerAddress, `the peer address of ${member.id}`)]));
  const transport = new TcpTransport({ selfId: 'manager', listen: config.listenPeer, peers, logger });

  // Persisting is serialized: one state write at a time, each acknowledged to the core in order.
  let persistChain: Promise<void> = Promise.resolve();
  let stopped = false;

  const run = (effects: ManagerEffect[]): void => {
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

  await transport.start();
  run(core.start(now()));
  const ticker = setInterval(() => run(core.tick(now())), Math.max(5, Math.floor(config.heartbeatMs / 2)));

  const http = createServer((request, response) => {
    handleHttp(core, request, response, run).catch((error: unknown) => {
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
      const closed = new Promise<void>((resolve) => http.close(() => resolve()));
      http.closeAllConnections();
      await closed;
      await transport.close();
      await persistChain;
    },
  };
}

function listen(server: Server, address: HostPort): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** The cluster as the manager sees it: the map, and every server's last status. */
export function clusterView(core: ManagerCore): unknown {
  const state = core.currentState;
  const map = core.currentMap;
  return {
    epoch: state.epoch,
    main: state.main,
    phase: state.phase,
    ackQuorum: state.ackQuorum,
    failoverReason: state.phase === 'fencing' ? state.reason : undefined,
    map: map === undefined ? null : { ...map, members: map.members.map((member) => ({ ...member })) },
    servers: state.members.map((member) => {
      const seen = core.serverStatus(member.id);
      return {
        id: member.id, role: member.id === state.main ? 'main' : member.role, address: member.address, peerAddress: member.peerAddress,
        health: seen === undefined ? 'unknown' : seen.ageMs < 1000 ? 'up' : 'down',
        statusAgeMs: seen === undefined ? null : Math.round(seen.ageMs),
        status: seen === undefined ? null : {
          promisedEpoch: seen.status.promisedEpoch, acting: seen.status.role, lastEpoch: seen.status.lastEpoch,
          lastSeq: seen.status.lastSeq, commitSeq: seen.status.commitSeq, appliedSeq: seen.status.appliedSeq,
          incomplete: seen.status.incomplete, contacts: seen.status.contacts,
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

async function handleHttp(core: ManagerCore, request: IncomingMessage, response: ServerResponse, run: (effects: ManagerEffect[]) => void): Promise<void> {
  const url = new URL(request.url ?? '/', 'http://manager');
  const send = (status: number, body: unknown): void => {
    response.writeHead(status, { 'content-type': 'application/json' });
    response.end(`${JSON.stringify(body)}\n`);
  };
  if (url.pathname === '/v1/cluster' || url.pathname === '/v1/status') {
    if (request.method !== 'GET') {
      response.setHeader('allow', 'GET');
      send(405, { error: { code: 'METHOD_NOT_ALLOWED', message: `Use GET on ${url.pathname}`, definite: true } });
      return;
    }
    send(200, clusterView(core));
    return;
  }
  if (url.pathname === '/v1/switchover') {
    if (request.method !== 'POST') {
      response.setHeader('allow', 'POST');
      send(405, { error: { code: 'METHOD_NOT_ALLOWED', message: 'Use POST on /v1/switchover', definite: true } });
      return;
    }
    let body: unknown;
    try {
      body = await readJson(request, 4096);
    } catch (error) {
      send(400, { error: { code: 'BAD_REQUEST', message: `Cannot parse the body: ${(error as Error).message}`, definite: true } });
      return;
    }
    const fields = typeof body === 'object' && body !== null && !Array.isArray(body) ? body as Record<string, unknown> : undefined;
    const unknown = fields === undefined ? [] : Object.keys(fields).filter((key) => key !== 'to');
    if (fields === undefined || unknown.length > 0 || (fields.to !== undefined && typeof fields.to !== 'string')) {
      send(400, { error: { code: 'BAD_REQUEST', message: 'The body must be {} or {"to": "<server id>"}', definite: true } });
      return;
    }
    const { result, effects } = core.requestSwitchover(performance.now(), fields.to === undefined ? undefined : serverId(fields.to as string));
    run(effects);
    if (!result.accepted) {
      send(409, { error: { code: 'REFUSED', message: result.message, definite: true } });
      return;
    }
    send(202, { accepted: true, target: result.target, message: result.message });
    return;
  }
  if (url.pathname === '/healthz') {
    send(200, { ok: true });
    return;
  }
  send(404, { error: { code: 'NOT_FOUND', message: `No route ${request.method} ${url.pathname}`, definite: true } });
}
