// TcpTransport on loopback with OS-chosen ports. Every wait is bounded in time, every loop in
// count, and every transport and raw socket is closed in `finally` so a failing test still exits.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { decodeMessage, encodeMessage } from '../protocol/codec.ts';
import type { HeartbeatMessage } from '../protocol/messages.ts';
import { epoch, seq } from '../protocol/types.ts';
import { encodeFrame, encodeFrames, frameHeaderBytes, writeFrameHeader } from './framing.ts';
import { encodeHello } from './hello.ts';
import type { LogFields, PeerAddress, TcpTransportOptions, TransportLogger } from './tcp.ts';
import { TcpTransport } from './tcp.ts';

const host = '127.0.0.1';

interface LogEntry {
  level: 'debug' | 'info' | 'warn' | 'error';
  message: string;
  fields: LogFields;
}

function recordingLogger(): TransportLogger & { entries: LogEntry[] } {
  const entries: LogEntry[] = [];
  const record = (level: LogEntry['level']) => (fields: LogFields, message: string): void => {
    entries.push({ level, message, fields });
  };
  return { entries, debug: record('debug'), info: record('info'), warn: record('warn'), error: record('error') };
}

function transport(selfId: string, options: Partial<TcpTransportOptions> = {}): TcpTransport {
  return new TcpTransport({
    selfId,
    peers: new Map(),
    queueBytesMax: 1024 * 1024 + frameHeaderBytes,
    frameBytesMax: 1024 * 1024,
    queueMessagesMax: 20_000,
    backoff: { initialMs: 10, maxMs: 100 },
    logger: recordingLogger(),
    ...options,
  });
}

async function listening(selfId: string, options: Partial<TcpTransportOptions> = {}, port = 0): Promise<TcpTransport> {
  const receiver = transport(selfId, { listen: { host, port }, ...options });
  await receiver.start();
  return receiver;
}

function boundAddress(receiver: TcpTransport): PeerAddress {
  const address = receiver.address();
  assert.ok(address !== null, 'The transport is not listening');
  return address;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `condition` every 5 ms; fails after `timeoutMs`. */
async function waitFor(what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) assert.fail(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

function numbered(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, true);
  return bytes;
}

function number(payload: Uint8Array): number {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0, true);
}

/** A port nobody listens on (bound by the OS, then released). */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return address.port;
}

/** A raw client, for speaking bad protocol at a transport. */
async function rawClient(port: number): Promise<{ socket: net.Socket; closed: Promise<void> }> {
  const socket = net.createConnection({ host, port });
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return { socket, closed };
}

