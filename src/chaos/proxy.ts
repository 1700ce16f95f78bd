// A fault-injecting TCP proxy for tests against real processes on loopback (the Jepsen tier of
// STYLE.md). One proxy sits in front of one listening process, its target; every connection to
// the proxy gets its own connection to the target and bytes are copied both ways unchanged.
// Faults are set per source: the process that opened the connection, learnt from the hello that
// opens every Mainstay peer connection, or `client` for HTTP. A fault holds, delays or resets
// bytes but never drops, reorders or alters them, so both ends see a network fault and never a
// corrupt stream.
//
// How faults behave, and why:
// - Holding (blackhole, cut, the "on" half of flap) stops forwarding and pauses the socket that
//   would feed the held direction, so the sender meets TCP backpressure, as behind a real
//   partition. Nothing is closed: peers see silence, not resets. A connection opened from a
//   blackholed source is accepted (the proxy cannot refuse a SYN) but not connected through.
//   A close or reset from one end is queued like data, so it does not cross a partition either.
// - When a hold lifts, held connections resume: queued bytes flow, and connections accepted
//   during the partition are connected through then. This is what a short real partition does
//   (TCP retransmits); to model one long enough for TCP to give up, set a `reset` after healing.
// - A `cut` holds one direction of existing connections and of new ones; new connections are
//   still connected through, so "the request arrives, the reply is lost" works on fresh HTTP
//   connections too. (A real one-way partition would also block the handshake.)
// - Delays are per chunk read from a socket, sampled once, and delivered first in, first out, so
//   jitter never reorders bytes within a direction. Bytes already queued when a delay is lifted
//   still wait out the delay they were given. Connecting to the target is not delayed.
//
// Memory is bounded: each direction of each connection queues at most `bufferBytesMax` bytes
// (plus the chunk that crossed the limit, at most one socket read of 64 KiB) and
// `bufferChunksMax` chunks before the proxy stops reading from its source; a paused socket then
// holds at most its own read buffer (its highWaterMark) and the kernel does the rest. Timers are
// bounded in number and length: one per direction of a connection for delays (at most
// `faultMsMax`), one per flapping fault (cleared when it is replaced, on heal and on close), one
// per connection for its hello and then its connect deadline. close() clears them all.
//
// A test tool, and a shell: it interprets nothing above the hello.

import net from 'node:net';
import { assert } from '../lib/assert.ts';
import { FrameDecoder } from '../transport/framing.ts';
import { decodeHello, helloBytesMax } from '../transport/hello.ts';
import type { PeerAddress, TransportLogger } from '../transport/tcp.ts';

/** A fault set for this key applies to every source that has no fault of its own. */
export const anySource = '*';
/** The source of every connection to a proxy that does not identify connections (HTTP). */
export const clientSource = 'client';
/** The source of a connection whose first frame is not a valid hello, or that sent none in time. */
export const unidentifiedSource = '?';

export type FaultDirection = 'toTarget' | 'fromTarget';

export type Fault =
  /** A partition: nothing flows either way, new connections are held unconnected. */
  | { kind: 'blackhole' }
  /** A one-way partition: bytes in `direction` are held, the other direction flows. */
  | { kind: 'cut'; direction: FaultDirection }
  /** Every chunk in both directions waits `ms` plus a uniform draw from [0, jitterMs). */
  | { kind: 'delay'; ms: number; jitterMs?: number }
  /** A blackhole switched on and off every `periodMs`, starting on. */
  | { kind: 'flap'; periodMs: number }
  /** Once, not kept: resets (RST) the current connections from the source. */
  | { kind: 'reset' };

export type FaultKind = Fault['kind'];

/** Longest delay plus jitter, and longest flap period, so every timer the proxy sets is bounded. */
export const faultMsMax = 60_000;

