// The client port's front door: one TCP listener serves both the HTTP API and the binary client
// protocol (src/protocol/wire.ts). The first byte of a connection tells them apart — the wire
// protocol's preamble starts with a NUL, which no HTTP request does — and HTTP connections are
// handed to the node:http server as they are.
//
// A wire connection carries many requests at once. Their answers are gathered while the core's
// effects run and written in one socket write per connection per event-loop turn, so a batch of
// commits costs one system call per connection, not one per request. A shell: it carries bytes
// and counts; every decision about a request is the core's (or wire-api.ts's, for bad input).

import net from 'node:net';
import type { Server as HttpServer } from 'node:http';
import type { Logger } from 'pino';
import type { ClientRequest, ClientResponse } from '../protocol/types.ts';
import { connectionTag, encodeWireResponse, wirePreamble } from '../protocol/wire.ts';
import type { HttpApiLimits } from '../server/http-api.ts';
import { parseWireRequest, renderWireResponse } from '../server/wire-api.ts';
import { encodeFrames, FrameDecoder, frameBytesMax } from '../transport/framing.ts';

export interface WireServerOptions {
  http: HttpServer;
  limits: HttpApiLimits;
  logger: Logger;
  /** Hand a request to the core; `answer` is called once, possibly synchronously inside a later effect run. */
  submit(request: ClientRequest, answer: (response: ClientResponse) => void): void;
  /** Called after the requests of one chunk read from a connection were submitted. */
  afterChunk?: () => void;
  /** Called after `count` answers were written to a connection (for --trace-steps). */
  onAnswersWritten?: (count: number) => void;
  /** With NOT_MAIN: the client address of the main the error names, if the map knows it. */
  mainAddress(response: ClientResponse): string | undefined;
  /** Most requests one connection may have in flight; reading pauses above it (default 4096). */
  inflightMax?: number;
  /** Reading pauses while this many answer bytes wait to be sent (default 8 MiB). */
  pendingBytesMax?: number;
  /** Largest answer a frame carries (default and most: the framing's 64 MiB); a larger one becomes TOO_LARGE on its tag. */
  answerBytesMax?: number;
}

interface Connection {
  socket: net.Socket;
  decoder: FrameDecoder;
  inflight: number;
  /** Answers gathered this turn, written together. */
  out: Uint8Array[];
  paused: boolean;
  /** A 'drain' listener is waiting to resume reading. */
  awaitingDrain: boolean;
  closed: boolean;
}


/** How long a new connection may wait before its first byte. */
const firstByteTimeoutMs = 60_000;

export class ClientFrontDoor {
  readonly server: net.Server;
  private readonly connections = new Set<Connection>();
  private readonly httpSockets = new Set<net.Socket>();
  private readonly dirty = new Set<Connection>();
  private flushScheduled = false;
  private stopping = false;
  private readonly inflightMax: number;
  private readonly pendingBytesMax: number;
  private readonly answerBytesMax: number;
  /** Requests and refusals over the wire protocol, for metrics. */
  readonly counts = { requests: 0, refused: 0, broken: 0 };

  constructor(private readonly options: WireServerOptions) {
    this.inflightMax = options.inflightMax ?? 4096;
    this.pendingBytesMax = options.pendingBytesMax ?? 8 * 1024 * 1024;
    this.answerBytesMax = Math.min(options.answerBytesMax ?? frameBytesMax, frameBytesMax);
    this.server = net.createServer({ noDelay: true }, (socket) => this.sniff(socket));
  }

  get openConnections(): number {
    return this.connections.size;
  }

  /** Stop taking requests: new ones are answered UNAVAILABLE; answers in flight still go out. */
  stop(): void {
    this.stopping = true;
  }

  /** Close every wire connection and every HTTP connection this door handed over. */
  destroyAll(): void {
    for (const connection of this.connections) connection.socket.destroy();
    for (const socket of this.httpSockets) socket.destroy();
  }

  private sniff(socket: net.Socket): void {
    // A connection that never says a word is not held forever (HTTP's own timeouts start later).
    socket.setTimeout(firstByteTimeoutMs, () => socket.destroy());
    socket.once('data', (first: Buffer) => {
      socket.setTimeout(0);
      socket.pause();
      if (first[0] === wirePreamble[0]) {
        // It resumes the socket itself, unless the first chunk already filled its in-flight budget.
        this.serveWire(socket, first);
      } else {
        this.httpSockets.add(socket);
        socket.once('close', () => this.httpSockets.delete(socket));
        socket.unshift(first);
        this.options.http.emit('connection', socket);
        socket.resume();
      }
    });
    socket.on('error', () => {});
  }

