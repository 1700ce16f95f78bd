// Mainstay under test: a local cluster (a manager and S servers, K = 1 by default) started from a
// state built directly in LMDB, and clients that speak its HTTP API over keep-alive connections.
//
// The key space is loaded the way a restore leaves a data directory (as scripts/bench-backup.ts
// does): N keys written into one server's LMDB state at seq N, an empty log starting at N + 1,
// copied for every server; the manager starts with --initial-epoch so that the first main is
// appointed above the state's epoch. That takes seconds for 10 million keys, where writing them
// over HTTP would take hours, and it treats every key-space size alike.

import { request as httpRequest, Agent as HttpAgent } from 'node:http';
import { cp, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client as UndiciClient } from 'undici';
import { WireConnection } from '../../src/client/wire.ts';
import type { StoredValue } from '../../src/core/kv.ts';
import type { ClientRequest } from '../../src/protocol/types.ts';
import type { WireResponse } from '../../src/protocol/wire.ts';
import { epoch, seq } from '../../src/protocol/types.ts';
import { writeEmptyLogStart } from '../../src/storage/file-log.ts';
import { openLmdbStore } from '../../src/storage/lmdb-store.ts';
import {
  count, freePorts, httpJson, keyName, launch, removeDirectory, stopProcess, tail, temporaryDirectory, valueOf, waitFor, type Started,
} from './common.ts';
import type { ClientSet, Connection, RunningSystem } from './load.ts';

const entry = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

/** The epoch of the built state; the manager appoints the first main above it. */
const builtEpoch = epoch(3);
/** Keys per LMDB transaction while building the state. */
const buildBatchKeys = 10_000;

/** How the bench clients talk to the main: the binary wire protocol, or HTTP through one of three clients. */
export type HttpClientKind = 'wire' | 'undici' | 'agent' | 'fetch';
export const httpClientKinds: HttpClientKind[] = ['wire', 'undici', 'agent', 'fetch'];

export interface MainstayOptions {
  servers: number;
  ackQuorum: number;
  keys: number;
  valueBytes: number;
  httpClient: HttpClientKind;
  /** With the wire protocol: connections the bench clients share, round robin. */
  wireConnections: number;
  /** Send Mainstay-Client-Id and Mainstay-Request-Id with every write, as the client library does. */
  sessions: boolean;
  /** Write a CPU profile of every server process into this folder (node --cpu-prof). */
  cpuProfileDir?: string;
  /** Write each server's step trace (--trace-steps) into this folder, as <id>.steps. */
  traceStepsDir?: string;
  /** Extra flags for every server. */
  serverFlags: string[];
  log: (line: string) => void;
}

/** Build the state of `keys` keys in `directory` (a server's data directory). */
async function buildState(directory: string, keys: number, valueBytes: number): Promise<void> {
  const store = await openLmdbStore(join(directory, 'state'));
  try {
    const values = Array.from({ length: 16 }, (_, i) => valueOf(i, valueBytes));
    for (let first = 0; first < keys; first += buildBatchKeys) {
      const last = Math.min(first + buildBatchKeys, keys) - 1;
      const batch = new Map<string, StoredValue | null>();
      // Version = the seq that wrote the key: key i was written at seq i + 1.
      for (let index = first; index <= last; index++) batch.set(keyName(index), { value: values[index & 15] as Buffer, version: index + 1 });
      store.commit({ keys: batch, sessions: new Map(), appliedSeq: seq(last + 1), appliedEpoch: builtEpoch });
      if (store.pendingBatchCount > 8) await store.flushed();
    }
    await store.flushed();
  } finally {
    await store.close();
  }
  await writeEmptyLogStart(directory, { firstSeq: seq(keys + 1), baseEpoch: builtEpoch }, { promisedEpoch: builtEpoch, incomplete: false });
}