export interface ChaosProxyOptions {
  /** For logs and stats, e.g. "peer of s1". */
  name: string;
  /** Where to listen; defaults to 127.0.0.1 on a port the OS chooses (port 0). */
  listen?: PeerAddress;
  target: PeerAddress;
  /** 'hello': learn each connection's source from its Mainstay hello; 'none': every source is `client`. */
  identify: 'hello' | 'none';
  /** Per connection and direction: queued bytes at which reading from the source pauses; default 256 KiB. */
  bufferBytesMax?: number;
  /** Per connection and direction: queued chunks at which reading from the source pauses; default 1,024. */
  bufferChunksMax?: number;
  /** Inbound connections open at once; more are refused by the listening socket. Default 1,024. */
  connectionsMax?: number;
  /** A connection that has not sent a whole hello by then is forwarded as `unidentifiedSource`. */
  helloTimeoutMs?: number;
  /** A connection to the target that takes longer fails, which resets the inbound connection. */
  connectTimeoutMs?: number;
  /** Jitter source in [0, 1); pass a seeded one to reproduce a run. */
  random?: () => number;
  logger?: TransportLogger;
}

export interface ChaosProxyStats {
  name: string;
  connectionsAccepted: number;
  /** Inbound connections not yet closed. */
  connectionsActive: number;
  /** Active connections with a direction held, or accepted and held unconnected, by a fault now. */
  connectionsHeld: number;
  /** Connections ended by `reset` faults. */
  connectionsReset: number;
  /** Connections to the target that failed or timed out before connecting. */
  targetConnectFailures: number;
  /** Bytes written to the target and to clients. */
  bytesToTarget: number;
  bytesFromTarget: number;
  /** Bytes read and not yet delivered, over every connection and direction. */
  bytesQueued: number;
  /** Calls of setFault per kind (heal and clearing are not counted). */
  faultsSet: Record<FaultKind, number>;
  /** Active connections per source; those still identifying are not listed. */
  activeBySource: Record<string, number>;
  /** Timers pending now: delays, flaps, hello and connect deadlines. Zero once healed and idle. */
  timersActive: number;
}

const defaults = {
  listen: { host: '127.0.0.1', port: 0 },
  bufferBytesMax: 256 * 1024,
  bufferChunksMax: 1_024,
  connectionsMax: 1_024,
  helloTimeoutMs: 5_000,
  connectTimeoutMs: 5_000,
};

/** Compact a queue's consumed prefix once it is at least this long (and half the array). */
const queueCompactAfter = 256;

const silentLogger: TransportLogger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

type Timer = ReturnType<typeof setTimeout>;

/** One thing read from a source, in stream order: bytes, its end (FIN), or its failure (RST). */
type Item =
  | { kind: 'data'; bytes: Uint8Array; dueMs: number }
  | { kind: 'end'; dueMs: number }
  | { kind: 'abort'; dueMs: number };

/** One direction of a connection. */
interface Pipe {
  readonly direction: FaultDirection;
  /** Items read and not yet delivered, from index `head` on, first in first out. */
  items: Item[];
  head: number;
  /** Bytes of the queued data items. Invariant: the sum of their lengths. */
  queuedBytes: number;
  /** A fault holds this direction: nothing is delivered and the source is not read. */
  held: boolean;
  delay: { ms: number; jitterMs: number } | null;
  /** The source ended or failed and that item is queued; nothing is queued after it. */
  sourceDone: boolean;
  /** The destination closed: what is queued is dropped and what arrives is read and discarded. */
  destinationGone: boolean;
  waitingForDrain: boolean;
  /** Whether we last asked the source socket to flow (true) or pause (false). */
  reading: boolean;
  /** Wakes the pipe when its head item is due. Invariant: only set while it has a due item to wait for. */
  timer: Timer | null;
}

interface Connection {
  readonly id: number;
  readonly client: net.Socket;
  target: net.Socket | null;
  /** The target socket finished connecting. */
  targetOpen: boolean;
  clientClosed: boolean;
  targetClosed: boolean;
  /** The source id; null while the hello is still being read. */
  source: string | null;
  /** Reads the hello; null once identified. */
  decoder: FrameDecoder | null;
  /** Chunks read while identifying, forwarded once the source is known. Bounded by helloBytesMax plus one read. */
  early: Uint8Array[];
  /** The hello deadline, then the target's connect deadline. */
  deadline: Timer | null;
  /** A fault keeps this connection from being connected through to the target. */
  connectHeld: boolean;
  readonly toTarget: Pipe;
  readonly fromTarget: Pipe;
}

interface FaultEntry {
  fault: Fault;
  /** For flap: whether the blackhole half is on now. */
  flapOn: boolean;
  flapTimer: ReturnType<typeof setInterval> | null;
}

