// The network between Mainstay processes (server ↔ server, manager ↔ server): length-prefixed
// frames over TCP. Every process listens for inbound connections and opens one outbound
// connection per peer, lazily, keeping it alive and reconnecting with jittered exponential
// backoff. A pair of processes therefore talks over two one-way connections: each side sends on
// the connection it opened and receives on the one the other side opened.
//
// Delivery is at most once and in order per connection: messages wait in a bounded per-peer
// queue while the peer is unreachable or the socket pushes back, and are dropped (and counted)
// when the queue is full or the connection breaks with them in flight. The protocol above
// retransmits, so dropping under pressure is correct and keeps memory bounded.
//
// This is a shell: it translates between sockets and payloads and decides nothing about them.
// Network errors never throw; they are logged once per change of a connection's state.

import net from 'node:net';
import { assert } from '../lib/assert.ts';
import {
  encodeFrame, FrameDecoder, frameBytesMax as defaultFrameBytesMax, frameHeaderBytes, writeFrameHeader,
} from './framing.ts';
import { decodeHello, encodeHello, helloBytesMax, idProblem } from './hello.ts';

export interface PeerAddress {
  host: string;
  port: number;
}

/** The address book: a fixed map, or a lookup consulted when a peer is first used and on `updatePeers`. */
export type PeerDirectory = ReadonlyMap<string, PeerAddress> | ((id: string) => PeerAddress | undefined);

export type LogFields = Record<string, unknown>;

/** Fields first, then the message: the call shape of pino, so a pino logger fits as is. */
export interface TransportLogger {
  debug(fields: LogFields, message: string): void;
  info(fields: LogFields, message: string): void;
  warn(fields: LogFields, message: string): void;
  error(fields: LogFields, message: string): void;
}

export interface TcpTransportOptions {
  /** This process's id, sent in the hello of every outbound connection. */
  selfId: string;
  /** Where to accept inbound connections; omit for a process that only sends. Port 0 lets the OS choose. */
  listen?: PeerAddress;
  peers: PeerDirectory;
  /**
   * Per peer: most frame bytes (length prefixes included) waiting to be handed to the socket.
   * At least one frame of frameBytesMax; defaults to exactly that.
   */
  queueBytesMax?: number;
  /** Per peer: most messages waiting to be handed to the socket; default 10,000. */
  queueMessagesMax?: number;
  /**
   * Reconnect delays: doubling from initialMs up to maxMs, each jittered to between half and all
   * of it; default 25 ms to 250 ms. The ceiling is low on purpose: a failover waits for the fence
   * replies of servers that may have just restarted, so a peer must be found again within a
   * fraction of a second of coming back; a connection attempt to a down peer costs next to nothing.
   */
  backoff?: { initialMs: number; maxMs: number };
  logger?: TransportLogger;
  onMessage?: (from: string, payload: Uint8Array) => void;
  /**
   * The identified connection on which a peer sends to us closed: a hint that its process may be
   * gone (a crash closes its sockets at once; a partition or a pause does not).
   */
  onPeerLost?: (from: string) => void;
  /** Jitter source in [0, 1). */
  random?: () => number;
  /** Monotonic milliseconds. */
  now?: () => number;
  /** Largest payload sent or accepted; both ends must agree. */
  frameBytesMax?: number;
  /** Small frames queued for a peer are concatenated into writes of at most this many bytes. */
  batchBytesMax?: number;
  /** An outbound connection attempt that takes longer fails. */
  connectTimeoutMs?: number;
  /** An inbound connection that has not said hello by then is closed. */
  helloTimeoutMs?: number;
  /** An outbound connection whose socket has not drained for this long is presumed dead; 0 disables. */
  writeStallMs?: number;
  keepAliveInitialDelayMs?: number;
  /** A connection that stayed up this long resets the backoff; shorter ones keep backing off. */
  connectionStableMs?: number;
  inboundConnectionsMax?: number;
}

export interface PeerStats {
  id: string;
  host: string;
  port: number;
  /** The outbound connection is established. */
  connected: boolean;
  queuedMessages: number;
  queuedBytes: number;
  /** Bytes handed to the socket that it has not yet passed to the kernel. */
  socketBufferedBytes: number;
  sentMessages: number;
  /** Messages refused because the queue was full. */
  dropped: number;
  /** Connection attempts after the first. */
  reconnects: number;
}