  private serveWire(socket: net.Socket, first: Buffer): void {
    const limit = this.options.limits.requestBodyBytesMax + 64 * 1024;
    const connection: Connection = { socket, decoder: new FrameDecoder({ frameBytesMax: limit }), inflight: 0, out: [], paused: false, awaitingDrain: false, closed: false };
    this.connections.add(connection);
    socket.setNoDelay(true);
    // A client that vanished without a word (a cut cable, a dead machine) is found and dropped.
    socket.setKeepAlive(true, 30_000);
    socket.once('close', () => {
      connection.closed = true;
      this.connections.delete(connection);
      this.dirty.delete(connection);
    });
    let preamble: Buffer | null = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      if (preamble !== null) {
        preamble = Buffer.concat([preamble, chunk]);
        if (preamble.length < wirePreamble.length) return;
        if (!preamble.subarray(0, wirePreamble.length).equals(wirePreamble)) {
          this.breakConnection(connection, 'BAD_REQUEST', 'Unknown protocol preamble: this server speaks HTTP and the Mainstay wire protocol version 1');
          return;
        }
        socket.write(wirePreamble);
        chunk = preamble.subarray(wirePreamble.length);
        preamble = null;
      }
      const { payloads, error } = connection.decoder.push(chunk);
      for (const payload of payloads) this.onFrame(connection, payload);
      if (error !== null) this.breakConnection(connection, 'TOO_LARGE', `A frame is larger than the limit of ${limit} bytes`);
      if (payloads.length > 0) this.options.afterChunk?.();
    };
    socket.on('data', onData);
    onData(first);
    if (!connection.paused) socket.resume();
  }

  private onFrame(connection: Connection, payload: Uint8Array): void {
    if (connection.closed) return;
    const parsed = parseWireRequest(payload, this.options.limits);
    if (parsed.kind === 'broken') {
      this.breakConnection(connection, 'BAD_REQUEST', parsed.message);
      return;
    }
    if (parsed.kind === 'refused') {
      this.counts.refused += 1;
      this.queue(connection, parsed.answer);
      return;
    }
    this.counts.requests += 1;
    const { tag, request } = parsed;
    if (this.stopping) {
      this.queue(connection, encodeWireResponse(tag, { type: 'error', error: { code: 'UNAVAILABLE', message: 'The server is shutting down', definite: true } }));
      return;
    }
    connection.inflight += 1;
    if (connection.inflight >= this.inflightMax) this.pause(connection);
    this.options.submit(request, (response) => {
      connection.inflight -= 1;
      if (connection.closed) return;
      const answer = renderWireResponse(tag, response, this.options.mainAddress(response), this.answerBytesMax);
      this.queue(connection, answer);
    });
  }

  private queue(connection: Connection, frame: Uint8Array): void {
    connection.out.push(frame);
    this.dirty.add(connection);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    for (const connection of this.dirty) {
      const frames = connection.out;
      connection.out = [];
      if (connection.closed || frames.length === 0) continue;
      // Each answer fits a frame (renderWireResponse; encodeFrames asserts it); several go out as consecutive frames.
      connection.socket.write(encodeFrames(frames, this.answerBytesMax));
      this.options.onAnswersWritten?.(frames.length);
      if (connection.socket.writableLength > this.pendingBytesMax) {
        this.pause(connection);
        if (!connection.awaitingDrain) {
          connection.awaitingDrain = true;
          connection.socket.once('drain', () => {
            connection.awaitingDrain = false;
            this.maybeResume(connection);
          });
        }
      } else {
        this.maybeResume(connection);
      }
    }
    this.dirty.clear();
  }

  private pause(connection: Connection): void {
    if (connection.paused) return;
    connection.paused = true;
    connection.socket.pause();
  }

  private maybeResume(connection: Connection): void {
    if (!connection.paused || connection.closed) return;
    if (connection.inflight > this.inflightMax / 2 || connection.socket.writableLength > this.pendingBytesMax) return;
    connection.paused = false;
    connection.socket.resume();
  }

  /** Answer on the connection's own tag, then close it: its stream can no longer be trusted. */
  private breakConnection(connection: Connection, code: 'BAD_REQUEST' | 'TOO_LARGE', message: string): void {
    if (connection.closed) return;
    this.counts.broken += 1;
    this.options.logger.debug({ remote: connection.socket.remoteAddress, message }, 'Closing a wire connection');
    connection.closed = true;
    const answer = encodeWireResponse(connectionTag, { type: 'error', error: { code, message, definite: true } });
    connection.socket.end(encodeFrames([answer]));
    // A peer that never closes its side is not held.
    setTimeout(() => connection.socket.destroy(), 5_000).unref();
  }
}