function newPipe(direction: FaultDirection): Pipe {
  return {
    direction, items: [], head: 0, queuedBytes: 0, held: false, delay: null, sourceDone: false,
    destinationGone: false, waitingForDrain: false, reading: true, timer: null,
  };
}

function queuedItems(pipe: Pipe): number {
  return pipe.items.length - pipe.head;
}

function dequeue(pipe: Pipe): Item {
  const item = pipe.items[pipe.head];
  assert(item !== undefined, 'Dequeue from an empty pipe');
  pipe.head += 1;
  if (item.kind === 'data') pipe.queuedBytes -= item.bytes.length;
  if (pipe.head === pipe.items.length) {
    pipe.items = [];
    pipe.head = 0;
  } else if (pipe.head >= queueCompactAfter && pipe.head * 2 >= pipe.items.length) {
    pipe.items = pipe.items.slice(pipe.head);
    pipe.head = 0;
  }
  return item;
}

function clearPipe(pipe: Pipe): void {
  if (pipe.timer !== null) clearTimeout(pipe.timer);
  pipe.timer = null;
  pipe.items = [];
  pipe.head = 0;
  pipe.queuedBytes = 0;
}

/** Sends an RST where the socket can, so the other end sees ECONNRESET as from a crashed peer. */
function resetSocket(socket: net.Socket): void {
  if (socket.destroyed) return;
  if (socket.connecting) socket.destroy();
  else socket.resetAndDestroy();
}

