// The client against a fake two-server cluster on loopback: node:http servers that speak the real
// HTTP API (src/server/http-api.ts) over a tiny in-memory key-value state with a session table, so
// that redirects, dropped responses and retries can be staged exactly. These tests use protocol
// 'http' (the fake speaks only HTTP); test/wire.test.ts runs the client over the wire protocol.

import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, describe, it } from 'node:test';
import type { ClusterMap } from '../protocol/messages.ts';
import type { ClientRequest, ClientResponse, KeyValue, Operation, Write, WriteResult } from '../protocol/types.ts';
import { epoch, errorResponse, seq, serverId } from '../protocol/types.ts';
import {
  clusterMapJson, parseHttpRequest, renderClientResponse, renderJson, renderParseError, type HttpResponse,
} from '../server/http-api.ts';
import {
  BadRequestError, connect, MainstayError, PreconditionFailedError, TimeoutError, UnavailableError, type Client,
} from './client.ts';

interface Received {
  server: string;
  method: string;
  path: string;
  session?: { clientId: string; requestId: number };
  request?: ClientRequest;
}

/** The shared state of the fake cluster: one key-value map, one log position, one session table. */
class FakeCluster {
  readonly servers: FakeServer[] = [];
  manager!: Server;
  managerUrl = '';
  mainIndex = 1;
  epochNumber = 1;
  lastSeq = 0;
  /** Writes that changed state (duplicates absorbed by the session table do not count). */
  applied = 0;
  readonly kv = new Map<string, { value: Uint8Array; version: number }>();
  readonly sessions = new Map<string, { requestId: number; response: ClientResponse }>();
  readonly received: Received[] = [];
  /** Apply the next writes, then close their sockets instead of answering. */
  dropWriteResponses = 0;
  /** Hold every write's answer this long (to see writes overlap). */
  writeDelayMs = 0;
  /** Sessions with a write in progress, and whether two ever overlapped. */
  readonly sessionsInFlight = new Set<string>();
  overlappingSession: string | undefined;

  async start(): Promise<void> {
    for (const id of ['s1', 's2']) {
      const server = new FakeServer(this, id);
      await server.listen();
      this.servers.push(server);
    }
    // A manager that serves only GET /v1/cluster, to check discovery falls back to it.
    this.manager = createServer((request, response) => {
      const url = new URL(request.url ?? '/', 'http://manager');
      this.received.push({ server: 'manager', method: request.method ?? '', path: url.pathname });
      const output = url.pathname === '/v1/cluster'
        ? renderJson(200, { map: clusterMapJson(this.map()), phase: 'stable' })
        : renderJson(404, { error: { code: 'NOT_FOUND', message: 'No route', definite: true } });
      respond(response, output);
    });
    this.managerUrl = await listen(this.manager);
  }

