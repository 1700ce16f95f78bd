// One connection of the binary client protocol (src/protocol/wire.ts, docs/PROTOCOL.md) to one
// server: many requests in flight at once, answers matched by tag. Requests issued in the same
// event-loop turn leave in one socket write. It neither retries nor finds the main — the Client
// (client.ts) does that over HTTP; this is the fast path for callers that talk to a known main
// and handle NOT_MAIN themselves, and what `npm run bench` drives.

import net from 'node:net';
import type { ClientRequest } from '../protocol/types.ts';
import { connectionTag, decodeWireResponse, encodeWireRequest, tagMax, wirePreamble, type WireResponse } from '../protocol/wire.ts';
import { encodeFrames, frameBytesMax, FrameDecoder } from '../transport/framing.ts';

export class WireConnectionError extends Error {
  override name = 'WireConnectionError';
  constructor(message: string, readonly sent: boolean) {
    super(message);
  }
}

/** The server answered the greeting with something else: it does not speak this protocol (an HTTP-only server or proxy). */
export class WireProtocolMismatchError extends Error {
  override name = 'WireProtocolMismatchError';
}

/** No answer to one request within its deadline; the connection stays open for the others. */
export class WireTimeoutError extends Error {
  override name = 'WireTimeoutError';
}

export interface WireConnectOptions {
  /** Give up connecting after this long (default 5 000 ms). */
  connectTimeoutMs?: number;
}

interface Pending {
  resolve(response: WireResponse): void;
  reject(error: Error): void;
  /** performance.now() when sent. */
  sentAtMs: number;
  /** performance.now() past which it times out; Infinity without a timeout. */
  deadlineMs: number;
}

/** How often pending requests are checked against their deadlines (one timer per connection, not one per request). */
const deadlineCheckMs = 20;

export class WireConnection {
  private readonly pending = new Map<number, Pending>();
  private nextTag = 1;
  private out: Uint8Array[] = [];
  private flushScheduled = false;
  private failure: Error | null = null;
  private readonly decoder = new FrameDecoder();
  /** When something last arrived (performance.now()): a connection silent through a timeout is presumed dead. */
  private lastReceivedMs = performance.now();
  /** Checks deadlines while some pending request has one. */
  private deadlineTimer: ReturnType<typeof setInterval> | null = null;
  /** Pending requests with a deadline. */
  private withDeadline = 0;

  private constructor(private readonly socket: net.Socket) {}