function whenClosed(socket: net.Socket): Promise<void> {
  if (socket.closed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

function checkFault(fault: Fault): void {
  switch (fault.kind) {
    case 'blackhole':
    case 'reset':
      return;
    case 'cut':
      assert(fault.direction === 'toTarget' || fault.direction === 'fromTarget', `Bad cut direction "${String(fault.direction)}"`);
      return;
    case 'delay': {
      const jitterMs = fault.jitterMs ?? 0;
      assert(Number.isFinite(fault.ms) && fault.ms >= 0, `Bad delay ${fault.ms} ms`);
      assert(Number.isFinite(jitterMs) && jitterMs >= 0, `Bad jitter ${jitterMs} ms`);
      assert(fault.ms + jitterMs <= faultMsMax, `Delay plus jitter exceeds ${faultMsMax} ms`);
      return;
    }
    case 'flap':
      assert(Number.isFinite(fault.periodMs) && fault.periodMs >= 1, `Bad flap period ${fault.periodMs} ms`);
      assert(fault.periodMs <= faultMsMax, `Flap period exceeds ${faultMsMax} ms`);
      return;
  }
}

export class ChaosProxy {
  readonly name: string;

  private readonly target: PeerAddress;
  private readonly identify: 'hello' | 'none';
  private readonly bufferBytesMax: number;
  private readonly bufferChunksMax: number;
  private readonly helloTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly random: () => number;
  private readonly logger: TransportLogger;
  private readonly server: net.Server;

  /** Faults by source key (an id or `anySource`); `reset` is never kept. */
  private readonly faults = new Map<string, FaultEntry>();
  /** Every connection with a socket not yet closed, in accept order. */
  private readonly connections = new Map<number, Connection>();
  /** Every socket not yet closed, so close() can wait for all of them. */
  private readonly sockets = new Set<net.Socket>();
  private nextConnectionId = 1;
  private closed = false;
  private closing: Promise<void> | null = null;

  private connectionsAccepted = 0;
  private connectionsReset = 0;
  private targetConnectFailures = 0;
  private bytesToTarget = 0;
  private bytesFromTarget = 0;
  private readonly faultsSet: Record<FaultKind, number> = { blackhole: 0, cut: 0, delay: 0, flap: 0, reset: 0 };

  private constructor(options: ChaosProxyOptions, server: net.Server) {
    this.name = options.name;
    this.target = { host: options.target.host, port: options.target.port };
    this.identify = options.identify;
    this.bufferBytesMax = options.bufferBytesMax ?? defaults.bufferBytesMax;
    this.bufferChunksMax = options.bufferChunksMax ?? defaults.bufferChunksMax;
    this.helloTimeoutMs = options.helloTimeoutMs ?? defaults.helloTimeoutMs;
    this.connectTimeoutMs = options.connectTimeoutMs ?? defaults.connectTimeoutMs;
    this.random = options.random ?? Math.random;
    this.logger = options.logger ?? silentLogger;
    this.server = server;
  }

  /** Listens and resolves with the proxy; rejects when the listening address cannot be bound. */
  static async start(options: ChaosProxyOptions): Promise<ChaosProxy> {
    assert(options.identify === 'hello' || options.identify === 'none', `Bad identify "${String(options.identify)}"`);
    const connectionsMax = options.connectionsMax ?? defaults.connectionsMax;
    assert(Number.isInteger(connectionsMax) && connectionsMax >= 1, 'connectionsMax must be at least 1');
    const server = net.createServer({ allowHalfOpen: true, noDelay: true });
    server.maxConnections = connectionsMax;
    const proxy = new ChaosProxy(options, server);
    assert(proxy.bufferBytesMax >= 1, 'bufferBytesMax must be at least 1');
    assert(Number.isInteger(proxy.bufferChunksMax) && proxy.bufferChunksMax >= 1, 'bufferChunksMax must be at least 1');
    assert(proxy.helloTimeoutMs > 0 && proxy.helloTimeoutMs <= faultMsMax, 'helloTimeoutMs must be positive and bounded');
    assert(proxy.connectTimeoutMs > 0 && proxy.connectTimeoutMs <= faultMsMax, 'connectTimeoutMs must be positive and bounded');
    server.on('connection', (socket) => proxy.accept(socket));
    const listen = options.listen ?? defaults.listen;
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      server.once('error', onError);
      server.listen({ host: listen.host, port: listen.port }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    server.on('error', (error) => proxy.logger.error({ proxy: proxy.name, error: error.message }, 'Listening socket failed'));
    proxy.logger.info({ proxy: proxy.name, ...proxy.address, target: proxy.target }, 'Chaos proxy listening');
    return proxy;
  }

  /** The bound listening address, with the port the OS chose. */
  get address(): PeerAddress {
    const bound = this.server.address();
    assert(bound !== null && typeof bound === 'object', 'The chaos proxy is not listening');
    return { host: bound.address, port: bound.port };
  }

  /**
   * Sets the fault for `source` (a process id, `clientSource`, `unidentifiedSource`, or
   * `anySource`), replacing its previous one; `undefined` clears it. A source's own fault wins
   * over `anySource`'s. A `reset` is applied once to the current connections from `source`
   * (every connection for `anySource`) and leaves the kept fault as it was.
   */
  setFault(source: string, fault: Fault | undefined): void {
    assert(source.length > 0, 'Fault source is empty');
    if (this.closed) return;
    if (fault === undefined) {
      this.clearFault(source);
      this.logger.info({ proxy: this.name, source }, 'Fault cleared');
      this.applyAll();
      return;
    }
    checkFault(fault);
    this.faultsSet[fault.kind] += 1;
    this.logger.info({ proxy: this.name, source, fault }, 'Fault set');
    if (fault.kind === 'reset') {
      this.reset(source);
      return;
    }
    this.clearFault(source);
    const entry: FaultEntry = { fault: { ...fault }, flapOn: fault.kind === 'flap', flapTimer: null };
    if (fault.kind === 'flap') {
      entry.flapTimer = setInterval(() => {
        entry.flapOn = !entry.flapOn;
        this.applyAll();
      }, fault.periodMs);
    }
    this.faults.set(source, entry);
    this.applyAll();
  }

  /** Clears every fault. Held connections resume (see the module comment). */
  heal(): void {
    if (this.closed) return;
    for (const source of [...this.faults.keys()]) this.clearFault(source);
    this.logger.info({ proxy: this.name }, 'Healed');
    this.applyAll();
  }

  /** The faults kept now, by source key. */
  currentFaults(): Map<string, Fault> {
    return new Map([...this.faults].map(([source, entry]) => [source, { ...entry.fault }]));
  }

  stats(): ChaosProxyStats {
    let connectionsHeld = 0;
    let bytesQueued = 0;
    let timersActive = 0;
    const activeBySource: Record<string, number> = {};
    for (const connection of this.connections.values()) {
      bytesQueued += connection.toTarget.queuedBytes + connection.fromTarget.queuedBytes;
      if (connection.toTarget.timer !== null) timersActive += 1;
      if (connection.fromTarget.timer !== null) timersActive += 1;
      if (connection.deadline !== null) timersActive += 1;
      if (connection.source === null) continue;
      activeBySource[connection.source] = (activeBySource[connection.source] ?? 0) + 1;
      const unconnected = connection.connectHeld && connection.target === null && !connection.clientClosed;
      if (unconnected || connection.toTarget.held || connection.fromTarget.held) connectionsHeld += 1;
    }
    for (const entry of this.faults.values()) if (entry.flapTimer !== null) timersActive += 1;
    return {
      name: this.name,
      connectionsAccepted: this.connectionsAccepted,
      connectionsActive: this.connections.size,
      connectionsHeld,
      connectionsReset: this.connectionsReset,
      targetConnectFailures: this.targetConnectFailures,
      bytesToTarget: this.bytesToTarget,
      bytesFromTarget: this.bytesFromTarget,
      bytesQueued,
      faultsSet: { ...this.faultsSet },
      activeBySource,
      timersActive,
    };
  }

  /** Stops listening, clears every timer, destroys every connection, and resolves once all sockets closed. */
  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closed = true;
    for (const source of [...this.faults.keys()]) this.clearFault(source);
    for (const connection of this.connections.values()) {
      this.clearTimers(connection);
      connection.early = [];
    }
    const sockets = [...this.sockets];
    for (const socket of sockets) socket.destroy();
    const serverClosed = this.server.listening
      ? new Promise<void>((resolve) => this.server.close(() => resolve()))
      : Promise.resolve();
    this.closing = Promise.all([serverClosed, ...sockets.map(whenClosed)]).then(() => {
      this.connections.clear();
      this.logger.debug({ proxy: this.name }, 'Chaos proxy closed');
    });
    return this.closing;
  }

  // ------------------------------------------------------------------ faults

  private clearFault(source: string): void {
    const entry = this.faults.get(source);
    if (entry === undefined) return;
    if (entry.flapTimer !== null) clearInterval(entry.flapTimer);
    entry.flapTimer = null;
    this.faults.delete(source);
  }

  private reset(source: string): void {
    for (const connection of [...this.connections.values()]) {
      if (source !== anySource && connection.source !== source) continue;
      this.connectionsReset += 1;
      this.logger.debug({ proxy: this.name, connection: connection.id, source: connection.source }, 'Resetting connection');
      resetSocket(connection.client);
      if (connection.target !== null) resetSocket(connection.target);
    }
  }

  /** Re-applies the faults to every connection; called whenever they change. */
  private applyAll(): void {
    for (const connection of [...this.connections.values()]) this.apply(connection);
  }

  /** Brings a connection in line with the fault of its source: holds, delays, connects, delivers. */
  private apply(connection: Connection): void {
    if (this.closed || connection.source === null) return;
    const entry = this.faults.get(connection.source) ?? this.faults.get(anySource);
    const fault = entry?.fault;
    const blackhole = fault?.kind === 'blackhole' || (fault?.kind === 'flap' && entry?.flapOn === true);
    connection.connectHeld = blackhole;
    connection.toTarget.held = blackhole || (fault?.kind === 'cut' && fault.direction === 'toTarget');
    connection.fromTarget.held = blackhole || (fault?.kind === 'cut' && fault.direction === 'fromTarget');
    const delay = fault?.kind === 'delay' ? { ms: fault.ms, jitterMs: fault.jitterMs ?? 0 } : null;
    connection.toTarget.delay = delay;
    connection.fromTarget.delay = delay;
    if (connection.target === null && !connection.connectHeld && !connection.clientClosed) this.connectTarget(connection);
    this.pump(connection, connection.toTarget);
    this.pump(connection, connection.fromTarget);
  }

  // ------------------------------------------------------------------ connections

  private track(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  private accept(client: net.Socket): void {
    if (this.closed) {
      client.destroy();
      return;
    }
    this.track(client);
    this.connectionsAccepted += 1;
    const connection: Connection = {
      id: this.nextConnectionId++, client, target: null, targetOpen: false, clientClosed: false, targetClosed: false,
      source: null, decoder: null, early: [], deadline: null, connectHeld: false,
      toTarget: newPipe('toTarget'), fromTarget: newPipe('fromTarget'),
    };
    this.connections.set(connection.id, connection);
    client.on('data', (chunk: Uint8Array) => this.onClientData(connection, chunk));
    client.on('end', () => {
      if (connection.source === null) this.identified(connection, unidentifiedSource);
      this.enqueue(connection, connection.toTarget, 'end');
    });
    client.on('error', (error) => {
      this.logger.debug({ proxy: this.name, connection: connection.id, error: error.message }, 'Client socket failed');
    });
    client.on('close', () => this.onClientClose(connection));
    if (this.identify === 'none') {
      this.identified(connection, clientSource);
      return;
    }
    // Only the hello is read before the source is known, so the first frame is limited to its size.
    connection.decoder = new FrameDecoder({ frameBytesMax: helloBytesMax, firstFrameBytesMax: helloBytesMax });
    connection.deadline = setTimeout(() => {
      connection.deadline = null;
      if (connection.source === null) this.identified(connection, unidentifiedSource);
    }, this.helloTimeoutMs);
  }

  private onClientData(connection: Connection, chunk: Uint8Array): void {
    if (this.closed) return;
    const decoder = connection.decoder;
    if (connection.source === null && decoder !== null) {
      connection.early.push(chunk);
      const { payloads, error } = decoder.push(chunk);
      const hello = payloads[0];
      if (hello !== undefined) {
        const result = decodeHello(hello);
        this.identified(connection, result.ok ? result.hello.from : unidentifiedSource);
      } else if (error !== null) {
        this.identified(connection, unidentifiedSource);
      }
      return;
    }
    this.enqueueData(connection, connection.toTarget, chunk);
  }

  /** The source is known: queue what was read so far and connect unless a fault holds it. */
  private identified(connection: Connection, source: string): void {
    assert(connection.source === null, 'Connection identified twice');
    connection.source = source;
    connection.decoder = null;
    if (connection.deadline !== null) clearTimeout(connection.deadline);
    connection.deadline = null;
    this.logger.debug({ proxy: this.name, connection: connection.id, source }, 'Connection identified');
    this.apply(connection);
    const early = connection.early;
    connection.early = [];
    for (const chunk of early) this.enqueueData(connection, connection.toTarget, chunk);
  }

  private connectTarget(connection: Connection): void {
    assert(connection.target === null, 'Connecting a connection twice');
    const target = net.createConnection({ host: this.target.host, port: this.target.port, allowHalfOpen: true, noDelay: true });
    this.track(target);
    connection.target = target;
    connection.deadline = setTimeout(() => {
      connection.deadline = null;
      if (!connection.targetOpen) target.destroy(new Error(`Connect timed out after ${this.connectTimeoutMs} ms`));
    }, this.connectTimeoutMs);
    target.on('connect', () => {
      if (connection.deadline !== null) clearTimeout(connection.deadline);
      connection.deadline = null;
      if (this.closed) return;
      connection.targetOpen = true;
      this.apply(connection);
    });
    target.on('data', (chunk: Uint8Array) => this.enqueueData(connection, connection.fromTarget, chunk));
    target.on('end', () => this.enqueue(connection, connection.fromTarget, 'end'));
    target.on('error', (error) => {
      this.logger.debug({ proxy: this.name, connection: connection.id, error: error.message }, 'Target socket failed');
    });
    target.on('close', () => this.onTargetClose(connection));
  }

  private onClientClose(connection: Connection): void {
    connection.clientClosed = true;
    // Nothing can reach the client any more; what the target still sends is read and discarded.
    connection.fromTarget.destinationGone = true;
    clearPipe(connection.fromTarget);
    if (connection.source === null) {
      connection.decoder = null;
      connection.early = [];
    }
    if (connection.target !== null && !connection.targetOpen) {
      // The target never saw this connection: no partition to respect, just stop connecting.
      connection.target.destroy();
    } else if (connection.target !== null) {
      // An end was already queued after a clean close; otherwise the client failed, and the
      // target learns it only when the failure crosses the pipe, as an RST would.
      this.enqueue(connection, connection.toTarget, 'abort');
    }
    this.pump(connection, connection.fromTarget);
    this.finishIfClosed(connection);
  }

  private onTargetClose(connection: Connection): void {
    connection.targetClosed = true;
    // A connect abandoned because the client left or the proxy closed is no failure.
    if (!connection.targetOpen && !connection.clientClosed && !this.closed) {
      this.targetConnectFailures += 1;
      this.logger.debug({ proxy: this.name, connection: connection.id, target: this.target }, 'Cannot connect to the target');
    }
    if (connection.deadline !== null) clearTimeout(connection.deadline);
    connection.deadline = null;
    connection.toTarget.destinationGone = true;
    clearPipe(connection.toTarget);
    // A refused connection or a target that failed resets the client, once that crosses the pipe.
    this.enqueue(connection, connection.fromTarget, 'abort');
    this.pump(connection, connection.toTarget);
    this.finishIfClosed(connection);
  }

  private finishIfClosed(connection: Connection): void {
    if (!connection.clientClosed) return;
    if (connection.target !== null && !connection.targetClosed) return;
    this.clearTimers(connection);
    this.connections.delete(connection.id);
  }

  private clearTimers(connection: Connection): void {
    if (connection.deadline !== null) clearTimeout(connection.deadline);
    connection.deadline = null;
    clearPipe(connection.toTarget);
    clearPipe(connection.fromTarget);
  }

  // ------------------------------------------------------------------ pipes

  private enqueueData(connection: Connection, pipe: Pipe, bytes: Uint8Array): void {
    if (this.closed || pipe.destinationGone) return;
    assert(!pipe.sourceDone, 'Data read after the end of its stream');
    pipe.items.push({ kind: 'data', bytes, dueMs: this.dueMs(pipe) });
    pipe.queuedBytes += bytes.length;
    this.pump(connection, pipe);
  }

  /** Queues the end (FIN) or failure (RST) of a pipe's source, unless one is queued already. */
  private enqueue(connection: Connection, pipe: Pipe, kind: 'end' | 'abort'): void {
    if (this.closed || pipe.sourceDone) return;
    pipe.sourceDone = true;
    if (pipe.destinationGone) return;
    pipe.items.push({ kind, dueMs: this.dueMs(pipe) });
    this.pump(connection, pipe);
  }

  private dueMs(pipe: Pipe): number {
    const now = performance.now();
    if (pipe.delay === null) return now;
    return now + pipe.delay.ms + this.random() * pipe.delay.jitterMs;
  }

  private destinationOf(connection: Connection, pipe: Pipe): net.Socket | null {
    const socket = pipe.direction === 'toTarget' ? (connection.targetOpen ? connection.target : null) : connection.client;
    return socket === null || socket.destroyed ? null : socket;
  }

  /**
   * Delivers the pipe's due items in order until it is empty, held, waiting for the destination
   * to drain, or its head is not yet due (then a timer wakes it); then sets its source reading.
   */
  private pump(connection: Connection, pipe: Pipe): void {
    if (pipe.timer !== null) clearTimeout(pipe.timer);
    pipe.timer = null;
    if (this.closed) return;
    const destination = this.destinationOf(connection, pipe);
    if (destination !== null && !pipe.held && !pipe.waitingForDrain) {
      const now = performance.now();
      while (queuedItems(pipe) > 0) {
        const head = pipe.items[pipe.head] as Item;
        if (head.dueMs > now) {
          pipe.timer = setTimeout(() => {
            pipe.timer = null;
            this.pump(connection, pipe);
          }, Math.max(1, Math.ceil(head.dueMs - now)));
          break;
        }
        const item = dequeue(pipe);
        if (item.kind === 'end') {
          destination.end();
        } else if (item.kind === 'abort') {
          resetSocket(destination);
        } else {
          if (pipe.direction === 'toTarget') this.bytesToTarget += item.bytes.length;
          else this.bytesFromTarget += item.bytes.length;
          if (!destination.write(item.bytes)) {
            pipe.waitingForDrain = true;
            destination.once('drain', () => {
              pipe.waitingForDrain = false;
              this.pump(connection, pipe);
            });
            break;
          }
        }
      }
    }
    this.updateReading(connection, pipe);
  }

  /** Reads the pipe's source unless the pipe is held or full; a source with no destination is drained. */
  private updateReading(connection: Connection, pipe: Pipe): void {
    const source = pipe.direction === 'toTarget' ? connection.client : connection.target;
    if (source === null || source.destroyed) return;
    const identifying = pipe.direction === 'toTarget' && connection.source === null;
    const full = pipe.queuedBytes >= this.bufferBytesMax || queuedItems(pipe) >= this.bufferChunksMax;
    const read = identifying || pipe.destinationGone || (!pipe.held && !full);
    if (read === pipe.reading) return;
    pipe.reading = read;
    if (read) source.resume();
    else source.pause();
  }
}