  async stop(): Promise<void> {
    for (const server of [...this.servers.map((fake) => fake.http), this.manager]) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  get main(): FakeServer {
    return this.servers[this.mainIndex] as FakeServer;
  }

  map(): ClusterMap {
    return {
      version: this.epochNumber, epoch: epoch(this.epochNumber), main: serverId(this.main.id), ackQuorum: 1,
      members: this.servers.map((server) => ({ id: serverId(server.id), role: 'standby' as const, priority: 0, address: server.url, peerAddress: '' })),
    };
  }

  failover(to: number): void {
    this.mainIndex = to;
    this.epochNumber++;
  }

  writesOf(clientIdPrefix: string): Received[] {
    return this.received.filter((entry) => entry.session?.clientId.startsWith(clientIdPrefix) === true);
  }

  /** What the main's core would answer: sessions first, then the write decided and applied. */
  execute(request: ClientRequest): ClientResponse {
    if (request.type === 'read') {
      const stored = this.kv.get(request.key);
      return { type: 'read', item: stored === undefined ? undefined : { key: request.key, ...stored }, appliedSeq: seq(this.lastSeq) };
    }
    if (request.type === 'list') {
      const items: KeyValue[] = [...this.kv].filter(([key]) => key.startsWith(request.prefix)).sort(([a], [b]) => (a < b ? -1 : 1))
        .slice(0, request.limit).map(([key, stored]) => ({ key, ...stored }));
      return { type: 'list', items, appliedSeq: seq(this.lastSeq) };
    }
    const session = request.session;
    if (session !== undefined) {
      const recorded = this.sessions.get(session.clientId);
      if (recorded !== undefined && recorded.requestId === session.requestId) return recorded.response;
      assert.ok(recorded === undefined || recorded.requestId < session.requestId, 'request ids grow per session');
    }
    const response = this.apply(request.write);
    if (session !== undefined) this.sessions.set(session.clientId, { requestId: session.requestId, response });
    return response;
  }

  private apply(write: Write): ClientResponse {
    const at = ++this.lastSeq;
    const result = (status: WriteResult['status'], version: number): ClientResponse => (status === 'preconditionFailed'
      ? errorResponse('PRECONDITION_FAILED', `The condition failed: the key's version is ${version}`, true)
      : { type: 'write', result: { status: 'ok', seq: seq(at), epoch: epoch(this.epochNumber), version } });
    const versionOf = (key: string): number => this.kv.get(key)?.version ?? 0;
    const run = (operation: Operation): void => {
      if (operation.type === 'put') this.kv.set(operation.key, { value: operation.value, version: at });
      else this.kv.delete(operation.key);
    };
    this.applied++;
    switch (write.type) {
      case 'put': {
        const current = versionOf(write.key);
        if ((write.ifAbsent === true && current !== 0) || (write.ifVersion !== undefined && write.ifVersion !== current)) return result('preconditionFailed', current);
        run(write);
        return result('ok', at);
      }
      case 'delete': {
        const current = versionOf(write.key);
        if (write.ifVersion !== undefined && write.ifVersion !== current) return result('preconditionFailed', current);
        run(write);
        return result('ok', at);
      }
      case 'txn': {
        const succeeded = write.compares.every((compare) => versionOf(compare.key) === compare.version);
        for (const operation of succeeded ? write.success : write.failure) run(operation);
        return { type: 'write', result: { status: 'txn', seq: seq(at), epoch: epoch(this.epochNumber), succeeded } };
      }
      case 'epochStart':
      case 'configChange':
        throw new Error(`clients cannot send ${write.type}`);
    }
  }
}

class FakeServer {
  readonly http: Server;
  url = '';

  constructor(private readonly cluster: FakeCluster, readonly id: string) {
    this.http = createServer((request, response) => {
      this.handle(request, response).catch((error: unknown) => {
        response.writeHead(500);
        response.end(String(error));
      });
    });
  }

  async listen(): Promise<void> {
    this.url = await listen(this.http);
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const cluster = this.cluster;
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const headers: Record<string, string | undefined> = {};
    for (const [name, value] of Object.entries(request.headers)) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    const parsed = parseHttpRequest({ method: request.method ?? 'GET', path: request.url ?? '/', headers, body: new Uint8Array(Buffer.concat(chunks)) });
    const received: Received = { server: this.id, method: request.method ?? '', path: (request.url ?? '').split('?')[0] as string };
    cluster.received.push(received);
    if (parsed.kind === 'error') return respond(response, renderParseError(parsed));
    if (parsed.kind === 'status') {
      return respond(response, renderJson(200, { id: this.id, role: cluster.main === this ? 'main' : 'standby', map: clusterMapJson(cluster.map()) }));
    }
    if (parsed.kind !== 'client') return respond(response, renderJson(200, { ok: true }));
    const clientRequest = parsed.request;
    received.request = clientRequest;
    if (clientRequest.type === 'write' && clientRequest.session !== undefined) received.session = clientRequest.session;
    const isMain = cluster.main === this;
    if (!isMain && (clientRequest.type === 'write' || clientRequest.consistency === 'linearizable')) {
      const notMain = errorResponse('NOT_MAIN', 'This server is not the main', true, serverId(cluster.main.id));
      return respond(response, renderClientResponse(notMain, clientRequest, { mainAddress: cluster.main.url, target: request.url ?? '' }));
    }
    if (clientRequest.type !== 'write') return respond(response, renderClientResponse(cluster.execute(clientRequest), clientRequest));

    const sessionId = clientRequest.session?.clientId;
    if (sessionId !== undefined) {
      if (cluster.sessionsInFlight.has(sessionId)) cluster.overlappingSession = sessionId;
      cluster.sessionsInFlight.add(sessionId);
    }
    try {
      const answer = cluster.execute(clientRequest);
      if (cluster.writeDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, cluster.writeDelayMs));
      if (cluster.dropWriteResponses > 0) {
        cluster.dropWriteResponses--;
        // Applied, but the answer is lost: the client cannot know whether the write happened.
        request.socket.destroy();
        return;
      }
      respond(response, renderClientResponse(answer, clientRequest));
    } finally {
      if (sessionId !== undefined) cluster.sessionsInFlight.delete(sessionId);
    }
  }
}