  /** Connect to `http://host:port` (a server's client address) or host and port. */
  static async connect(address: string | { host: string; port: number }, options: WireConnectOptions = {}): Promise<WireConnection> {
    const { host, port } = typeof address === 'string' ? hostPort(address) : address;
    const socket = net.connect({ host, port, noDelay: true });
    const timeoutMs = options.connectTimeoutMs ?? 5_000;
    const greeting = await new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error(`No answer from ${host}:${port} within ${timeoutMs} ms`)), timeoutMs);
      let received = Buffer.alloc(0);
      const fail = (error: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(error);
      };
      const onData = (chunk: Buffer): void => {
        received = Buffer.concat([received, chunk]);
        if (received.length < wirePreamble.length) return;
        clearTimeout(timer);
        socket.off('data', onData);
        socket.off('error', fail);
        socket.off('close', onClose);
        socket.pause();
        resolve(received);
      };
      const onClose = (): void => fail(new Error(`${host}:${port} closed the connection before greeting`));
      socket.once('connect', () => socket.write(wirePreamble));
      socket.on('data', onData);
      socket.once('error', fail);
      socket.once('close', onClose);
    });
    if (!greeting.subarray(0, wirePreamble.length).equals(wirePreamble)) {
      socket.destroy();
      throw new WireProtocolMismatchError(`${host}:${port} does not speak the Mainstay wire protocol version 1`);
    }
    const connection = new WireConnection(socket);
    socket.on('data', (chunk: Buffer) => connection.onData(chunk));
    socket.on('error', (error) => connection.fail(error));
    socket.on('close', () => connection.fail(new Error('the connection closed')));
    const rest = greeting.subarray(wirePreamble.length);
    if (rest.length > 0) connection.onData(rest);
    // An idle connection does not keep the process alive (see request).
    socket.unref();
    socket.resume();
    return connection;
  }

  /** Requests sent and not yet answered. */
  get inflight(): number {
    return this.pending.size;
  }

  get closed(): boolean {
    return this.failure !== null;
  }

  /**
   * Send one request; resolves with the server's answer (an error answer is an answer, not a
   * rejection). Rejects with WireConnectionError when the connection fails first; `sent` says
   * whether the request may have reached the server.
   */
  request(request: ClientRequest, timeoutMs?: number): Promise<WireResponse> {
    if (this.failure !== null) return Promise.reject(new WireConnectionError(`Cannot send: ${this.failure.message}`, false));
    const tag = this.takeTag();
    const payload = encodeWireRequest(tag, request);
    // Refused here, alone: at the flush it would fail every request that shares the write.
    if (payload.length > frameBytesMax) {
      return Promise.reject(new WireConnectionError(`A request of ${payload.length} bytes is larger than a frame (${frameBytesMax} bytes)`, false));
    }
    this.out.push(payload);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(() => this.flush());
    }
    // Requests in flight keep the process alive; an idle connection does not.
    if (this.pending.size === 0) this.socket.ref();
    const sentAtMs = performance.now();
    const deadlineMs = timeoutMs === undefined ? Infinity : sentAtMs + timeoutMs;
    if (timeoutMs !== undefined) {
      this.withDeadline++;
      this.deadlineTimer ??= setInterval(() => this.expire(), Math.min(deadlineCheckMs, Math.max(1, timeoutMs)));
    }
    return new Promise((resolve, reject) => {
      this.pending.set(tag, { resolve, reject, sentAtMs, deadlineMs });
    });
  }

  /** Forget a settled request. */
  private settle(tag: number, pending: Pending): void {
    this.pending.delete(tag);
    if (pending.deadlineMs !== Infinity && --this.withDeadline === 0 && this.deadlineTimer !== null) {
      clearInterval(this.deadlineTimer);
      this.deadlineTimer = null;
    }
    if (this.pending.size === 0 && this.failure === null) this.socket.unref();
  }

  /** Time out the requests past their deadline; the connection stays open for the others. */
  private expire(): void {
    const now = performance.now();
    for (const [tag, pending] of this.pending) {
      if (pending.deadlineMs > now) continue;
      this.settle(tag, pending);
      const timeoutMs = Math.round(pending.deadlineMs - pending.sentAtMs);
      // Nothing at all arrived since this request left: the server or the path to it is gone.
      if (this.lastReceivedMs < pending.sentAtMs) this.fail(new Error(`nothing arrived for ${timeoutMs} ms`));
      pending.reject(new WireTimeoutError(`No answer within ${timeoutMs} ms`));
    }
  }

  close(): void {
    this.fail(new Error('the connection was closed by its owner'));
  }

  private takeTag(): number {
    for (;;) {
      const tag = this.nextTag;
      this.nextTag = tag === tagMax ? 1 : tag + 1;
      if (tag !== connectionTag && !this.pending.has(tag)) return tag;
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.failure !== null || this.out.length === 0) return;
    const frames = this.out;
    this.out = [];
    this.socket.write(encodeFrames(frames));
  }

  private onData(chunk: Buffer): void {
    this.lastReceivedMs = performance.now();
    const { payloads, error } = this.decoder.push(chunk);
    for (const payload of payloads) {
      let decoded;
      try {
        decoded = decodeWireResponse(payload);
      } catch (decodeError) {
        this.fail(new Error(`An answer did not decode: ${(decodeError as Error).message}`));
        return;
      }
      if (decoded.tag === connectionTag) {
        const message = decoded.response.type === 'error' ? `${decoded.response.error.code}: ${decoded.response.error.message}` : 'unexpected answer';
        this.fail(new Error(`The server closed the connection (${message})`));
        return;
      }
      // An answer to a request that timed out has no waiter any more.
      const pending = this.pending.get(decoded.tag);
      if (pending === undefined) continue;
      this.settle(decoded.tag, pending);
      pending.resolve(decoded.response);
    }
    if (error !== null) this.fail(error);
  }

  private fail(error: Error): void {
    if (this.failure !== null) return;
    this.failure = error;
    this.socket.destroy();
    if (this.deadlineTimer !== null) clearInterval(this.deadlineTimer);
    this.deadlineTimer = null;
    this.withDeadline = 0;
    const waiting = [...this.pending.values()];
    this.pending.clear();
    for (const waiter of waiting) waiter.reject(new WireConnectionError(error.message, true));
  }
}

function hostPort(address: string): { host: string; port: number } {
  const url = new URL(address.includes('://') ? address : `http://${address}`);
  if (url.protocol !== 'http:') throw new TypeError(`The wire protocol runs beside plain HTTP only, not ${url.protocol} (${address})`);
  const port = Number(url.port || 80);
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port };
}
