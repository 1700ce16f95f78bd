// ChaosProxy on loopback: an echo server as the target, raw sockets that open with a Mainstay
// hello as the sources, and one test with TcpTransport on both ends. Every wait is bounded in
// time, every loop in count, and every proxy, server and socket is closed in `finally`.

import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { describe, it } from 'node:test';
import { encodeFrame } from '../transport/framing.ts';
import { encodeHello } from '../transport/hello.ts';
import type { PeerAddress, TransportLogger } from '../transport/tcp.ts';
import { TcpTransport } from '../transport/tcp.ts';
import type { ChaosProxyOptions } from './proxy.ts';
import { ChaosProxy, unidentifiedSource } from './proxy.ts';

const host = '127.0.0.1';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `condition` every 5 ms; fails after `timeoutMs`. */
async function waitFor(what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) assert.fail(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

function bytesOf(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

function patterned(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let state = seed >>> 0;
  for (let i = 0; i < length; i++) {
    state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
    bytes[i] = state >>> 24;
  }
  return bytes;
}

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, true);
  return bytes;
}

/** The listening process behind the proxy: echoes everything, records what each connection sent. */
interface EchoTarget {
  address: PeerAddress;
  /** Open connections, in accept order, with the bytes each received. */
  connections: Array<{ socket: net.Socket; received: Buffer[] }>;
  accepted: number;
  receivedBytes(): number;
  /** Writes to every open connection, unprompted. */
  broadcast(bytes: Uint8Array): void;
  close(): Promise<void>;
}