function respond(response: ServerResponse, output: HttpResponse): void {
  response.writeHead(output.status, output.headers);
  response.end(output.body);
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** A loopback port with nothing listening. */
async function deadPort(): Promise<string> {
  const server = createServer();
  const url = await listen(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return url;
}

const fast = { timeoutMs: 3000, attemptTimeoutMs: 1000, retries: 6, backoffMsMin: 5, backoffMsMax: 40 };

describe('client against a fake two-server cluster', () => {
  const cluster = new FakeCluster();
  const clients: Client[] = [];
  const open = (options: Partial<Parameters<typeof connect>[0]> = {}): Client => {
    const client = connect({ protocol: 'http', endpoints: [(cluster.servers[0] as FakeServer).url], ...fast, ...options });
    clients.push(client);
    return client;
  };

  before(async () => cluster.start());
  afterEach(() => {
    cluster.dropWriteResponses = 0;
    cluster.writeDelayMs = 0;
    cluster.failover(1);
  });
  after(async () => {
    for (const client of clients) client.close();
    await cluster.stop();
  });

  it('finds the main through a standby, remembers it, and round-trips values', async () => {
    const client = open({ clientId: 'round-trip' });
    const before = cluster.received.length;
    const put = await client.put('users/1 ✓?#%', 'héllo');
    assert.deepEqual(Object.keys(put).sort(), ['epoch', 'seq', 'version']);
    assert.equal(put.version, put.seq);
    const item = await client.get('users/1 ✓?#%');
    assert.ok(item !== undefined);
    assert.equal(item.text(), 'héllo');
    assert.equal(item.version, put.version);
    assert.equal(item.appliedSeq, cluster.lastSeq);
    const asked = cluster.received.slice(before).map((entry) => `${entry.server} ${entry.method} ${entry.path}`);
    // One discovery on the standby, then straight to the main.
    assert.deepEqual(asked, ['s1 GET /v1/status', 's2 PUT /v1/kv/users%2F1%20%E2%9C%93%3F%23%25', 's2 GET /v1/kv/users%2F1%20%E2%9C%93%3F%23%25']);

    const binary = new Uint8Array([0, 255, 128, 10]);
    await client.put('bin', binary);
    assert.deepEqual((await client.get('bin'))?.value, binary);
    assert.equal(await client.get('absent'), undefined);
    const removed = await client.delete('bin');
    assert.deepEqual(Object.keys(removed).sort(), ['epoch', 'seq']);
    assert.equal(await client.get('bin'), undefined);
  });

  it('lists with binary values and passes consistency, minSeq and limit through', async () => {
    const client = open();
    await client.put('list/a', 'text');
    await client.put('list/b', new Uint8Array([0xff, 0xfe]));
    await client.put('list/c', '');
    const items = await client.list('list/', { limit: 2, consistency: 'local', minSeq: 3 });
    assert.deepEqual(items.map((item) => [item.key, [...item.value]]), [['list/a', [...new TextEncoder().encode('text')]], ['list/b', [0xff, 0xfe]]]);
    assert.deepEqual(JSON.parse(JSON.stringify(items[1])), { key: 'list/b', valueBase64: '//4=', version: items[1]?.version });
    assert.deepEqual(cluster.received.at(-1)?.request, { type: 'list', prefix: 'list/', limit: 2, consistency: 'local', minSeq: 3 });

    await client.get('list/a', { consistency: 'local', minSeq: 7 });
    assert.deepEqual(cluster.received.at(-1)?.request, { type: 'read', key: 'list/a', consistency: 'local', minSeq: 7 });
    await client.get('list/a');
    assert.deepEqual(cluster.received.at(-1)?.request, { type: 'read', key: 'list/a', consistency: 'linearizable' });
  });

  it('follows 421 NOT_MAIN to the new main after a failover, with the same request id', async () => {
    const client = open({ clientId: 'redirected' });
    await client.put('r', 'one');
    cluster.failover(0);
    const result = await client.put('r', 'two');
    assert.equal(result.epoch, cluster.epochNumber);
    const writes = cluster.writesOf('redirected').slice(-2);
    assert.deepEqual(writes.map((entry) => entry.server), ['s2', 's1']);
    assert.deepEqual(writes[0]?.session, writes[1]?.session, 'the redirected write repeats its request id');
    // The client now remembers s1 as the main.
    await client.get('r');
    assert.equal(cluster.received.at(-1)?.server, 's1');
  });

  it('retries a dropped response with the same request id and applies the write once', async () => {
    const client = open({ clientId: 'dropped' });
    await client.put('d', 'zero');
    const appliedBefore = cluster.applied;
    cluster.dropWriteResponses = 1;
    const result = await client.put('d', 'once');
    const writes = cluster.writesOf('dropped').slice(-2);
    assert.equal(writes.length, 2);
    assert.deepEqual(writes[0]?.session, writes[1]?.session);
    assert.equal(cluster.applied, appliedBefore + 1, 'the retry was absorbed by the session table');
    assert.equal(cluster.kv.get('d')?.version, result.version);

    // A dropped transaction with a failing compare: the retry returns the recorded outcome.
    cluster.dropWriteResponses = 1;
    const txn = await client.txn({ compare: [{ key: 'd', version: 1 }], success: [{ delete: { key: 'd' } }], failure: [{ put: { key: 'f', value: 'x' } }] });
    assert.equal(txn.succeeded, false);
    assert.equal(cluster.applied, appliedBefore + 2);
  });

  it('gives each write a new, growing request id and never overlaps writes in one session', async () => {
    const client = open({ clientId: 'many' });
    cluster.writeDelayMs = 15;
    await Promise.all(Array.from({ length: 8 }, async (_, index) => client.put(`m${index}`, String(index))));
    await client.put('m-last', 'x');
    assert.equal(cluster.overlappingSession, undefined);
    const writes = cluster.writesOf('many');
    assert.equal(writes.length, 9);
    const ids = writes.map((entry) => entry.session?.requestId as number);
    assert.equal(new Set(ids).size, 9, 'every write has its own request id');
    const bySession = new Map<string, number[]>();
    for (const entry of writes) bySession.set(entry.session?.clientId as string, [...(bySession.get(entry.session?.clientId as string) ?? []), entry.session?.requestId as number]);
    assert.ok(bySession.size > 1, 'concurrent writes use several sessions');
    for (const [session, sessionIds] of bySession) {
      assert.ok(session === 'many' || /^many\.\d+$/.test(session), session);
      assert.deepEqual(sessionIds, [...sessionIds].sort((a, b) => a - b), 'ids grow within a session');
    }
  });

  it('runs transactions with binary values', async () => {
    const client = open();
    const bytes = new Uint8Array([0, 1, 254, 255]);
    const first = await client.txn({ compare: [{ key: 't', version: 0 }], success: [{ put: { key: 't', value: bytes } }, { put: { key: 't2', value: 'two' } }] });
    assert.equal(first.succeeded, true);
    assert.deepEqual((await client.get('t'))?.value, bytes);
    const request = cluster.writesOf(client.clientId).at(-1)?.request as ClientRequest & { type: 'write' };
    assert.deepEqual(request.write, { type: 'txn', compares: [{ key: 't', version: 0 }], success: [
      { type: 'put', key: 't', value: bytes }, { type: 'put', key: 't2', value: new TextEncoder().encode('two') },
    ], failure: [] });
    const second = await client.txn({ compare: [{ key: 't', version: 0 }], success: [{ delete: { key: 't' } }], failure: [{ put: { key: 't3', valueBase64: 'AAE=' } }] });
    assert.equal(second.succeeded, false);
    assert.deepEqual((await client.get('t3'))?.value, new Uint8Array([0, 1]));
  });

  it('throws typed errors', async () => {
    const client = open();
    const { version } = await client.put('typed', 'v1');
    await assert.rejects(client.put('typed', 'v2', { ifVersion: version + 100 }), (error: unknown) => {
      assert.ok(error instanceof PreconditionFailedError);
      assert.equal(error.code, 'PRECONDITION_FAILED');
      assert.equal(error.status, 412);
      assert.equal(error.definite, true);
      return true;
    });
    await assert.rejects(client.put('typed', 'v2', { ifAbsent: true }), PreconditionFailedError);
    await assert.rejects(client.delete('typed', { ifVersion: 0 }), PreconditionFailedError);
    assert.equal((await client.put('typed', 'v2', { ifVersion: version })).version > version, true);
    await assert.rejects(client.put('', 'x'), (error: unknown) => error instanceof BadRequestError && error.status === undefined);
    await assert.rejects(client.put('..', 'x'), BadRequestError);
    await assert.rejects(client.put('big', new Uint8Array(1024 * 1024 + 1)), (error: unknown) => {
      assert.ok(error instanceof BadRequestError);
      assert.equal(error.code, 'TOO_LARGE');
      assert.equal(error.status, 413);
      return true;
    });
    await assert.rejects(client.list('', { limit: 5000 }), (error: unknown) => error instanceof MainstayError && error.code === 'BAD_REQUEST' && error.status === 400);
  });

  it('reports a write whose outcome stays unknown as indefinite', async () => {
    const client = open({ clientId: 'unknown', retries: 2 });
    await client.put('u', 'before');
    const appliedBefore = cluster.applied;
    cluster.dropWriteResponses = 100;
    await assert.rejects(client.put('u', 'maybe'), (error: unknown) => {
      assert.ok(error instanceof MainstayError);
      assert.equal(error.definite, false);
      assert.match(error.message, /may have been applied/);
      return true;
    });
    assert.equal(cluster.writesOf('unknown').length, 1 + 3, 'the first attempt and two retries');
    assert.equal(cluster.applied, appliedBefore + 1, 'applied once');
    assert.equal(cluster.kv.get('u')?.value.length, 'maybe'.length);
  });

  it('times out attempts that get no answer', async () => {
    const client = open({ clientId: 'slow', retries: 1, attemptTimeoutMs: 50 });
    await client.put('s', 'fast');
    cluster.writeDelayMs = 200;
    await assert.rejects(client.put('s', 'slow'), (error: unknown) => {
      assert.ok(error instanceof TimeoutError);
      assert.equal(error.definite, false);
      return true;
    });
  });

  it('is definite when nothing could be sent', async () => {
    const client = connect({ protocol: 'http', endpoints: [await deadPort()], ...fast, retries: 2 });
    clients.push(client);
    await assert.rejects(client.put('x', 'y'), (error: unknown) => {
      assert.ok(error instanceof UnavailableError);
      assert.equal(error.definite, true);
      assert.match(error.message, /Cannot find the main/);
      return true;
    });
  });

  it('discovers the main through the manager and skips dead endpoints', async () => {
    const client = open({ endpoints: [await deadPort(), cluster.managerUrl] });
    await client.put('via-manager', 'ok');
    assert.ok(cluster.received.some((entry) => entry.server === 'manager' && entry.path === '/v1/cluster'));
    const status = await client.status();
    assert.equal(status.id, 's2');
    assert.equal(status.map?.main, 's2');
  });

  it('refuses calls after close and cuts calls in flight', async () => {
    const client = open();
    await client.put('c', 'open');
    cluster.writeDelayMs = 500;
    const pending = client.put('c', 'closing');
    setTimeout(() => client.close(), 20);
    await assert.rejects(pending, (error: unknown) => error instanceof UnavailableError && error.definite === false);
    await assert.rejects(client.get('c'), /The client is closed/);
  });
});

describe('connect', () => {
  it('checks its options', () => {
    assert.throws(() => connect({ protocol: 'http', endpoints: [] }), /at least one endpoint/);
    assert.throws(() => connect({ protocol: 'http', endpoints: ['ftp://x'] }), /http or https/);
    assert.throws(() => connect({ protocol: 'http', endpoints: ['http://127.0.0.1:1'], clientId: 'has space' }), /visible ASCII/);
    assert.throws(() => connect({ protocol: 'http', endpoints: ['http://127.0.0.1:1'], retries: -1 }), /retries/);
    const client = connect({ protocol: 'http', endpoints: ['http://127.0.0.1:1/'] });
    assert.match(client.clientId, /^[0-9a-f-]{36}$/);
    client.close();
  });
});