export interface TransportStats {
  peers: PeerStats[];
  /** Inbound connections that said hello. */
  inboundConnections: number;
  receivedMessages: number;
  /** Inbound connections closed for a bad hello, a hello timeout or a framing error. */
  rejectedConnections: number;
  /** Messages refused because the address book has no address for their peer. */
  droppedNoAddress: number;
}

const defaults = {
  queueMessagesMax: 10_000,
  backoff: { initialMs: 25, maxMs: 250 },
  batchBytesMax: 256 * 1024,
  connectTimeoutMs: 5_000,
  helloTimeoutMs: 5_000,
  writeStallMs: 15_000,
  keepAliveInitialDelayMs: 5_000,
  connectionStableMs: 1_000,
  inboundConnectionsMax: 1_024,
};

/** Compact a queue's consumed prefix once it is at least this long (and half the array). */
const queueCompactAfter = 1_024;

/** A doubling beyond this many attempts is already far above any sane maxMs. */
const backoffDoublingsMax = 30;

const EMPTY = new Uint8Array(0);

const consoleLogger: TransportLogger = {
  debug: () => {},
  info: () => {},
  warn: (fields, message) => console.warn(`transport: ${message}`, fields),
  error: (fields, message) => console.error(`transport: ${message}`, fields),
};

/** The outbound side of one peer. */
interface Peer {
  readonly id: string;
  address: PeerAddress;
  /** Payloads not yet handed to the socket, from index `queueHead` on. */
  queue: Uint8Array[];
  queueHead: number;
  /** Frame bytes of the queued payloads. Invariant: at most queueBytesMax. */
  queuedBytes: number;
  socket: net.Socket | null;
  /** `socket` finished connecting and carries our hello. */
  connected: boolean;
  /** The socket pushed back; nothing more is written to it until 'drain'. */
  waitingForDrain: boolean;
  reconnectTimer: ReturnType<typeof setTimeout> | null;
  stallTimer: ReturnType<typeof setTimeout> | null;
  /** Consecutive attempts that did not give a stable connection; drives the backoff. */
  failedAttempts: number;
  /** A connection was attempted at least once: from then on it is kept alive. */
  started: boolean;
  connectedAtMs: number;
  /** We logged that the peer is unreachable and have not logged it reachable since. */
  down: boolean;
  /** Its connections keep closing before they become stable: their ups and downs are logged at debug level. */
  flapping: boolean;
  /** We logged that the queue is dropping and have not logged it drained since. */
  dropping: boolean;
  sentMessages: number;
  dropped: number;
  reconnects: number;
}

function queueLength(peer: Peer): number {
  return peer.queue.length - peer.queueHead;
}

function dequeue(peer: Peer): Uint8Array {
  const payload = peer.queue[peer.queueHead];
  assert(payload !== undefined, 'Dequeue from an empty queue');
  peer.queue[peer.queueHead] = EMPTY;
  peer.queueHead += 1;
  peer.queuedBytes -= frameHeaderBytes + payload.length;
  if (peer.queueHead === peer.queue.length) {
    peer.queue = [];
    peer.queueHead = 0;
  } else if (peer.queueHead >= queueCompactAfter && peer.queueHead * 2 >= peer.queue.length) {
    peer.queue = peer.queue.slice(peer.queueHead);
    peer.queueHead = 0;
  }
  return payload;
}

function describe(error: Error | null): string {
  if (error === null) return 'closed by the peer';
  const code = (error as NodeJS.ErrnoException).code;
  return code === undefined ? error.message : `${code}: ${error.message}`;
}

function sameAddress(a: PeerAddress, b: PeerAddress): boolean {
  return a.host === b.host && a.port === b.port;
}