export async function startMainstay(options: MainstayOptions): Promise<RunningSystem> {
  const directory = await temporaryDirectory('mainstay-bench-');
  const processes: Started[] = [];
  try {
    const serverIds = Array.from({ length: options.servers }, (_, i) => `s${i + 1}`);
    let started = performance.now();
    if (options.keys > 0) {
      const built = join(directory, 'build');
      await mkdir(built);
      await buildState(built, options.keys, options.valueBytes);
      for (const id of serverIds) await cp(built, join(directory, id), { recursive: true });
      await removeDirectory(built).catch(() => {});
      options.log(`  mainstay: built ${count(options.keys)} keys and copied them for ${options.servers} servers in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    }
    const ports = await freePorts(2 + options.servers * 2);
    const [managerHttp, managerPeer] = ports as [number, number];
    const members = serverIds.map((id, i) => ({ id, httpPort: ports[2 + i * 2] as number, peerPort: ports[3 + i * 2] as number }));
    const urls = new Map(members.map((member) => [member.id, `http://127.0.0.1:${member.httpPort}`]));
    const managerUrl = `http://127.0.0.1:${managerHttp}`;
    const node = (args: string[], nodeFlags: string[] = []): [string, string[]] => [process.execPath, [...nodeFlags, '--import', 'tsx', entry, ...args]];
    processes.push(launch('manager', ...node(['manager', '--data-dir', join(directory, 'manager'),
      '--listen-http', `127.0.0.1:${managerHttp}`, '--listen-peer', `127.0.0.1:${managerPeer}`,
      '--servers', members.map((member) => `${member.id}=127.0.0.1:${member.httpPort}/127.0.0.1:${member.peerPort}`).join(','),
      '--ack-quorum', String(options.ackQuorum), '--initial-epoch', String(options.keys > 0 ? builtEpoch : 0),
      // A busy two-core machine can delay a status by a second; a failover would spoil the run.
      '--failover-after-ms', '5000'])));
    if (options.cpuProfileDir !== undefined) await mkdir(options.cpuProfileDir, { recursive: true });
    if (options.traceStepsDir !== undefined) await mkdir(options.traceStepsDir, { recursive: true });
    for (const member of members) {
      // Node refuses --cpu-prof in NODE_OPTIONS: it goes on the command line. Each thread (tsx's
      // loader runs on one of its own) writes CPU.<date>.<time>.<pid>.<thread>.<n>.cpuprofile when
      // the process exits, into a folder per server; the main thread is thread 0.
      const profileFlags = options.cpuProfileDir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${join(options.cpuProfileDir, member.id)}`];
      processes.push(launch(member.id, ...node(['server', '--id', member.id, '--data-dir', join(directory, member.id),
        '--listen-http', `127.0.0.1:${member.httpPort}`, '--listen-peer', `127.0.0.1:${member.peerPort}`,
        '--manager', `127.0.0.1:${managerPeer}`,
        ...(options.traceStepsDir === undefined ? [] : ['--trace-steps', join(options.traceStepsDir, `${member.id}.steps`)]),
        ...options.serverFlags], profileFlags)));
    }
    started = performance.now();
    const cluster = async (): Promise<{ epoch: number; main: string | null; phase: string }> =>
      (await httpJson(`${managerUrl}/v1/cluster`, { timeoutMs: 2000 })).body as { epoch: number; main: string | null; phase: string };
    let view: { epoch: number; main: string | null; phase: string };
    try {
      view = await waitFor('a main', 60_000, async () => {
        const current = await cluster();
        if (current.main === null || current.phase !== 'stable') return undefined;
        const status = (await httpJson(`${urls.get(current.main)}/v1/status`, { timeoutMs: 2000 })).body as { role: string };
        return status.role === 'main' ? current : undefined;
      }, 50, processes);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${processes.map((started) => tail(started)).join('\n')}`, { cause: error });
    }
    const mainId = view.main as string;
    const mainUrl = urls.get(mainId) as string;
    const mainProcess = processes.find((started) => started.name === mainId) as Started;
    options.log(`  mainstay: ${options.servers} servers, K = ${options.ackQuorum}, up in ${((performance.now() - started) / 1000).toFixed(1)} s; main ${mainId} (pid ${mainProcess.pid}), epoch ${view.epoch}`);
    const startEpoch = view.epoch;
    return {
      system: 'mainstay',
      servers: options.servers,
      keys: options.keys,
      mainId,
      pids: () => processes.map((started) => started.pid),
      openClients: (clients, runLabel) => (options.httpClient === 'wire'
        ? openWireClients(mainUrl, clients, options.wireConnections, runLabel, options.sessions)
        : openHttpClients(options.httpClient, mainUrl, clients, runLabel, options.sessions)),
      async check() {
        const now = await cluster();
        if (now.epoch !== startEpoch || now.main !== mainId) return `a failover happened (epoch ${startEpoch} → ${now.epoch}, main ${mainId} → ${now.main})`;
        return undefined;
      },
      async stop() {
        // Servers first, gracefully, so that --cpu-prof writes its profiles; then the manager.
        await Promise.all(processes.filter((started) => started.name !== 'manager').map((started) => stopProcess(started)));
        await Promise.all(processes.map((started) => stopProcess(started)));
        await removeDirectory(directory);
      },
    } satisfies RunningSystem;
  } catch (error) {
    await Promise.all(processes.map((started) => stopProcess(started)));
    await removeDirectory(directory);
    throw error;
  }
}

// ---------------------------------------------------------------- wire protocol clients

/**
 * Clients of one run over the binary wire protocol: `connectionCount` connections to the main,
 * bench client i on connection i mod connectionCount (each client still has one request in
 * flight; a connection carries the requests of its clients at once). Sessions as over HTTP.
 */
export async function openWireClients(mainUrl: string, clients: number, connectionCount: number, runLabel: string, sessions: boolean): Promise<ClientSet> {
  const sockets = await Promise.all(Array.from({ length: Math.min(clients, connectionCount) }, () => WireConnection.connect(mainUrl)));
  const requestIds = new Array<number>(clients).fill(0);
  const connections = Array.from({ length: clients }, (_, i): Connection => {
    const socket = sockets[i % sockets.length] as WireConnection;
    const clientId = `bench-${runLabel}-${i}`;
    return {
      async put(key, value) {
        const request: ClientRequest = { type: 'write', write: { type: 'put', key, value } };
        if (sessions) request.session = { clientId, requestId: ++(requestIds[i] as number) };
        const response = await socket.request(request);
        if (response.type !== 'write') throw wireError('PUT', key, response);
      },
      async get(key) {
        const response = await socket.request({ type: 'read', key, consistency: 'linearizable' });
        if (response.type !== 'read' || response.item === undefined) throw wireError('GET', key, response);
      },
    };
  });
  return { connections, close: async () => { for (const socket of sockets) socket.close(); } };
}

function wireError(method: string, key: string, response: WireResponse): Error {
  return new Error(`${method} ${key}: ${response.type === 'error' ? `${response.error.code} ${response.error.message}` : `unexpected ${response.type} answer`}`);
}

// ---------------------------------------------------------------- HTTP clients

/** Attempts that take longer than this fail (the server's own write timeout is 5 s). */
const requestTimeoutMs = 15_000;

class HttpStatusError extends Error {}

function statusError(method: string, key: string, status: number, body: string): HttpStatusError {
  return new HttpStatusError(`${method} ${key}: HTTP ${status} ${body.slice(0, 200)}`);
}

/**
 * Clients of one run, all aimed at the main. Each write carries the client's session (a client id
 * per bench client, request ids from 1 up), as the client library sends them, unless sessions is
 * false. Reads are linearizable (the default).
 */
export async function openHttpClients(kind: Exclude<HttpClientKind, 'wire'>, mainUrl: string, clients: number, runLabel: string, sessions: boolean): Promise<ClientSet> {
  const clientIds = Array.from({ length: clients }, (_, i) => `bench-${runLabel}-${i}`);
  const requestIds = new Array<number>(clients).fill(0);
  const writeHeaders = (i: number): Record<string, string> => (sessions
    ? { 'mainstay-client-id': clientIds[i] as string, 'mainstay-request-id': String(++(requestIds[i] as number)) } : {});
  const path = (key: string): string => `/v1/kv/${key}`;

  if (kind === 'undici') {
    // One undici Client (one connection, no pipelining) per bench client.
    const undiciClients = Array.from({ length: clients }, () => new UndiciClient(mainUrl, {
      pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: requestTimeoutMs, bodyTimeout: requestTimeoutMs,
    }));
    const connections = undiciClients.map((client, i): Connection => ({
      async put(key, value) {
        const response = await client.request({ path: path(key), method: 'PUT', body: value, headers: writeHeaders(i) });
        const text = await response.body.text();
        if (response.statusCode !== 200) throw statusError('PUT', key, response.statusCode, text);
      },
      async get(key) {
        const response = await client.request({ path: path(key), method: 'GET' });
        const body = await response.body.arrayBuffer();
        if (response.statusCode !== 200) throw statusError('GET', key, response.statusCode, Buffer.from(body).toString());
      },
    }));
    return { connections, close: async () => { await Promise.all(undiciClients.map((client) => client.destroy())); } };
  }

  if (kind === 'agent') {
    // node:http with one keep-alive agent holding a socket per bench client.
    const agent = new HttpAgent({ keepAlive: true, maxSockets: clients, maxFreeSockets: clients });
    const { hostname, port } = new URL(mainUrl);
    const send = (method: string, key: string, headers: Record<string, string>, body?: Buffer): Promise<{ status: number; body: Buffer }> =>
      new Promise((resolve, reject) => {
        const request = httpRequest({ agent, hostname, port, method, path: path(key), headers: body === undefined ? headers : { ...headers, 'content-length': String(body.length) }, timeout: requestTimeoutMs }, (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.on('end', () => resolve({ status: response.statusCode ?? 0, body: chunks.length === 1 ? chunks[0] as Buffer : Buffer.concat(chunks) }));
          response.on('error', reject);
        });
        request.on('error', reject);
        request.on('timeout', () => request.destroy(new Error(`${method} ${key}: no answer in ${requestTimeoutMs} ms`)));
        request.end(body);
      });
    const connections = Array.from({ length: clients }, (_, i): Connection => ({
      async put(key, value) {
        const response = await send('PUT', key, writeHeaders(i), value);
        if (response.status !== 200) throw statusError('PUT', key, response.status, response.body.toString());
      },
      async get(key) {
        const response = await send('GET', key, {});
        if (response.status !== 200) throw statusError('GET', key, response.status, response.body.toString());
      },
    }));
    return { connections, close: async () => { agent.destroy(); } };
  }

  // The global fetch (Node's bundled undici, with its keep-alive pool).
  const controller = new AbortController();
  const connections = Array.from({ length: clients }, (_, i): Connection => ({
    async put(key, value) {
      const response = await fetch(`${mainUrl}${path(key)}`, { method: 'PUT', body: value, headers: writeHeaders(i), signal: controller.signal });
      const text = await response.text();
      if (response.status !== 200) throw statusError('PUT', key, response.status, text);
    },
    async get(key) {
      const response = await fetch(`${mainUrl}${path(key)}`, { signal: controller.signal });
      const body = await response.arrayBuffer();
      if (response.status !== 200) throw statusError('GET', key, response.status, Buffer.from(body).toString());
    },
  }));
  return { connections, close: async () => { controller.abort(); } };
}