async function echoTarget(): Promise<EchoTarget> {
  const connections: EchoTarget['connections'] = [];
  let accepted = 0;
  let receivedTotal = 0;
  const server = net.createServer({ noDelay: true }, (socket) => {
    accepted += 1;
    const entry = { socket, received: [] as Buffer[] };
    connections.push(entry);
    socket.on('error', () => {});
    socket.on('close', () => connections.splice(connections.indexOf(entry), 1));
    socket.on('data', (chunk: Buffer) => {
      entry.received.push(chunk);
      receivedTotal += chunk.length;
      socket.write(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const bound = server.address();
  assert.ok(bound !== null && typeof bound === 'object');
  return {
    address: { host, port: bound.port },
    connections,
    get accepted() {
      return accepted;
    },
    receivedBytes: () => receivedTotal,
    broadcast: (bytes) => {
      for (const { socket } of connections) socket.write(bytes);
    },
    close: async () => {
      for (const { socket } of [...connections]) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A raw socket to the proxy that opens, if given a sender id, with that sender's hello frame. */
class RawClient {
  readonly chunks: Buffer[] = [];
  /** Arrival time and running byte count of every chunk received. */
  readonly arrivals: Array<{ atMs: number; totalBytes: number }> = [];
  receivedBytes = 0;
  closed = false;
  errorCode: string | null = null;
  readonly helloFrame: Uint8Array;

  private constructor(readonly socket: net.Socket, helloFrame: Uint8Array) {
    this.helloFrame = helloFrame;
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.receivedBytes += chunk.length;
      this.arrivals.push({ atMs: performance.now(), totalBytes: this.receivedBytes });
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      this.errorCode = error.code ?? error.message;
    });
    socket.on('close', () => {
      this.closed = true;
    });
  }

  static async connect(address: PeerAddress, from: string | null, to = 'target'): Promise<RawClient> {
    const socket = net.createConnection({ host: address.host, port: address.port, noDelay: true });
    const hello = from === null ? new Uint8Array(0) : encodeFrame(encodeHello({ from, to }));
    const client = new RawClient(socket, hello);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    if (hello.length > 0) socket.write(hello);
    return client;
  }

  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Everything received after the echo of our own hello. */
  payload(): Buffer {
    return Buffer.concat(this.chunks).subarray(this.helloFrame.length);
  }

  payloadBytes(): number {
    return Math.max(0, this.receivedBytes - this.helloFrame.length);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

const proxies: ChaosProxy[] = [];

async function proxyFor(target: PeerAddress, options: Partial<ChaosProxyOptions> = {}): Promise<ChaosProxy> {
  const proxy = await ChaosProxy.start({ name: 'test', target, identify: 'hello', ...options });
  proxies.push(proxy);
  return proxy;
}

/** Runs a test body with an echo target, closing the target, the proxies and the clients it made. */
async function withTarget(body: (target: EchoTarget, clients: RawClient[]) => Promise<void>): Promise<void> {
  const target = await echoTarget();
  const clients: RawClient[] = [];
  try {
    await body(target, clients);
  } finally {
    for (const client of clients) client.destroy();
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
    await target.close();
  }
}

async function connect(clients: RawClient[], address: PeerAddress, from: string | null): Promise<RawClient> {
  const client = await RawClient.connect(address, from);
  clients.push(client);
  return client;
}

/** Writes `bytes` and waits for their echo; returns the round trip in ms. */
async function roundTrip(client: RawClient, bytes: Uint8Array, timeoutMs = 5_000): Promise<number> {
  const expected = client.payloadBytes() + bytes.length;
  const started = performance.now();
  client.write(bytes);
  await waitFor('the echo', () => client.payloadBytes() >= expected, timeoutMs);
  return performance.now() - started;
}

/** Asserts that nothing more arrives at the client for `ms`. */
async function staysSilent(client: RawClient, ms: number, what: string): Promise<void> {
  const before = client.receivedBytes;
  await sleep(ms);
  assert.equal(client.receivedBytes, before, `${what}: bytes arrived`);
  assert.equal(client.closed, false, `${what}: the connection closed`);
}

const silentLogger: TransportLogger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

describe('ChaosProxy', { timeout: 120_000 }, () => {
  it('passes bytes through unchanged both ways, hello included', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      assert.equal(proxy.address.host, host);
      assert.notEqual(proxy.address.port, 0);
      const a = await connect(clients, proxy.address, 'a');
      const message = encodeFrame(bytesOf('hello through the proxy'));
      await roundTrip(a, message);
      assert.deepEqual(new Uint8Array(a.payload()), message);
      assert.equal(target.connections.length, 1);
      const atTarget = Buffer.concat(target.connections[0]?.received ?? []);
      assert.deepEqual(new Uint8Array(atTarget), new Uint8Array(Buffer.concat([a.helloFrame, message])));
      // The target can also speak first.
      target.broadcast(bytesOf('unprompted'));
      await waitFor('the unprompted bytes', () => a.payload().toString().endsWith('unprompted'));
      assert.deepEqual(proxy.stats().activeBySource, { a: 1 });
    });
  });

  it('carries a large stream intact under delay and jitter, with bounded buffering', { timeout: 20_000 }, async () => {
    await withTarget(async (target, clients) => {
      const bufferBytesMax = 64 * 1024;
      const proxy = await proxyFor(target.address, { bufferBytesMax });
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(0));
      proxy.setFault('a', { kind: 'delay', ms: 1, jitterMs: 3 });
      const data = patterned(4 * 1024 * 1024, 7);
      let queuedMax = 0;
      const sampler = setInterval(() => {
        queuedMax = Math.max(queuedMax, proxy.stats().bytesQueued);
      }, 1);
      try {
        await roundTrip(a, data, 15_000);
      } finally {
        clearInterval(sampler);
      }
      assert.deepEqual(new Uint8Array(a.payload()), new Uint8Array(Buffer.concat([u32(0), data])));
      // Two directions, each at most the cap plus one socket read.
      assert.ok(queuedMax <= 2 * (bufferBytesMax + 64 * 1024), `queued ${queuedMax} bytes`);
    });
  });

  it('holds bytes behind a blackhole with backpressure instead of buffering them', { timeout: 20_000 }, async () => {
    await withTarget(async (target, clients) => {
      const bufferBytesMax = 32 * 1024;
      const proxy = await proxyFor(target.address, { bufferBytesMax });
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(1));
      const receivedBefore = target.receivedBytes();
      proxy.setFault('a', { kind: 'blackhole' });
      const data = patterned(16 * 1024 * 1024, 11);
      a.write(data);
      await sleep(300);
      assert.equal(target.receivedBytes(), receivedBefore, 'bytes crossed the blackhole');
      assert.ok(proxy.stats().bytesQueued <= bufferBytesMax + 64 * 1024, `queued ${proxy.stats().bytesQueued} bytes`);
      // The rest waits in the sender's socket: TCP backpressure reached it.
      assert.ok(a.socket.writableLength > 0, 'the sender was not pushed back');
      proxy.heal();
      await waitFor('the whole stream echoed', () => a.payloadBytes() >= 4 + data.length, 15_000);
      assert.deepEqual(new Uint8Array(a.payload()), new Uint8Array(Buffer.concat([u32(1), data])));
    });
  });

  it('blackholes one source only, holds its new connections silently, and resumes them on heal', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      const b = await connect(clients, proxy.address, 'b');
      await roundTrip(a, u32(1));
      await roundTrip(b, u32(1));
      proxy.setFault('a', { kind: 'blackhole' });
      const receivedBefore = target.receivedBytes();
      a.write(u32(2));
      await roundTrip(b, u32(2));
      await staysSilent(a, 200, 'a behind the blackhole');
      assert.equal(target.receivedBytes(), receivedBefore + 4, 'only b reached the target');
      // A new connection from a is accepted but not connected through, and not closed.
      const acceptedBefore = target.accepted;
      const a2 = await connect(clients, proxy.address, 'a');
      a2.write(u32(3));
      await staysSilent(a2, 200, 'a new connection from a');
      assert.equal(target.accepted, acceptedBefore);
      assert.equal(proxy.stats().connectionsHeld, 2);

      proxy.heal();
      // Held bytes flow again on the old connection, the held one is connected through, and a
      // fresh one works.
      await waitFor('the held echo on a', () => a.payloadBytes() === 8);
      await waitFor('the held echo on a2', () => a2.payloadBytes() === 4);
      assert.deepEqual(new Uint8Array(a.payload()), new Uint8Array(Buffer.concat([u32(1), u32(2)])));
      const a3 = await connect(clients, proxy.address, 'a');
      await roundTrip(a3, u32(4));
      assert.equal(proxy.stats().connectionsHeld, 0);
      assert.equal(proxy.stats().timersActive, 0);
    });
  });

  it('blackholes every source with "*", where a source\'s own fault wins', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      const b = await connect(clients, proxy.address, 'b');
      await roundTrip(a, u32(1));
      await roundTrip(b, u32(1));
      proxy.setFault('*', { kind: 'blackhole' });
      a.write(u32(2));
      b.write(u32(2));
      await staysSilent(a, 150, 'a behind "*"');
      assert.equal(b.payloadBytes(), 4, 'b crossed "*"');
      // b's own fault (a small delay) is more specific than '*': b flows, a stays held.
      proxy.setFault('b', { kind: 'delay', ms: 1 });
      await waitFor('b flows', () => b.payloadBytes() === 8);
      await staysSilent(a, 150, 'a still behind "*"');
      // Clearing b's own fault puts it back under '*'.
      proxy.setFault('b', undefined);
      b.write(u32(3));
      await staysSilent(b, 150, 'b back behind "*"');
      assert.deepEqual([...proxy.currentFaults().keys()], ['*']);
      proxy.heal();
      await waitFor('a resumes', () => a.payloadBytes() === 8);
      await waitFor('b resumes', () => b.payloadBytes() === 12);
      const c = await connect(clients, proxy.address, 'c');
      await roundTrip(c, u32(4));
    });
  });

  it('cuts toTarget only: bytes to the target are held, bytes from it flow', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(1));
      const receivedBefore = target.receivedBytes();
      proxy.setFault('a', { kind: 'cut', direction: 'toTarget' });
      a.write(u32(2));
      await sleep(150);
      assert.equal(target.receivedBytes(), receivedBefore, 'bytes crossed the cut');
      target.broadcast(bytesOf('from the target'));
      await waitFor('bytes from the target', () => a.payload().toString('latin1').endsWith('from the target'));
      proxy.heal();
      await waitFor('the held bytes echoed', () => a.payloadBytes() === 4 + 15 + 4);
      assert.deepEqual(new Uint8Array(a.payload()), new Uint8Array(Buffer.concat([u32(1), bytesOf('from the target'), u32(2)])));
    });
  });

  it('cuts fromTarget only: bytes to the target flow, replies are held in order', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(1));
      const receivedBefore = target.receivedBytes();
      proxy.setFault('a', { kind: 'cut', direction: 'fromTarget' });
      a.write(u32(2));
      await waitFor('the target receives', () => target.receivedBytes() === receivedBefore + 4);
      target.broadcast(bytesOf('late'));
      await staysSilent(a, 150, 'replies behind the cut');
      // A new connection under the cut is connected through: its hello reaches the target.
      const acceptedBefore = target.accepted;
      const a2 = await connect(clients, proxy.address, 'a');
      await waitFor('the new connection reaches the target', () => target.accepted === acceptedBefore + 1);
      await staysSilent(a2, 100, 'replies on the new connection');
      proxy.heal();
      await waitFor('the held replies', () => a.payloadBytes() === 4 + 4 + 4);
      assert.deepEqual(new Uint8Array(a.payload()), new Uint8Array(Buffer.concat([u32(1), u32(2), bytesOf('late')])));
      await roundTrip(a2, u32(3));
    });
  });

  it('delays both directions by at least ms, only for the faulted source', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      const b = await connect(clients, proxy.address, 'b');
      await roundTrip(a, u32(0));
      await roundTrip(b, u32(0));
      const delayMs = 150;
      proxy.setFault('a', { kind: 'delay', ms: delayMs });
      const slow = await roundTrip(a, u32(1));
      const fast = await roundTrip(b, u32(1));
      assert.ok(slow >= 2 * delayMs, `round trip of ${slow} ms under a ${delayMs} ms delay each way`);
      assert.ok(fast < delayMs, `round trip of ${fast} ms without a delay`);
      proxy.heal();
      const healed = await roundTrip(a, u32(2));
      assert.ok(healed < delayMs, `round trip of ${healed} ms after healing`);
    });
  });

  it('never reorders bytes under jitter', { timeout: 15_000 }, async () => {
    await withTarget(async (target, clients) => {
      // Jitter alternating between nearly all and none of jitterMs: every second chunk would
      // overtake the one before it if delays were not first in, first out.
      let draws = 0;
      const random = (): number => (draws++ % 2 === 0 ? 0.99 : 0);
      const proxy = await proxyFor(target.address, { random });
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(0));
      const chunksBefore = target.connections[0]?.received.length ?? 0;
      proxy.setFault('a', { kind: 'delay', ms: 2, jitterMs: 40 });
      const sent: Uint8Array[] = [];
      // Writes in separate turns of the event loop, so they reach the proxy as separate chunks.
      for (let i = 1; i <= 200; i++) {
        const frame = encodeFrame(u32(i));
        sent.push(frame);
        a.write(frame);
        await sleep(1);
      }
      const total = 4 + sent.reduce((sum, frame) => sum + frame.length, 0);
      await waitFor('every frame echoed', () => a.payloadBytes() >= total, 10_000);
      assert.deepEqual(new Uint8Array(a.payload()), new Uint8Array(Buffer.concat([u32(0), ...sent])));
      const chunks = (target.connections[0]?.received.length ?? 0) - chunksBefore;
      assert.ok(chunks > 10, `the target got only ${chunks} chunks: the jitter was not exercised`);
      assert.ok(draws >= 200, `only ${draws} jitter draws`);
    });
  });

  it('flaps between held and flowing, and stops on heal', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(0));
      const periodMs = 100;
      proxy.setFault('a', { kind: 'flap', periodMs });
      assert.equal(proxy.stats().connectionsHeld, 1, 'a flap starts held');
      const started = performance.now();
      const arrivalsBefore = a.arrivals.length;
      let sent = 0;
      while (performance.now() - started < 12 * periodMs) {
        sent += 1;
        a.write(u32(sent));
        await sleep(5);
      }
      const flapping = a.arrivals.slice(arrivalsBefore).map((arrival) => arrival.atMs);
      proxy.heal();
      await waitFor('every echo', () => a.payloadBytes() === 4 + 4 * sent);
      const expected = Buffer.concat([u32(0), ...Array.from({ length: sent }, (_, i) => u32(i + 1))]);
      assert.deepEqual(new Uint8Array(a.payload()), new Uint8Array(expected));
      // Echoes came in bursts: some arrived while flapping, separated by held periods.
      let gaps = 0;
      for (let i = 1; i < flapping.length; i++) {
        if ((flapping[i] as number) - (flapping[i - 1] as number) >= periodMs / 2) gaps += 1;
      }
      const firstArrival = flapping[0];
      assert.ok(firstArrival !== undefined && firstArrival - started >= periodMs * 0.9, 'nothing may arrive during the first held period');
      assert.ok(flapping.length >= 3, `only ${flapping.length} chunks arrived while flapping`);
      assert.ok(gaps >= 3, `only ${gaps} held periods seen between arrivals`);
      assert.equal(proxy.stats().timersActive, 0, 'the flap timer outlived heal');
      await staysSilent(a, 2 * periodMs, 'after heal');
      await roundTrip(a, u32(9), 1_000);
    });
  });

  it('resets the current connections of one source once', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      const b = await connect(clients, proxy.address, 'b');
      await roundTrip(a, u32(1));
      await roundTrip(b, u32(1));
      assert.equal(target.connections.length, 2);
      proxy.setFault('a', { kind: 'reset' });
      await waitFor('a closed', () => a.closed);
      assert.equal(a.errorCode, 'ECONNRESET');
      await waitFor('the target side closed', () => target.connections.length === 1);
      await roundTrip(b, u32(2));
      assert.equal(proxy.currentFaults().size, 0, 'a reset is not kept');
      const again = await connect(clients, proxy.address, 'a');
      await roundTrip(again, u32(3));
      const stats = proxy.stats();
      assert.equal(stats.connectionsReset, 1);
      assert.equal(stats.faultsSet.reset, 1);
      // '*' resets every connection.
      proxy.setFault('*', { kind: 'reset' });
      await waitFor('b closed', () => b.closed);
      await waitFor('the new a closed', () => again.closed);
      assert.equal(proxy.stats().connectionsReset, 3);
    });
  });

  it('counts connections, bytes and faults', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      const b = await connect(clients, proxy.address, 'b');
      await roundTrip(a, patterned(1000, 1));
      await roundTrip(b, patterned(3000, 2));
      let stats = proxy.stats();
      assert.equal(stats.name, 'test');
      assert.equal(stats.connectionsAccepted, 2);
      assert.equal(stats.connectionsActive, 2);
      const helloBytes = a.helloFrame.length + b.helloFrame.length;
      assert.equal(stats.bytesToTarget, helloBytes + 4000);
      assert.equal(stats.bytesFromTarget, helloBytes + 4000);
      assert.equal(stats.bytesQueued, 0);
      assert.deepEqual(stats.activeBySource, { a: 1, b: 1 });
      proxy.setFault('a', { kind: 'blackhole' });
      proxy.setFault('a', { kind: 'cut', direction: 'toTarget' });
      proxy.setFault('b', { kind: 'cut', direction: 'fromTarget' });
      proxy.setFault('c', { kind: 'delay', ms: 5 });
      proxy.setFault('d', { kind: 'flap', periodMs: 1_000 });
      stats = proxy.stats();
      assert.deepEqual(stats.faultsSet, { blackhole: 1, cut: 2, delay: 1, flap: 1, reset: 0 });
      assert.equal(stats.connectionsHeld, 2);
      assert.equal(stats.timersActive, 1, 'the flap timer');
      proxy.heal();
      a.destroy();
      b.destroy();
      await waitFor('no active connections', () => proxy.stats().connectionsActive === 0);
      stats = proxy.stats();
      assert.equal(stats.connectionsHeld, 0);
      assert.equal(stats.timersActive, 0);
      assert.equal(stats.connectionsAccepted, 2);
    });
  });

  it('without identification every connection is "client"', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address, { identify: 'none' });
      const c = await connect(clients, proxy.address, null);
      const request = bytesOf('GET /v1/kv/x HTTP/1.1\r\n\r\n');
      await roundTrip(c, request);
      assert.deepEqual(proxy.stats().activeBySource, { client: 1 });
      proxy.setFault('client', { kind: 'blackhole' });
      const acceptedBefore = target.accepted;
      const held = await connect(clients, proxy.address, null);
      held.write(request);
      await staysSilent(held, 150, 'a held HTTP connection');
      assert.equal(target.accepted, acceptedBefore);
      proxy.heal();
      await waitFor('the held request answered', () => held.payloadBytes() === request.length);
    });
  });

  it('forwards a connection without a valid hello as unidentified', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address, { helloTimeoutMs: 100 });
      // A first frame that is not a hello.
      const garbled = await connect(clients, proxy.address, null);
      const frame = encodeFrame(bytesOf('not a hello'));
      await roundTrip(garbled, frame);
      // No first frame at all: forwarded once the hello deadline passes.
      const silent = await connect(clients, proxy.address, null);
      await waitFor('the silent connection reaches the target', () => target.accepted === 2);
      await roundTrip(silent, u32(5));
      assert.deepEqual(proxy.stats().activeBySource, { [unidentifiedSource]: 2 });
      proxy.setFault(unidentifiedSource, { kind: 'blackhole' });
      garbled.write(u32(6));
      await staysSilent(garbled, 150, 'an unidentified connection behind a blackhole');
      proxy.heal();
      await waitFor('the held echo', () => garbled.payloadBytes() === frame.length + 4);
    });
  });

  it('carries a half-close through, after the bytes before it', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      proxy.setFault('a', { kind: 'delay', ms: 20 });
      // The end travels behind the delayed bytes; the echo server ends its side once it sees it.
      a.socket.end(u32(7));
      await waitFor('a closed', () => a.closed);
      assert.deepEqual(new Uint8Array(a.payload()), u32(7));
      assert.equal(a.errorCode, null);
      await waitFor('the proxy forgot the pair', () => proxy.stats().connectionsActive === 0);
    });
  });

  it('proxies HTTP, and a fromTarget cut lets a request in but holds its response', { timeout: 10_000 }, async () => {
    let handled = 0;
    const server = http.createServer((request, response) => {
      handled += 1;
      response.end(`answer ${request.url ?? ''}`);
    });
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    const bound = server.address();
    assert.ok(bound !== null && typeof bound === 'object');
    const proxy = await ChaosProxy.start({ name: 'http', target: { host, port: bound.port }, identify: 'none' });
    const agent = new http.Agent({ keepAlive: true });
    const get = (path: string): Promise<string> => new Promise((resolve, reject) => {
      const request = http.get({ host, port: proxy.address.port, path, agent }, (response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => {
          body += chunk;
        });
        response.on('end', () => resolve(body));
        response.on('error', reject);
      });
      request.on('error', reject);
    });
    try {
      assert.equal(await get('/one'), 'answer /one');
      proxy.setFault('client', { kind: 'cut', direction: 'fromTarget' });
      let answer: string | null = null;
      const pending = get('/two').then((body) => {
        answer = body;
      });
      await waitFor('the server handles the request', () => handled === 2);
      await sleep(150);
      assert.equal(answer, null, 'the response crossed the cut');
      proxy.heal();
      await pending;
      assert.equal(answer, 'answer /two');
      assert.equal(await get('/three'), 'answer /three');
    } finally {
      agent.destroy();
      await proxy.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('closes the pair when either side resets, and resets clients when the target is down', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(1));
      a.socket.resetAndDestroy();
      await waitFor('the target side closed', () => target.connections.length === 0);
      await waitFor('the proxy forgot the pair', () => proxy.stats().connectionsActive === 0);

      const b = await connect(clients, proxy.address, 'b');
      await roundTrip(b, u32(1));
      target.connections[0]?.socket.resetAndDestroy();
      await waitFor('b closed', () => b.closed);
      await waitFor('the proxy forgot the pair', () => proxy.stats().connectionsActive === 0);

      // A target that is down: the client is reset, as the real port would have.
      const downPort = target.address.port;
      await target.close();
      const down = await proxyFor({ host, port: downPort });
      const c = await connect(clients, down.address, 'c');
      await waitFor('c closed', () => c.closed);
      assert.equal(down.stats().targetConnectFailures, 1);
    });
  });

  it('does not carry a close across a blackhole until it heals', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      await roundTrip(a, u32(1));
      proxy.setFault('a', { kind: 'blackhole' });
      a.socket.resetAndDestroy();
      await sleep(150);
      assert.equal(target.connections.length, 1, 'the close crossed the blackhole');
      proxy.heal();
      await waitFor('the target side closed', () => target.connections.length === 0);
      await waitFor('the proxy forgot the pair', () => proxy.stats().connectionsActive === 0);
    });
  });

  it('closes promptly with held, delayed and flapping connections, leaving no timers', { timeout: 10_000 }, async () => {
    await withTarget(async (target, clients) => {
      const proxy = await proxyFor(target.address);
      const a = await connect(clients, proxy.address, 'a');
      const b = await connect(clients, proxy.address, 'b');
      await roundTrip(a, u32(1));
      await roundTrip(b, u32(1));
      proxy.setFault('a', { kind: 'delay', ms: 10_000 });
      proxy.setFault('b', { kind: 'flap', periodMs: 50 });
      proxy.setFault('*', { kind: 'blackhole' });
      a.write(u32(2));
      const c = await connect(clients, proxy.address, 'c');
      await sleep(50);
      assert.ok(proxy.stats().timersActive >= 2);
      const started = performance.now();
      await proxy.close();
      assert.ok(performance.now() - started < 1_000, 'close was not prompt');
      await waitFor('every client closed', () => a.closed && b.closed && c.closed, 1_000);
      assert.equal(proxy.stats().timersActive, 0);
      assert.equal(proxy.stats().connectionsActive, 0);
      // Faults after close are ignored.
      proxy.setFault('a', { kind: 'blackhole' });
      proxy.heal();
    });
  });

  it('carries TcpTransport traffic, stops it behind a blackhole, and resumes it on heal', { timeout: 20_000 }, async () => {
    const transportOptions = { logger: silentLogger, backoff: { initialMs: 10, maxMs: 100 } };
    const b = new TcpTransport({ selfId: 'b', listen: { host, port: 0 }, peers: new Map(), ...transportOptions });
    await b.start();
    const bAddress = b.address();
    assert.ok(bAddress !== null);
    const proxy = await ChaosProxy.start({ name: 'peer of b', target: bAddress, identify: 'hello' });
    const a = new TcpTransport({ selfId: 'a', peers: new Map([['b', proxy.address]]), ...transportOptions });
    const c = new TcpTransport({ selfId: 'c', peers: new Map([['b', proxy.address]]), ...transportOptions });
    const received: Array<[string, number]> = [];
    b.onMessage = (from, payload) => received.push([from, new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0, true)]);
    const from = (id: string): number[] => received.filter(([sender]) => sender === id).map(([, value]) => value);
    try {
      await a.start();
      await c.start();
      for (let i = 0; i < 10; i++) a.send('b', u32(i));
      await waitFor('the first messages', () => from('a').length === 10);

      proxy.setFault('a', { kind: 'blackhole' });
      for (let i = 10; i < 20; i++) a.send('b', u32(i));
      // c connects for the first time during the partition: it is not partitioned.
      c.send('b', u32(100));
      await waitFor('c flows', () => from('c').length === 1);
      await sleep(300);
      assert.equal(from('a').length, 10, 'messages crossed the blackhole');
      assert.equal(proxy.stats().connectionsHeld, 1);

      proxy.heal();
      await waitFor('the held messages', () => from('a').length === 20, 5_000);
      assert.deepEqual(from('a'), Array.from({ length: 20 }, (_, i) => i));

      // A partition that outlasts the connection: reset it; the transport reconnects and later
      // messages flow (those in flight at the reset may be lost: delivery is at most once).
      proxy.setFault('*', { kind: 'blackhole' });
      a.send('b', u32(20));
      await sleep(100);
      proxy.heal();
      proxy.setFault('a', { kind: 'reset' });
      let next = 21;
      const deadline = performance.now() + 5_000;
      while (!from('a').some((value) => value >= 21)) {
        assert.ok(performance.now() < deadline, 'no message from a after the reset');
        a.send('b', u32(next));
        next += 1;
        await sleep(20);
      }
      const peer = a.stats().peers.find((stats) => stats.id === 'b');
      assert.ok(peer !== undefined && peer.reconnects >= 1, 'a did not reconnect');
      assert.equal(proxy.stats().connectionsReset, 1);
      const values = from('a');
      assert.deepEqual(values, [...values].sort((x, y) => x - y), 'messages were reordered');
    } finally {
      await Promise.all([a.close(), c.close(), proxy.close()]);
      await b.close();
    }
  });
});