async function closedWithin(closed: Promise<void>, ms: number, what: string): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} was not closed within ${ms} ms`)), ms);
  });
  try {
    await Promise.race([closed, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function peerStats(sender: TcpTransport, id: string) {
  const stats = sender.stats().peers.find((peer) => peer.id === id);
  assert.ok(stats !== undefined, `No stats for ${id}`);
  return stats;
}

describe('TcpTransport', { timeout: 60_000 }, () => {
  it('delivers messages in order, attributed to the sender named in its hello', { timeout: 10_000 }, async () => {
    const b = await listening('b');
    const a = transport('a', { peers: new Map([['b', boundAddress(b)]]) });
    const received: Array<{ from: string; value: number }> = [];
    b.onMessage = (from, payload) => received.push({ from, value: number(payload) });
    try {
      await a.start();
      for (let i = 0; i < 200; i++) assert.equal(a.send('b', numbered(i)), true);
      await waitFor('200 messages', () => received.length >= 200);
      assert.deepEqual(received, Array.from({ length: 200 }, (_, value) => ({ from: 'a', value })));
      assert.equal(peerStats(a, 'b').connected, true);
      assert.equal(peerStats(a, 'b').sentMessages, 200);
      assert.equal(b.stats().receivedMessages, 200);
      assert.equal(b.stats().inboundConnections, 1);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('carries protocol messages both ways over two one-way connections', { timeout: 10_000 }, async () => {
    const a = await listening('a');
    const b = await listening('b');
    a.updatePeers(new Map([['b', boundAddress(b)]]));
    b.updatePeers((id) => (id === 'a' ? boundAddress(a) : undefined));
    const heartbeat: HeartbeatMessage = {
      type: 'heartbeat', epoch: epoch(3), commitSeq: seq(41), epochStartSeq: seq(40), readRound: 7,
      forBootId: 9, lastSeq: seq(42), ackQuorum: 1,
    };
    const atA: unknown[] = [];
    const atB: unknown[] = [];
    a.onMessage = (from, payload) => atA.push([from, decodeMessage(payload)]);
    b.onMessage = (from, payload) => {
      atB.push([from, decodeMessage(payload)]);
      b.send(from, encodeMessage({ type: 'ping' }));
    };
    try {
      a.send('b', encodeMessage(heartbeat));
      await waitFor('the reply', () => atA.length === 1);
      assert.deepEqual(atB, [['a', heartbeat]]);
      assert.deepEqual(atA, [['b', { type: 'ping' }]]);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('delivers 10,000 small messages in order within bounded time, in batched writes', { timeout: 20_000 }, async (t) => {
    const count = 10_000;
    const b = await listening('b');
    const a = transport('a', { peers: new Map([['b', boundAddress(b)]]) });
    let received = 0;
    let inOrder = true;
    b.onMessage = (_from, payload) => {
      if (number(payload) !== received) inOrder = false;
      received += 1;
    };
    try {
      const started = performance.now();
      // Sent in bursts across event-loop turns, as a busy main would.
      for (let burst = 0; burst < count / 500; burst++) {
        for (let i = 0; i < 500; i++) {
          const payload = new Uint8Array(16 + (i % 48));
          new DataView(payload.buffer).setUint32(0, burst * 500 + i, true);
          assert.equal(a.send('b', payload), true);
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
      await waitFor(`${count} messages`, () => received >= count, 10_000);
      const elapsedMs = performance.now() - started;
      t.diagnostic(`${count} messages in ${elapsedMs.toFixed(0)} ms`);
      assert.equal(received, count);
      assert.equal(inOrder, true);
      assert.equal(peerStats(a, 'b').dropped, 0);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('holds messages while the peer is unreachable and sends them once it listens', { timeout: 10_000 }, async () => {
    const port = await freePort();
    const logger = recordingLogger();
    const a = transport('a', { peers: new Map([['b', { host, port }]]), logger });
    let b: TcpTransport | null = null;
    try {
      for (let i = 0; i < 5; i++) assert.equal(a.send('b', numbered(i)), true);
      await waitFor('a failed attempt', () => peerStats(a, 'b').reconnects >= 2);
      assert.equal(peerStats(a, 'b').queuedMessages, 5);
      // Repeated failures while already down are logged once.
      assert.equal(logger.entries.filter((entry) => entry.level === 'warn').length, 1);
      b = await listening('b', {}, port);
      const received: number[] = [];
      b.onMessage = (_from, payload) => received.push(number(payload));
      await waitFor('the queued messages', () => received.length >= 5);
      assert.deepEqual(received, [0, 1, 2, 3, 4]);
      assert.equal(peerStats(a, 'b').queuedMessages, 0);
    } finally {
      await Promise.all([a.close(), b?.close()]);
    }
  });

  it('reconnects after the receiver restarts on the same port', { timeout: 10_000 }, async () => {
    const first = await listening('b');
    const port = boundAddress(first).port;
    const a = transport('a', { peers: new Map([['b', { host, port }]]) });
    const beforeRestart: number[] = [];
    first.onMessage = (_from, payload) => beforeRestart.push(number(payload));
    let second: TcpTransport | null = null;
    try {
      a.send('b', numbered(0));
      await waitFor('the first message', () => beforeRestart.length === 1);
      await first.close();
      await waitFor('the sender to notice', () => !peerStats(a, 'b').connected);
      // Sent while disconnected: they wait in the queue.
      for (let i = 1; i <= 10; i++) assert.equal(a.send('b', numbered(i)), true);
      second = await listening('b', {}, port);
      const afterRestart: number[] = [];
      second.onMessage = (_from, payload) => afterRestart.push(number(payload));
      await waitFor('the queued messages', () => afterRestart.length >= 10);
      a.send('b', numbered(11));
      await waitFor('a later message', () => afterRestart.length >= 11);
      assert.deepEqual(afterRestart, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
      assert.ok(peerStats(a, 'b').reconnects >= 1);
      assert.equal(peerStats(a, 'b').connected, true);
    } finally {
      await Promise.all([a.close(), first.close(), second?.close()]);
    }
  });

  it('drops and counts messages beyond the queue bounds, in messages and in bytes', { timeout: 10_000 }, async () => {
    const port = await freePort();
    const logger = recordingLogger();
    const byCount = transport('a', { peers: new Map([['b', { host, port }]]), queueMessagesMax: 3, logger });
    const byBytes = transport('a', {
      peers: new Map([['b', { host, port }]]), frameBytesMax: 40, queueBytesMax: 100, queueMessagesMax: 100,
    });
    try {
      const results = Array.from({ length: 5 }, (_, i) => byCount.send('b', numbered(i)));
      assert.deepEqual(results, [true, true, true, false, false]);
      assert.deepEqual(
        { queued: peerStats(byCount, 'b').queuedMessages, dropped: peerStats(byCount, 'b').dropped },
        { queued: 3, dropped: 2 },
      );
      assert.equal(logger.entries.filter((entry) => entry.message === 'Queue full, dropping messages').length, 1);

      // Frames of 44 bytes: two fit in 100, the third does not; a small one still does.
      assert.deepEqual([0, 1, 2].map(() => byBytes.send('b', new Uint8Array(40))), [true, true, false]);
      assert.equal(byBytes.send('b', new Uint8Array(8)), true);
      assert.deepEqual(
        { bytes: peerStats(byBytes, 'b').queuedBytes, dropped: peerStats(byBytes, 'b').dropped },
        { bytes: 44 + 44 + 12, dropped: 1 },
      );

      // No address: dropped and counted apart; a payload above frameBytesMax is a caller bug.
      assert.equal(byCount.send('nobody', numbered(0)), false);
      assert.equal(byCount.stats().droppedNoAddress, 1);
      assert.throws(() => byBytes.send('b', new Uint8Array(41)), /exceeds frameBytesMax/);
    } finally {
      await Promise.all([byCount.close(), byBytes.close()]);
    }
  });

  it('stops writing when the socket pushes back, bounds memory, and drops a stalled connection', { timeout: 20_000 }, async () => {
    // A peer that accepts connections and never reads them.
    const sink = net.createServer({ pauseOnConnect: true });
    const sinkSockets = new Set<net.Socket>();
    sink.on('connection', (socket) => sinkSockets.add(socket));
    await new Promise<void>((resolve) => sink.listen(0, host, resolve));
    const sinkAddress = sink.address();
    assert.ok(sinkAddress !== null && typeof sinkAddress === 'object');
    const frameBytesMax = 64 * 1024;
    const queueBytesMax = 16 * (frameBytesMax + frameHeaderBytes);
    const batchBytesMax = 256 * 1024;
    const a = transport('a', {
      peers: new Map([['sink', { host, port: sinkAddress.port }]]), frameBytesMax, queueBytesMax, batchBytesMax, writeStallMs: 500,
    });
    try {
      const payload = new Uint8Array(frameBytesMax);
      let maxSocketBuffered = 0;
      for (let i = 0; i < 10_000 && (a.stats().peers[0]?.dropped ?? 0) < 5; i++) {
        a.send('sink', payload);
        const stats = peerStats(a, 'sink');
        assert.ok(stats.queuedBytes <= queueBytesMax);
        maxSocketBuffered = Math.max(maxSocketBuffered, stats.socketBufferedBytes);
        await new Promise((resolve) => setImmediate(resolve));
      }
      assert.equal(peerStats(a, 'sink').dropped, 5, 'The queue never filled');
      // Node's own buffer holds at most the batch that crossed the high-water mark.
      assert.ok(maxSocketBuffered <= batchBytesMax + 64 * 1024, `socket buffered ${maxSocketBuffered} bytes`);
      await waitFor('the stalled connection to be dropped', () => peerStats(a, 'sink').reconnects >= 1, 5_000);
    } finally {
      await a.close();
      for (const socket of sinkSockets) socket.destroy();
      await new Promise<void>((resolve) => sink.close(() => resolve()));
    }
  });

  it('closes connections with a malformed hello, a foreign hello, or no hello, and keeps serving', { timeout: 10_000 }, async () => {
    const b = await listening('b', { helloTimeoutMs: 200 });
    const port = boundAddress(b).port;
    const received: string[] = [];
    b.onMessage = (from) => received.push(from);
    const a = transport('a', { peers: new Map([['b', { host, port }]]) });
    const clients: net.Socket[] = [];
    try {
      const badMagic = await rawClient(port);
      clients.push(badMagic.socket);
      badMagic.socket.write(encodeFrame(new Uint8Array([1, 2, 3, 4, 1, 1, 0x61, 1, 0x62])));
      await closedWithin(badMagic.closed, 2_000, 'A connection with a bad magic number');

      const misaddressed = await rawClient(port);
      clients.push(misaddressed.socket);
      misaddressed.socket.write(encodeFrames([encodeHello({ from: 'x', to: 'c' }), numbered(1)]));
      await closedWithin(misaddressed.closed, 2_000, 'A connection meant for another process');

      const silent = await rawClient(port);
      clients.push(silent.socket);
      await closedWithin(silent.closed, 2_000, 'A connection without a hello');

      const hugeHello = await rawClient(port);
      clients.push(hugeHello.socket);
      const header = new Uint8Array(frameHeaderBytes);
      writeFrameHeader(header, 0, 100_000);
      hugeHello.socket.write(header);
      await closedWithin(hugeHello.closed, 2_000, 'A connection whose first frame is larger than a hello');

      assert.equal(b.stats().rejectedConnections, 4);
      assert.deepEqual(received, []);
      a.send('b', numbered(1));
      await waitFor('a message from a well-behaved peer', () => received.length === 1);
      assert.deepEqual(received, ['a']);
    } finally {
      for (const client of clients) client.destroy();
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('closes a connection that declares an oversized frame, after delivering the frames before it', { timeout: 10_000 }, async () => {
    const b = await listening('b', { frameBytesMax: 1000, queueBytesMax: 1004 });
    const port = boundAddress(b).port;
    const received: number[] = [];
    b.onMessage = (_from, payload) => received.push(number(payload));
    const a = transport('a', { peers: new Map([['b', { host, port }]]), frameBytesMax: 1000, queueBytesMax: 1004 });
    const raw = await rawClient(port);
    try {
      const oversized = new Uint8Array(frameHeaderBytes);
      writeFrameHeader(oversized, 0, 0xffffffff);
      raw.socket.write(new Uint8Array([...encodeFrames([encodeHello({ from: 'x', to: 'b' }), numbered(7)]), ...oversized, 1, 2, 3]));
      await closedWithin(raw.closed, 2_000, 'A connection declaring a 4 GiB frame');
      assert.deepEqual(received, [7]);
      assert.equal(b.stats().rejectedConnections, 1);
      a.send('b', numbered(8));
      await waitFor('a later message from another peer', () => received.length === 2);
      assert.deepEqual(received, [7, 8]);
    } finally {
      raw.socket.destroy();
      await Promise.all([a.close(), b.close()]);
    }
  });

  it('replaces an older inbound connection when the same sender says hello again', { timeout: 10_000 }, async () => {
    const b = await listening('b');
    const port = boundAddress(b).port;
    const older = await rawClient(port);
    const newer = await rawClient(port);
    try {
      older.socket.write(encodeFrame(encodeHello({ from: 'x', to: 'b' })));
      await waitFor('the first hello', () => b.stats().inboundConnections === 1);
      newer.socket.write(encodeFrame(encodeHello({ from: 'x', to: 'b' })));
      await closedWithin(older.closed, 2_000, 'The older connection of a sender');
      assert.equal(b.stats().inboundConnections, 1);
      assert.equal(newer.socket.destroyed, false);
    } finally {
      older.socket.destroy();
      newer.socket.destroy();
      await b.close();
    }
  });

  it('reports a peer lost when its connection closes, and not when a newer one replaces it', { timeout: 10_000 }, async () => {
    const b = await listening('b');
    const port = boundAddress(b).port;
    const lost: string[] = [];
    b.onPeerLost = (from) => lost.push(from);
    const older = await rawClient(port);
    const newer = await rawClient(port);
    try {
      older.socket.write(encodeFrame(encodeHello({ from: 'x', to: 'b' })));
      await waitFor('the first hello', () => b.stats().inboundConnections === 1);
      newer.socket.write(encodeFrame(encodeHello({ from: 'x', to: 'b' })));
      await closedWithin(older.closed, 2_000, 'The older connection of a sender');
      await sleep(50);
      assert.deepEqual(lost, [], 'a replaced connection is not a lost peer');
      newer.socket.destroy();
      await waitFor('the loss to be reported', () => lost.length === 1);
      assert.deepEqual(lost, ['x']);
    } finally {
      older.socket.destroy();
      newer.socket.destroy();
      await b.close();
    }
  });

  it('follows the address book: removed peers are disconnected, moved peers reconnected', { timeout: 10_000 }, async () => {
    const b1 = await listening('b');
    const b2 = await listening('b');
    const a = transport('a', { peers: new Map([['b', boundAddress(b1)]]) });
    const at1: number[] = [];
    const at2: number[] = [];
    b1.onMessage = (_from, payload) => at1.push(number(payload));
    b2.onMessage = (_from, payload) => at2.push(number(payload));
    try {
      a.send('b', numbered(1));
      await waitFor('delivery to the first address', () => at1.length === 1);
      a.updatePeers(new Map([['b', boundAddress(b2)]]));
      a.send('b', numbered(2));
      await waitFor('delivery to the new address', () => at2.length === 1);
      await waitFor('the old connection to close', () => b1.stats().inboundConnections === 0);
      assert.deepEqual([at1, at2], [[1], [2]]);

      a.updatePeers(new Map());
      assert.deepEqual(a.stats().peers, []);
      await waitFor('the removed peer to be disconnected', () => b2.stats().inboundConnections === 0);
      assert.equal(a.send('b', numbered(3)), false);
      assert.equal(a.stats().droppedNoAddress, 1);
    } finally {
      await Promise.all([a.close(), b1.close(), b2.close()]);
    }
  });

  it('close() releases every socket, server and timer', { timeout: 10_000 }, async () => {
    // Earlier tests closed all their sockets, so none may be left; the runner may hold timers.
    const count = (kinds: string[]): number => process.getActiveResourcesInfo().filter((kind) => kinds.includes(kind)).length;
    const sockets = ['TCPSocketWrap', 'TCPServerWrap', 'TCPWRAP'];
    const timersBefore = count(['Timeout']);
    const b = await listening('b');
    const unreachable = await freePort();
    // A long backoff keeps a reconnect timer pending across close(), so a leaked one would show.
    const logger = recordingLogger();
    const a = await listening('a', {
      peers: new Map([['b', boundAddress(b)], ['gone', { host, port: unreachable }]]), backoff: { initialMs: 60_000, maxMs: 60_000 }, logger,
    });
    let received = 0;
    b.onMessage = () => {
      received += 1;
    };
    a.send('b', numbered(1));
    a.send('gone', numbered(1));
    await waitFor('delivery', () => received === 1);
    await waitFor('a failed connection to the unreachable peer', () => logger.entries.some((entry) => entry.fields.peer === 'gone'));
    assert.ok(count(sockets) > 0);
    await Promise.all([a.close(), b.close()]);
    // Node drops a closed handle from this list a moment after its 'close' event.
    await waitFor('no sockets or timers left open', () => count(sockets) === 0 && count(['Timeout']) <= timersBefore, 2_000);
    assert.equal(a.send('b', numbered(2)), false);
  });

  it('lets a process that used transports exit on its own after close()', { timeout: 20_000 }, async () => {
    const tcpUrl = new URL('./tcp.ts', import.meta.url).href;
    const script = `
      import { TcpTransport } from ${JSON.stringify(tcpUrl)};
      const quiet = { debug() {}, info() {}, warn() {}, error() {} };
      const options = { queueBytesMax: 1 << 20, frameBytesMax: 1 << 19, queueMessagesMax: 100, backoff: { initialMs: 60000, maxMs: 60000 }, logger: quiet };
      const b = new TcpTransport({ selfId: 'b', listen: { host: '127.0.0.1', port: 0 }, peers: new Map(), ...options });
      await b.start();
      const a = new TcpTransport({ selfId: 'a', listen: { host: '127.0.0.1', port: 0 }, peers: new Map([['b', b.address()], ['gone', { host: '127.0.0.1', port: 1 }]]), ...options });
      await a.start();
      let received = 0;
      b.onMessage = () => { received += 1; };
      for (let i = 0; i < 100; i++) a.send('b', new Uint8Array([i]));
      a.send('gone', new Uint8Array([1]));
      for (let i = 0; i < 400 && received < 100; i++) await new Promise((resolve) => setTimeout(resolve, 5));
      await Promise.all([a.close(), b.close()]);
      console.log('received ' + received);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)), stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), 15_000);
    });
    const outcome = await Promise.race([exited, timedOut]);
    clearTimeout(timer);
    if (outcome === 'timeout') child.kill('SIGKILL');
    assert.notEqual(outcome, 'timeout', `The process did not exit after close(): ${output}`);
    assert.equal(outcome, 0, output);
    assert.match(output, /received 100/);
  });
});