function whenClosed(socket: net.Socket): Promise<void> {
  if (socket.closed) return Promise.resolve();
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

export class TcpTransport {
  /**
   * Called for every payload received on an inbound connection, with the sender's hello id. The
   * payload may be a view of a socket read buffer: decode it, or copy it to keep it. The handler
   * must not throw; an exception is a bug and propagates.
   */
  onMessage: (from: string, payload: Uint8Array) => void;
  onPeerLost: (from: string) => void;

  private readonly selfId: string;
  private readonly listenAddress: PeerAddress | undefined;
  private directory: PeerDirectory;
  private readonly logger: TransportLogger;
  private readonly random: () => number;
  private readonly now: () => number;
  private readonly queueBytesMax: number;
  private readonly queueMessagesMax: number;
  private readonly backoffInitialMs: number;
  private readonly backoffMaxMs: number;
  private readonly frameBytesMax: number;
  private readonly batchBytesMax: number;
  private readonly connectTimeoutMs: number;
  private readonly helloTimeoutMs: number;
  private readonly writeStallMs: number;
  private readonly keepAliveInitialDelayMs: number;
  private readonly connectionStableMs: number;
  private readonly inboundConnectionsMax: number;

  /** Outbound state of every peer we have sent to and that is still in the address book. */
  private readonly peers = new Map<string, Peer>();
  /** Peers with queued messages to write on the next flush. */
  private readonly dirty = new Set<Peer>();
  private flushHandle: ReturnType<typeof setImmediate> | null = null;
  /** The identified inbound connection of each sender; a newer hello replaces the older one. */
  private readonly inbound = new Map<string, net.Socket>();
  /** Every socket not yet closed, inbound and outbound, so close() can wait for all of them. */
  private readonly sockets = new Set<net.Socket>();
  /** Ids without an address that we logged since the address book last changed. */
  private readonly unknownLogged = new Set<string>();
  private server: net.Server | null = null;
  private started = false;
  private closed = false;
  private closing: Promise<void> | null = null;

  private receivedMessages = 0;
  private rejectedConnections = 0;
  private droppedNoAddress = 0;

  constructor(options: TcpTransportOptions) {
    const selfProblem = idProblem(options.selfId);
    assert(selfProblem === null, `Bad selfId: ${selfProblem}`);
    this.selfId = options.selfId;
    this.listenAddress = options.listen;
    this.directory = options.peers;
    this.logger = options.logger ?? consoleLogger;
    this.onMessage = options.onMessage ?? (() => {});
    this.onPeerLost = options.onPeerLost ?? (() => {});
    this.random = options.random ?? Math.random;
    this.now = options.now ?? (() => performance.now());
    this.frameBytesMax = options.frameBytesMax ?? defaultFrameBytesMax;
    this.queueBytesMax = options.queueBytesMax ?? this.frameBytesMax + frameHeaderBytes;
    this.queueMessagesMax = options.queueMessagesMax ?? defaults.queueMessagesMax;
    this.backoffInitialMs = (options.backoff ?? defaults.backoff).initialMs;
    this.backoffMaxMs = (options.backoff ?? defaults.backoff).maxMs;
    this.batchBytesMax = options.batchBytesMax ?? defaults.batchBytesMax;
    this.connectTimeoutMs = options.connectTimeoutMs ?? defaults.connectTimeoutMs;
    this.helloTimeoutMs = options.helloTimeoutMs ?? defaults.helloTimeoutMs;
    this.writeStallMs = options.writeStallMs ?? defaults.writeStallMs;
    this.keepAliveInitialDelayMs = options.keepAliveInitialDelayMs ?? defaults.keepAliveInitialDelayMs;
    this.connectionStableMs = options.connectionStableMs ?? defaults.connectionStableMs;
    this.inboundConnectionsMax = options.inboundConnectionsMax ?? defaults.inboundConnectionsMax;

    assert(Number.isInteger(this.queueMessagesMax) && this.queueMessagesMax >= 1, 'queueMessagesMax must be at least 1');
    assert(Number.isInteger(this.frameBytesMax) && this.frameBytesMax >= 0 && this.frameBytesMax <= defaultFrameBytesMax * 64,
      `Bad frameBytesMax ${this.frameBytesMax}`);
    // Every frame the protocol may send must fit an empty queue, or it could never be sent.
    assert(this.frameBytesMax + frameHeaderBytes <= this.queueBytesMax, 'queueBytesMax must hold at least one frame of frameBytesMax');
    assert(this.batchBytesMax > frameHeaderBytes, 'batchBytesMax must hold at least one small frame');
    assert(this.backoffInitialMs > 0, 'backoff.initialMs must be positive');
    assert(this.backoffMaxMs >= this.backoffInitialMs, 'backoff.maxMs must be at least backoff.initialMs');
    assert(this.connectTimeoutMs > 0, 'connectTimeoutMs must be positive');
    assert(this.helloTimeoutMs > 0, 'helloTimeoutMs must be positive');
    assert(this.writeStallMs >= 0, 'writeStallMs must not be negative');
    assert(this.inboundConnectionsMax >= 1, 'inboundConnectionsMax must be at least 1');
  }

  /** Starts listening if configured. Fails (rejects) only when the listening address cannot be bound. */
  async start(): Promise<void> {
    assert(!this.started, 'TcpTransport.start called twice');
    assert(!this.closed, 'TcpTransport.start after close');
    this.started = true;
    const listen = this.listenAddress;
    if (listen === undefined) return;
    const server = net.createServer({
      noDelay: true, keepAlive: true, keepAliveInitialDelay: this.keepAliveInitialDelayMs,
    });
    server.maxConnections = this.inboundConnectionsMax;
    server.on('connection', (socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      server.once('error', onError);
      server.listen({ host: listen.host, port: listen.port }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    server.on('error', (error) => this.logger.error({ error: describe(error) }, 'Listening socket failed'));
    this.logger.info({ selfId: this.selfId, ...this.address() }, 'Listening');
  }

  /** The bound listening address (with the OS-chosen port when listening on port 0), or null. */
  address(): PeerAddress | null {
    const bound = this.server?.address();
    if (bound === null || bound === undefined || typeof bound === 'string') return null;
    return { host: bound.address, port: bound.port };
  }

  /**
   * Queues `payload` for `to` and returns true, or drops it and returns false when the transport is
   * closed, `to` has no address, or the peer's queue is full. A true result is no promise of delivery.
   */
  send(to: string, payload: Uint8Array): boolean {
    assert(payload.length <= this.frameBytesMax, `Payload of ${payload.length} bytes exceeds frameBytesMax ${this.frameBytesMax}`);
    if (this.closed) return false;
    const peer = this.peerFor(to);
    if (peer === null) {
      this.droppedNoAddress += 1;
      if (!this.unknownLogged.has(to)) {
        this.unknownLogged.add(to);
        this.logger.debug({ peer: to }, 'Dropping messages for a peer without an address');
      }
      return false;
    }
    const frameBytes = frameHeaderBytes + payload.length;
    if (queueLength(peer) >= this.queueMessagesMax || peer.queuedBytes + frameBytes > this.queueBytesMax) {
      peer.dropped += 1;
      if (!peer.dropping) {
        peer.dropping = true;
        this.logger.warn({
          peer: to, queuedMessages: queueLength(peer), queuedBytes: peer.queuedBytes, connected: peer.connected,
        }, 'Queue full, dropping messages');
      }
      return false;
    }
    peer.queue.push(payload);
    peer.queuedBytes += frameBytes;
    if (peer.socket === null) {
      if (peer.reconnectTimer === null) this.connect(peer);
    } else if (peer.connected && !peer.waitingForDrain) {
      this.scheduleFlush(peer);
    }
    return true;
  }

  /**
   * Replaces the address book. Peers no longer in it lose their connection and queue; peers whose
   * address changed reconnect to the new one right away, keeping their queue.
   */
  updatePeers(peers: PeerDirectory): void {
    this.directory = peers;
    this.unknownLogged.clear();
    if (this.closed) return;
    for (const peer of [...this.peers.values()]) {
      const address = this.resolve(peer.id);
      if (address === undefined) {
        this.logger.info({ peer: peer.id }, 'Peer removed from the address book');
        this.dropConnection(peer);
        this.peers.delete(peer.id);
        this.dirty.delete(peer);
      } else if (!sameAddress(address, peer.address)) {
        this.logger.info({ peer: peer.id, host: address.host, port: address.port }, 'Peer address changed');
        peer.address = { host: address.host, port: address.port };
        this.dropConnection(peer);
        peer.failedAttempts = 0;
        if (peer.started) this.connect(peer);
      }
    }
  }

  stats(): TransportStats {
    const peers = [...this.peers.values()].map((peer): PeerStats => ({
      id: peer.id,
      host: peer.address.host,
      port: peer.address.port,
      connected: peer.connected,
      queuedMessages: queueLength(peer),
      queuedBytes: peer.queuedBytes,
      socketBufferedBytes: peer.socket?.writableLength ?? 0,
      sentMessages: peer.sentMessages,
      dropped: peer.dropped,
      reconnects: peer.reconnects,
    }));
    peers.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return {
      peers,
      inboundConnections: this.inbound.size,
      receivedMessages: this.receivedMessages,
      rejectedConnections: this.rejectedConnections,
      droppedNoAddress: this.droppedNoAddress,
    };
  }

  /** Stops listening, closes every connection, drops every queue, and resolves once all sockets closed. */
  close(): Promise<void> {
    if (this.closing !== null) return this.closing;
    this.closed = true;
    if (this.flushHandle !== null) clearImmediate(this.flushHandle);
    this.flushHandle = null;
    this.dirty.clear();
    for (const peer of this.peers.values()) this.dropConnection(peer);
    this.peers.clear();
    const sockets = [...this.sockets];
    for (const socket of sockets) socket.destroy();
    this.inbound.clear();
    const server = this.server;
    const serverClosed = server === null || !server.listening
      ? Promise.resolve()
      : new Promise<void>((resolve) => server.close(() => resolve()));
    this.closing = Promise.all([serverClosed, ...sockets.map(whenClosed)]).then(() => {
      this.logger.debug({ selfId: this.selfId }, 'Transport closed');
    });
    return this.closing;
  }

  // ------------------------------------------------------------------ outbound

  private resolve(id: string): PeerAddress | undefined {
    return typeof this.directory === 'function' ? this.directory(id) : this.directory.get(id);
  }

  private peerFor(id: string): Peer | null {
    const existing = this.peers.get(id);
    if (existing !== undefined) return existing;
    const address = this.resolve(id);
    if (address === undefined) return null;
    if (idProblem(id) !== null) return null;
    const peer: Peer = {
      id, address: { host: address.host, port: address.port }, queue: [], queueHead: 0, queuedBytes: 0,
      socket: null, connected: false, waitingForDrain: false, reconnectTimer: null, stallTimer: null,
      failedAttempts: 0, started: false, connectedAtMs: 0, down: false, flapping: false, dropping: false,
      sentMessages: 0, dropped: 0, reconnects: 0,
    };
    this.peers.set(id, peer);
    return peer;
  }

  private connect(peer: Peer): void {
    assert(peer.socket === null, 'connect with a socket already open');
    assert(!this.closed, 'connect after close');
    if (peer.reconnectTimer !== null) clearTimeout(peer.reconnectTimer);
    peer.reconnectTimer = null;
    if (peer.started) peer.reconnects += 1;
    peer.started = true;
    const socket = net.createConnection({
      host: peer.address.host, port: peer.address.port,
      noDelay: true, keepAlive: true, keepAliveInitialDelay: this.keepAliveInitialDelayMs,
    });
    this.track(socket);
    peer.socket = socket;
    peer.connected = false;
    peer.waitingForDrain = false;
    let failure: Error | null = null;
    socket.setTimeout(this.connectTimeoutMs);
    socket.on('timeout', () => {
      if (!peer.connected) socket.destroy(new Error(`Connect timed out after ${this.connectTimeoutMs} ms`));
    });
    socket.on('connect', () => {
      if (peer.socket !== socket) return;
      socket.setTimeout(0);
      peer.connected = true;
      peer.connectedAtMs = this.now();
      if (peer.flapping) {
        this.logger.debug({ peer: peer.id, reconnects: peer.reconnects }, 'Connected to peer');
        const stableTimer = setTimeout(() => {
          if (peer.socket !== socket || !peer.connected || !peer.flapping) return;
          peer.flapping = false;
          this.logger.info({ peer: peer.id, reconnects: peer.reconnects }, 'Connected to peer (stable again)');
        }, this.connectionStableMs);
        stableTimer.unref();
      } else if (peer.down || peer.reconnects > 0) {
        this.logger.info({ peer: peer.id, reconnects: peer.reconnects }, 'Connected to peer');
      } else {
        this.logger.debug({ peer: peer.id }, 'Connected to peer');
      }
      peer.down = false;
      // The hello and whatever waited in the queue leave in one write.
      socket.cork();
      socket.write(encodeFrame(encodeHello({ from: this.selfId, to: peer.id })));
      this.flush(peer);
      socket.uncork();
    });
    // The peer never writes on this connection; reading still lets us see its end of stream.
    socket.on('data', () => {});
    socket.on('error', (error) => {
      failure = error;
    });
    socket.on('close', () => this.onOutboundClose(peer, socket, failure));
  }

  private onOutboundClose(peer: Peer, socket: net.Socket, failure: Error | null): void {
    if (peer.socket !== socket) return;
    const wasConnected = peer.connected;
    peer.socket = null;
    peer.connected = false;
    peer.waitingForDrain = false;
    this.clearStallTimer(peer);
    if (this.closed || this.peers.get(peer.id) !== peer) return;
    const wasStable = wasConnected && this.now() - peer.connectedAtMs >= this.connectionStableMs;
    if (wasStable) peer.failedAttempts = 0;
    peer.failedAttempts += 1;
    const doublings = Math.min(peer.failedAttempts - 1, backoffDoublingsMax);
    const ceilingMs = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** doublings);
    const delayMs = Math.max(1, Math.round(ceilingMs * (0.5 + 0.5 * this.random())));
    const fields = { peer: peer.id, host: peer.address.host, port: peer.address.port, reason: describe(failure), retryInMs: delayMs };
    if (wasConnected && (wasStable || !peer.flapping)) {
      this.logger.warn(fields, 'Connection to peer lost; reconnecting');
      peer.down = true;
      // Until a connection lasts connectionStableMs, further short ones are not logged one by one
      // (a peer behind a proxy or a port that accepts and resets at once would flood the log).
      peer.flapping = true;
    } else if (wasConnected) {
      this.logger.debug(fields, 'Connection to peer lost again before it became stable; reconnecting');
      peer.down = true;
    } else if (!peer.down) {
      this.logger.warn(fields, 'Cannot connect to peer; retrying with backoff');
      peer.down = true;
    }
    peer.reconnectTimer = setTimeout(() => {
      peer.reconnectTimer = null;
      if (!this.closed && this.peers.get(peer.id) === peer && peer.socket === null) this.connect(peer);
    }, delayMs);
  }

  /** Closes the peer's connection and cancels its timers; its queue stays. */
  private dropConnection(peer: Peer): void {
    if (peer.reconnectTimer !== null) clearTimeout(peer.reconnectTimer);
    peer.reconnectTimer = null;
    this.clearStallTimer(peer);
    const socket = peer.socket;
    peer.socket = null;
    peer.connected = false;
    peer.waitingForDrain = false;
    socket?.destroy();
  }

  /**
   * Hand every queued message to its socket now, instead of at the end of this event-loop turn:
   * for a caller that knows it has sent all it will for a while (the server process, after the
   * effects of one core step), this saves a turn of latency on every hop.
   */
  flushNow(): void {
    if (this.dirty.size === 0) return;
    const peers = [...this.dirty];
    this.dirty.clear();
    for (const peer of peers) this.flush(peer);
  }

  private scheduleFlush(peer: Peer): void {
    this.dirty.add(peer);
    if (this.flushHandle !== null) return;
    // Flushing on the check phase gathers every message sent during this turn of the event loop,
    // including those of all I/O callbacks that ran in it, into as few writes as possible.
    this.flushHandle = setImmediate(() => {
      this.flushHandle = null;
      const peers = [...this.dirty];
      this.dirty.clear();
      for (const dirtyPeer of peers) this.flush(dirtyPeer);
    });
  }

  /** Hands queued frames to the socket until the queue is empty or the socket pushes back. */
  private flush(peer: Peer): void {
    const socket = peer.socket;
    if (socket === null || !peer.connected || peer.waitingForDrain) return;
    let writable = true;
    // Every turn dequeues at least one message, so the loop ends with the queue.
    while (writable && queueLength(peer) > 0) {
      const head = peer.queue[peer.queueHead] as Uint8Array;
      if (frameHeaderBytes + head.length > this.batchBytesMax) {
        // A large payload goes out as is, after its own header, to avoid copying it.
        dequeue(peer);
        const header = new Uint8Array(frameHeaderBytes);
        writeFrameHeader(header, 0, head.length);
        socket.cork();
        socket.write(header);
        writable = socket.write(head);
        socket.uncork();
        peer.sentMessages += 1;
        continue;
      }
      let batchBytes = 0;
      let count = 0;
      for (let index = peer.queueHead; index < peer.queue.length; index++) {
        const frameBytes = frameHeaderBytes + (peer.queue[index] as Uint8Array).length;
        if (batchBytes + frameBytes > this.batchBytesMax) break;
        batchBytes += frameBytes;
        count += 1;
      }
      assert(count >= 1, 'A small frame must fit an empty batch');
      const batch = new Uint8Array(batchBytes);
      let offset = 0;
      for (let i = 0; i < count; i++) {
        const payload = dequeue(peer);
        writeFrameHeader(batch, offset, payload.length);
        batch.set(payload, offset + frameHeaderBytes);
        offset += frameHeaderBytes + payload.length;
      }
      writable = socket.write(batch);
      peer.sentMessages += count;
    }
    if (!writable) this.awaitDrain(peer, socket);
    if (queueLength(peer) === 0 && peer.dropping) {
      peer.dropping = false;
      this.logger.info({ peer: peer.id, droppedTotal: peer.dropped }, 'Queue drained');
    }
  }

  private awaitDrain(peer: Peer, socket: net.Socket): void {
    peer.waitingForDrain = true;
    socket.once('drain', () => {
      if (peer.socket !== socket) return;
      peer.waitingForDrain = false;
      this.clearStallTimer(peer);
      this.flush(peer);
    });
    if (this.writeStallMs > 0 && peer.stallTimer === null) {
      peer.stallTimer = setTimeout(() => {
        peer.stallTimer = null;
        if (peer.socket === socket && peer.waitingForDrain) {
          socket.destroy(new Error(`Socket did not drain for ${this.writeStallMs} ms`));
        }
      }, this.writeStallMs);
    }
  }

  private clearStallTimer(peer: Peer): void {
    if (peer.stallTimer !== null) clearTimeout(peer.stallTimer);
    peer.stallTimer = null;
  }

  // ------------------------------------------------------------------ inbound

  private track(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  private accept(socket: net.Socket): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    this.track(socket);
    const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    const decoder = new FrameDecoder({ frameBytesMax: this.frameBytesMax, firstFrameBytesMax: helloBytesMax });
    let from: string | null = null;
    let failure: Error | null = null;

    const reject = (reason: string): void => {
      if (socket.destroyed) return;
      this.rejectedConnections += 1;
      this.logger.warn({ remote, peer: from, reason }, 'Closing inbound connection');
      socket.destroy();
    };

    // A deadline rather than an idle timeout, so trickling a hello byte by byte does not extend it.
    let helloTimer: ReturnType<typeof setTimeout> | null = setTimeout(() => {
      helloTimer = null;
      if (from === null) reject(`No hello within ${this.helloTimeoutMs} ms`);
    }, this.helloTimeoutMs);
    const clearHelloTimer = (): void => {
      if (helloTimer !== null) clearTimeout(helloTimer);
      helloTimer = null;
    };
    socket.on('data', (chunk: Uint8Array) => {
      const { payloads, error } = decoder.push(chunk);
      for (const payload of payloads) {
        // A rejected hello, or a handler that closed the transport, ends delivery at once.
        if (socket.destroyed || this.closed) return;
        if (from === null) {
          from = this.identify(socket, payload, reject);
          if (from !== null) clearHelloTimer();
          continue;
        }
        this.receivedMessages += 1;
        this.onMessage(from, payload);
      }
      if (error !== null) reject(error.message);
    });
    socket.on('error', (error) => {
      failure = error;
    });
    socket.on('close', () => {
      clearHelloTimer();
      const current = from !== null && this.inbound.get(from) === socket;
      if (current) this.inbound.delete(from as string);
      this.logger.debug({ remote, peer: from, reason: describe(failure) }, 'Inbound connection closed');
      if (current && !this.closed) this.onPeerLost(from as string);
    });
  }

  /** Checks a connection's hello; returns the sender's id, or null after rejecting the connection. */
  private identify(socket: net.Socket, payload: Uint8Array, reject: (reason: string) => void): string | null {
    const result = decodeHello(payload);
    if (!result.ok) {
      reject(result.reason);
      return null;
    }
    const { from, to } = result.hello;
    if (to !== this.selfId) {
      reject(`Hello from "${from}" is addressed to "${to}", but this is "${this.selfId}"`);
      return null;
    }
    // A sender keeps one outbound connection to us, so a newer one means the older is dead.
    const previous = this.inbound.get(from);
    if (previous !== undefined) previous.destroy();
    this.inbound.set(from, socket);
    this.logger.debug({ peer: from, remote: `${socket.remoteAddress}:${socket.remotePort}` }, 'Inbound connection identified');
    return from;
  }
}
