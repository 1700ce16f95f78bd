// The client library (`import { connect } from 'mainstay'`). It owns finding the main (asking the
// endpoints for the cluster map, following 421 NOT_MAIN answers, remembering the main), retrying
// exactly-once (every write carries a client session; a retry repeats the same request id, so the
// server applies it at most once), and turning HTTP answers into values and typed errors. It
// speaks the HTTP contract of SPEC.md section 9 as src/server/http-api.ts implements it.
//
// Sessions: the server remembers one request per client id ("one request at a time per client").
// So that an application may run writes concurrently, the client keeps a small pool of session
// ids — the client id itself, then `<clientId>.1`, `<clientId>.2` … — and never has two writes in
// flight under one of them. Request ids start at the clock reading in microseconds and grow by
// one per write, so they keep increasing when a process restarts with the same client id.
//
// The change stream (`watch`, `changes`): any server streams the changes it applied (GET
// /v1/watch), so the client reads from one — the main first — and, when the stream ends (the server
// died, stepped down, or cut a slow consumer), reconnects to another with the position of the last
// change it delivered. Event ids are positions, and every server numbers a seq's changes alike, so
// nothing is skipped or repeated across servers; the client also drops any change at or before the
// last one it delivered.

import { setMaxListeners } from 'node:events';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClientRequest, Consistency, ErrorCode, Write } from '../protocol/types.ts';
import type { WireResponse } from '../protocol/wire.ts';
import { renderClientResponse, type RenderContext } from '../server/http-api.ts';
import { WireConnection, WireConnectionError, WireProtocolMismatchError, WireTimeoutError } from './wire.ts';

// ---------------------------------------------------------------- public types

export interface ConnectOptions {
  /** Manager or server base URLs, such as "http://127.0.0.1:7000". Any of them can name the main. */
  endpoints: string[];
  /** Names this client's sessions; random unless given. 1–120 visible ASCII characters. */
  clientId?: string;
  /** Deadline of one operation, retries included (default 15 000). */
  timeoutMs?: number;
  /** Deadline of one HTTP attempt (default 6 000, and never beyond the operation's deadline). */
  attemptTimeoutMs?: number;
  /** Most retries of one operation after its first attempt (default 10). */
  retries?: number;
  /** First pause between attempts; it doubles up to backoffMsMax, with jitter (default 25). */
  backoffMsMin?: number;
  /** Longest pause between attempts (default 1 000). */
  backoffMsMax?: number;
  /** Most writes in flight at once; more wait for a free session (default 64). */
  concurrentWritesMax?: number;
  /** The fetch to use (default: the global fetch). */
  fetch?: typeof fetch;
  /**
   * How get, put and delete reach the main: `wire`, the binary protocol on the servers' HTTP port,
   * many requests at once on one connection per server (the default, unless `fetch` is given); or
   * `http`. Finding the main, list, txn, status and the change stream always use HTTP, and so do
   * https endpoints and servers that turn out not to speak the wire protocol (an HTTP-only proxy).
   * Both give the same answers and errors.
   */
  protocol?: 'wire' | 'http';
}

export interface PutOptions {
  /** Only if the key's version is this (0 = only if absent). */
  ifVersion?: number;
  /** Only if the key is absent. */
  ifAbsent?: boolean;
}

export interface DeleteOptions {
  ifVersion?: number;
}

export interface ReadOptions {
  /** `linearizable` (default) reads on the main; `local` reads the applied state of the server asked. */
  consistency?: Consistency;
  /** With `local`: wait until the server applied this seq (read-your-writes; use a write's seq). */
  minSeq?: number;
}

export interface ListOptions extends ReadOptions {
  /** Most keys to return (default and maximum: the server's listLimitMax, 1000). */
  limit?: number;
}

export interface PutResult {
  seq: number;
  epoch: number;
  /** The key's new version (the seq of this write). */
  version: number;
}

export interface DeleteResult {
  seq: number;
  epoch: number;
}

export interface TxnResult {
  seq: number;
  epoch: number;
  /** true if every compare held and `success` ran; false if `failure` ran. */
  succeeded: boolean;
}

export interface Item {
  key: string;
  value: Uint8Array;
  version: number;
  /** The value decoded as UTF-8 (invalid bytes become U+FFFD). */
  text(): string;
  /** The wire form: the value as a string when it is valid UTF-8, as base64 otherwise. */
  toJSON(): { key: string; value?: string; valueBase64?: string; version: number };
}

export interface GetResult extends Item {
  /** The server's applied seq when it read. */
  appliedSeq: number;
}

export type TxnOperation =
  | { put: { key: string; value: string | Uint8Array } | { key: string; valueBase64: string } }
  | { delete: { key: string } };

export interface TxnInput {
  /** Every compare must hold for `success` to run; version 0 means "the key is absent". */
  compare?: { key: string; version: number }[];
  success?: TxnOperation[];
  failure?: TxnOperation[];
}

/** A server's GET /v1/status; the fields beyond these depend on the server's version. */
export interface ServerStatus {
  id: string;
  role: string;
  map: ClusterMapView | null;
  [field: string]: unknown;
}

export interface ClusterMapView {
  epoch: number;
  main: string | null;
  mainAddress?: string | null;
  members: { id: string; address: string; role: string }[];
  [field: string]: unknown;
}

export interface ChangesOptions {
  /** Only keys starting with this (default: every key). */
  prefix?: string;
  /**
   * Deliver the changes of seqs above this: a seq a write returned, or the appliedSeq of a read or
   * list, so that nothing after what it saw is missed. Default: the changes committed after the
   * stream opens. A seq a server no longer holds (compacted) rejects with CompactedError.
   */
  fromSeq?: number;
  /** Stops the stream: `watch` then resolves, `changes` ends. */
  signal?: AbortSignal;
  /** Told when a stream ended or could not be opened, before the client tries again (for logs). */
  onReconnect?: (info: ReconnectInfo) => void;
  /** A stream silent for this long (servers send a heartbeat every 5 s) is taken for dead (default 15 000). */
  idleTimeoutMs?: number;
}

export interface WatchOptions extends ChangesOptions {
  /** Called once per change, in seq order; the next waits until the promise it returns settles. */
  onChange(change: Change): void | Promise<void>;
}

export interface ReconnectInfo {
  /** The server whose stream ended, if one was open. */
  endpoint?: string;
  reason: string;
  /** The stream resumes after this event id (undefined before the first stream opened). */
  after: string | undefined;
}

/** One committed change of one key. A transaction's changes share its seq. */
export interface Change {
  seq: number;
  epoch: number;
  type: 'put' | 'delete';
  key: string;
  /** The new value; undefined for a delete. */
  value: Uint8Array | undefined;
  /** The key's version after the change (the seq). */
  version: number;
  /** The value decoded as UTF-8 (invalid bytes become U+FFFD); undefined for a delete. */
  text(): string | undefined;
  /** The wire form: the value as a string when it is valid UTF-8, as base64 otherwise. */
  toJSON(): { seq: number; epoch: number; type: 'put' | 'delete'; key: string; value?: string; valueBase64?: string; version: number };
}

export interface Client {
  put(key: string, value: string | Uint8Array, options?: PutOptions): Promise<PutResult>;
  /** The key's value and version, or undefined if it is absent. */
  get(key: string, options?: ReadOptions): Promise<GetResult | undefined>;
  delete(key: string, options?: DeleteOptions): Promise<DeleteResult>;
  /** Keys starting with prefix, in key order. */
  list(prefix?: string, options?: ListOptions): Promise<Item[]>;
  txn(input: TxnInput): Promise<TxnResult>;
  /** The main's GET /v1/status. */
  status(): Promise<ServerStatus>;
  /**
   * Follow the committed changes of keys with a prefix, exactly once and in seq order, across
   * server failures: resolves when `signal` aborts; rejects if `onChange` throws, if the position
   * is compacted on every server (CompactedError), or if the client is closed.
   */
  watch(options: WatchOptions): Promise<void>;
  /** The same stream as an async iterator; leaving the loop closes it. */
  changes(options?: ChangesOptions): AsyncGenerator<Change, void, undefined>;
  /** Stop: operations in flight fail, later ones are refused. */
  close(): void;
  /** The session name this client's writes carry (the first of its pool). */
  readonly clientId: string;
}

// ---------------------------------------------------------------- errors

/**
 * Every failure the client reports. `definite: false` means a write may still have been
 * applied (or may still be); `status` is the HTTP status, undefined when there was no answer.
 */
export class MainstayError extends Error {
  override name = 'MainstayError';
  constructor(
    readonly code: ClientErrorCode,
    message: string,
    readonly definite: boolean,
    readonly status: number | undefined,
  ) {
    super(message);
  }
}

/** 412: an If-Match, If-None-Match or ifVersion condition failed; nothing was written. */
export class PreconditionFailedError extends MainstayError {
  override name = 'PreconditionFailedError';
}

/** The request is wrong (400, 404 route, 405, 413, or refused before sending); retrying will not help. */
export class BadRequestError extends MainstayError {
  override name = 'BadRequestError';
}

/** No answer within the deadline, or 504. For writes usually `definite: false`. */
export class TimeoutError extends MainstayError {
  override name = 'TimeoutError';
}

/** No reachable main (network errors, 503, no main appointed, 429 until the deadline). */
export class UnavailableError extends MainstayError {
  override name = 'UnavailableError';
}

/** The error codes of the HTTP contract, and COMPACTED (a change stream's position is gone). */
export type ClientErrorCode = ErrorCode | 'COMPACTED';

/** 410: no server still holds the changes after the stream's position; `fromSeqMin` is the oldest one a server could serve. */
export class CompactedError extends MainstayError {
  override name = 'CompactedError';
  constructor(message: string, readonly fromSeqMin: number | undefined) {
    super('COMPACTED', message, true, 410);
  }
}

function makeError(code: ClientErrorCode, message: string, definite: boolean, status: number | undefined): MainstayError {
  switch (code) {
    case 'COMPACTED': return new CompactedError(message, undefined);
    case 'PRECONDITION_FAILED': return new PreconditionFailedError(code, message, definite, status);
    case 'BAD_REQUEST':
    case 'TOO_LARGE':
    case 'METHOD_NOT_ALLOWED':
    case 'NOT_FOUND': return new BadRequestError(code, message, definite, status);
    case 'TIMEOUT': return new TimeoutError(code, message, definite, status);
    case 'UNAVAILABLE':
    case 'NOT_MAIN':
    case 'OVERLOADED': return new UnavailableError(code, message, definite, status);
  }
}

const errorCodes: readonly ErrorCode[] = ['NOT_MAIN', 'TIMEOUT', 'PRECONDITION_FAILED', 'NOT_FOUND', 'UNAVAILABLE',
  'BAD_REQUEST', 'METHOD_NOT_ALLOWED', 'TOO_LARGE', 'OVERLOADED'];

const codeByStatus: Readonly<Record<number, ErrorCode>> = {
  400: 'BAD_REQUEST', 404: 'NOT_FOUND', 405: 'METHOD_NOT_ALLOWED', 412: 'PRECONDITION_FAILED', 413: 'TOO_LARGE',
  414: 'TOO_LARGE', 421: 'NOT_MAIN', 429: 'OVERLOADED', 503: 'UNAVAILABLE', 504: 'TIMEOUT',
};

// ---------------------------------------------------------------- connect

const defaults = {
  timeoutMs: 15_000,
  attemptTimeoutMs: 6_000,
  retries: 10,
  backoffMsMin: 25,
  backoffMsMax: 1_000,
  concurrentWritesMax: 64,
};
const clientIdCharactersMax = 120;
/** Network failures that prove the request never left: a write that met only these did not happen. */
const notSentCodes = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'UND_ERR_CONNECT_TIMEOUT']);

export function connect(options: ConnectOptions): Client {
  return new MainstayClient(options);
}

interface Call<T> {
  method: 'GET' | 'PUT' | 'DELETE' | 'POST';
  /** Path and query, already encoded. */
  target: string;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Writes carry a session and track whether an attempt may have been applied. */
  write: boolean;
  /** The same request for the wire protocol (run() adds the call's session), when it can travel there. */
  wire?: ClientRequest;
  /** Turn an answer that is not an error (2xx, or a 404 the call understands) into the result. */
  accept(answer: Answer): { value: T } | undefined;
}

interface Answer {
  status: number;
  headers: Headers;
  body: Uint8Array;
}

type AttemptOutcome =
  | { kind: 'answer'; answer: Answer }
  | { kind: 'network'; sent: boolean; message: string }
  | { kind: 'timeout' };

class MainstayClient implements Client {
  readonly clientId: string;
  private readonly endpoints: string[];
  private readonly settings: typeof defaults;
  private readonly fetch: typeof fetch;
  private readonly protocol: 'wire' | 'http';
  /** Wire connections by server base URL, opened on first use and dropped when they fail. */
  private readonly wireConnections = new Map<string, Promise<WireConnection>>();
  /** Servers found not to speak the wire protocol (behind an HTTP-only proxy, say): HTTP for them. */
  private readonly httpOnlyBases = new Set<string>();
  /** Aborted by close(): cuts attempts and pauses short. */
  /** Aborted by close(); every request in flight listens to it (so no listener limit applies). */
  private readonly closing = withoutListenerLimit(new AbortController());
  /** The main's base URL, once found; forgotten when it stops answering as the main. */
  private main: string | undefined;
  /** Where the next discovery starts, so a dead endpoint is not always asked first. */
  private nextEndpoint = 0;
  /** Next request id; only grows. */
  private nextRequestId: number;
  /** Session ids not in use by a write in flight. Invariant: at most concurrentWritesMax exist. */
  private readonly idleSessions: string[] = [];
  private sessionsCreated = 0;
  private readonly sessionWaiters: ((session: string) => void)[] = [];

  constructor(options: ConnectOptions) {
    if (options.endpoints.length === 0) throw new TypeError('connect needs at least one endpoint URL');
    this.endpoints = options.endpoints.map((endpoint) => {
      const url = new URL(endpoint);
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`Endpoint ${endpoint} must be an http or https URL`);
      return trimSlash(url.href);
    });
    this.clientId = options.clientId ?? randomUUID();
    if (!/^[\x21-\x7e]+$/.test(this.clientId) || this.clientId.length > clientIdCharactersMax) {
      throw new TypeError(`clientId must be 1 to ${clientIdCharactersMax} visible ASCII characters`);
    }
    this.settings = {
      timeoutMs: options.timeoutMs ?? defaults.timeoutMs,
      attemptTimeoutMs: options.attemptTimeoutMs ?? defaults.attemptTimeoutMs,
      retries: options.retries ?? defaults.retries,
      backoffMsMin: options.backoffMsMin ?? defaults.backoffMsMin,
      backoffMsMax: options.backoffMsMax ?? defaults.backoffMsMax,
      concurrentWritesMax: options.concurrentWritesMax ?? defaults.concurrentWritesMax,
    };
    const { timeoutMs, attemptTimeoutMs, retries, backoffMsMin, backoffMsMax, concurrentWritesMax } = this.settings;
    if (!(timeoutMs > 0 && attemptTimeoutMs > 0)) throw new TypeError('timeoutMs and attemptTimeoutMs must be positive');
    if (!(Number.isInteger(retries) && retries >= 0)) throw new TypeError('retries must be a whole number');
    if (!(backoffMsMin >= 0 && backoffMsMax >= backoffMsMin)) throw new TypeError('backoffMsMax must be at least backoffMsMin, which must not be negative');
    if (!(Number.isInteger(concurrentWritesMax) && concurrentWritesMax >= 1)) throw new TypeError('concurrentWritesMax must be at least 1');
    if (options.protocol !== undefined && options.protocol !== 'wire' && options.protocol !== 'http') throw new TypeError('protocol must be wire or http');
    this.protocol = options.protocol ?? (options.fetch === undefined ? 'wire' : 'http');
    const fetchFunction = options.fetch ?? globalThis.fetch;
    this.fetch = (input, init) => fetchFunction(input, init);
    this.nextRequestId = Date.now() * 1000;
  }

  // ---------------------------------------------------------------- operations

  async put(key: string, value: string | Uint8Array, options: PutOptions = {}): Promise<PutResult> {
    const headers: Record<string, string> = { 'content-type': 'application/octet-stream' };
    if (options.ifVersion !== undefined) headers['if-match'] = `"${checkWhole(options.ifVersion, 'ifVersion')}"`;
    if (options.ifAbsent === true) headers['if-none-match'] = '*';
    const bytes = toBytes(value);
    const write: Write = { type: 'put', key, value: bytes };
    if (options.ifVersion !== undefined) write.ifVersion = options.ifVersion;
    if (options.ifAbsent === true) write.ifAbsent = true;
    return await this.run<PutResult>({
      method: 'PUT', target: keyTarget(key), headers, body: bytes, write: true, wire: { type: 'write', write },
      accept: (answer) => answer.status === 200 ? { value: writeJson(answer, ['seq', 'epoch', 'version']) } : undefined,
    });
  }

  async get(key: string, options: ReadOptions = {}): Promise<GetResult | undefined> {
    const wire: ClientRequest = { type: 'read', key, consistency: options.consistency ?? 'linearizable' };
    if (options.minSeq !== undefined) wire.minSeq = options.minSeq;
    return await this.run<GetResult | undefined>({
      method: 'GET', target: keyTarget(key) + readQuery(options, {}), write: false, wire,
      accept: (answer) => {
        const appliedSeq = Number(answer.headers.get('mainstay-applied-seq'));
        // A 404 from the key route carries the applied seq; one without it is an unknown route.
        if (answer.status === 404 && answer.headers.has('mainstay-applied-seq')) return { value: undefined };
        if (answer.status !== 200) return undefined;
        const version = /^"(\d+)"$/.exec(answer.headers.get('etag') ?? '');
        if (version === null) throw unreadable('the read has no ETag version', false);
        return { value: { ...makeItem(key, answer.body, Number(version[1])), appliedSeq } };
      },
    });
  }

  async delete(key: string, options: DeleteOptions = {}): Promise<DeleteResult> {
    const headers: Record<string, string> = {};
    if (options.ifVersion !== undefined) headers['if-match'] = `"${checkWhole(options.ifVersion, 'ifVersion')}"`;
    const write: Write = { type: 'delete', key };
    if (options.ifVersion !== undefined) write.ifVersion = options.ifVersion;
    return await this.run<DeleteResult>({
      method: 'DELETE', target: keyTarget(key), headers, write: true, wire: { type: 'write', write },
      accept: (answer) => answer.status === 200 ? { value: writeJson(answer, ['seq', 'epoch']) } : undefined,
    });
  }

  async list(prefix = '', options: ListOptions = {}): Promise<Item[]> {
    const extra: Record<string, string> = {};
    if (prefix !== '') extra.prefix = prefix;
    if (options.limit !== undefined) extra.limit = String(checkWhole(options.limit, 'limit'));
    return await this.run<Item[]>({
      method: 'GET', target: `/v1/kv${readQuery(options, extra)}`, write: false,
      accept: (answer) => {
        if (answer.status !== 200) return undefined;
        const body = parseJson(answer.body) as { items?: unknown } | undefined;
        if (body === undefined || !Array.isArray(body.items)) throw unreadable('the list has no items', false);
        return { value: body.items.map(itemFromJson) };
      },
    });
  }

  async txn(input: TxnInput): Promise<TxnResult> {
    const body = JSON.stringify({
      compare: input.compare ?? [],
      success: (input.success ?? []).map(operationJson),
      failure: (input.failure ?? []).map(operationJson),
    });
    return await this.run<TxnResult>({
      method: 'POST', target: '/v1/txn', headers: { 'content-type': 'application/json' }, body, write: true,
      accept: (answer) => {
        if (answer.status !== 200) return undefined;
        const result = writeJson(answer, ['seq', 'epoch']);
        const succeeded = (parseJson(answer.body) as { succeeded?: unknown }).succeeded;
        if (typeof succeeded !== 'boolean') throw unreadable('the transaction result has no succeeded field', false);
        return { value: { ...result, succeeded } };
      },
    });
  }

  async status(): Promise<ServerStatus> {
    return await this.run<ServerStatus>({
      method: 'GET', target: '/v1/status', write: false,
      accept: (answer) => {
        if (answer.status !== 200) return undefined;
        const body = parseJson(answer.body);
        if (typeof body !== 'object' || body === null) throw unreadable('the status is not a JSON object', true);
        return { value: body as ServerStatus };
      },
    });
  }

  close(): void {
    this.closing.abort();
    for (const connecting of this.wireConnections.values()) connecting.then((connection) => connection.close(), () => {});
    this.wireConnections.clear();
  }

  // ---------------------------------------------------------------- the change stream

  async watch(options: WatchOptions): Promise<void> {
    if (typeof options.onChange !== 'function') throw new TypeError('watch needs an onChange function');
    for await (const change of this.changes(options)) await options.onChange(change);
  }

  async *changes(options: ChangesOptions = {}): AsyncGenerator<Change, void, undefined> {
    this.checkOpen(false);
    const prefix = options.prefix ?? '';
    if (typeof prefix !== 'string') throw new TypeError('prefix must be a string');
    checkWellFormed(prefix, 'prefix');
    const idleTimeoutMs = options.idleTimeoutMs ?? watchIdleTimeoutMsDefault;
    if (!(idleTimeoutMs > 0)) throw new TypeError('idleTimeoutMs must be positive');
    /** The last change delivered, or where the stream starts; undefined until a server says where "now" is. */
    let position: StreamPosition | undefined = options.fromSeq === undefined ? undefined : { seq: checkWhole(options.fromSeq, 'fromSeq') };
    const stop = withoutListenerLimit(new AbortController());
    const onAbort = (): void => stop.abort();
    options.signal?.addEventListener('abort', onAbort);
    this.closing.signal.addEventListener('abort', onAbort);
    if (options.signal?.aborted === true) stop.abort();
    const tell = (endpoint: string | undefined, reason: string): void => {
      const info: ReconnectInfo = { reason, after: position === undefined ? undefined : eventId(position) };
      if (endpoint !== undefined) info.endpoint = endpoint;
      options.onReconnect?.(info);
    };
    /** The server whose stream ended last: the others are tried first. */
    let avoid: string | undefined;
    let failedRounds = 0;
    try {
      while (!stop.signal.aborted) {
        const candidates = await this.watchEndpoints();
        if (avoid !== undefined && candidates.length > 1 && candidates.includes(avoid)) {
          candidates.splice(candidates.indexOf(avoid), 1);
          candidates.push(avoid);
        }
        let compacted: CompactedError | undefined;
        let unavailable = false;
        const problems: string[] = [];
        let streamed = false;
        for (const endpoint of candidates) {
          if (stop.signal.aborted) break;
          const opened = await this.openStream(endpoint, prefix, position, stop.signal);
          if (opened.kind === 'compacted') {
            compacted = opened.error;
            problems.push(`${endpoint}: ${opened.error.message}`);
            continue;
          }
          if (opened.kind === 'refused') throw opened.error;
          if (opened.kind === 'failed') {
            unavailable ||= !opened.notAServer;
            problems.push(`${endpoint}: ${opened.reason}`);
            continue;
          }
          streamed = true;
          failedRounds = 0;
          position ??= opened.after;
          let reason = 'the server ended the stream';
          try {
            for await (const event of readServerSentEvents(opened.body, idleTimeoutMs)) {
              if (event.type === 'error') {
                reason = watchEndReason(event.data);
                continue;
              }
              const at = parseEventId(event.id);
              if (at === undefined) throw new Error(`an event has no valid id (${JSON.stringify(event.id)})`);
              // Positions only grow: anything at or before the last one delivered is a duplicate.
              if (position !== undefined && comparePositions(at, position) <= 0) continue;
              if (event.type === 'progress') {
                position = at;
                continue;
              }
              if (event.type !== 'message') continue;
              const change = changeFromJson(parseJsonText(event.data), at);
              position = at;
              yield change;
            }
          } catch (error) {
            if (!stop.signal.aborted) reason = `the stream failed: ${(error as Error).message}`;
          } finally {
            opened.cancel();
          }
          if (stop.signal.aborted) break;
          avoid = endpoint;
          tell(endpoint, reason);
          break;
        }
        if (streamed || stop.signal.aborted) continue;
        // Every server that answered no longer holds the position: waiting will not bring it back.
        if (compacted !== undefined && !unavailable) throw compacted;
        failedRounds++;
        tell(undefined, problems.length === 0 ? 'no server to watch' : problems.join('; '));
        try {
          await sleep(this.watchBackoffMs(failedRounds), undefined, { signal: stop.signal });
        } catch {
          break;
        }
      }
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      this.closing.signal.removeEventListener('abort', onAbort);
      stop.abort();
    }
    if (options.signal?.aborted !== true) this.checkOpen(false);
  }

  /** The servers to watch: the members of the map an endpoint gives (the main first), then the endpoints. */
  private async watchEndpoints(): Promise<string[]> {
    const found: string[] = [];
    for (let asked = 0; asked < this.endpoints.length && found.length === 0; asked++) {
      const endpoint = this.endpoints[(this.nextEndpoint + asked) % this.endpoints.length] as string;
      for (const target of ['/v1/status', '/v1/cluster']) {
        if (this.closing.signal.aborted) break;
        const outcome = await this.send(endpoint, { method: 'GET', target, write: false, accept: () => undefined },
          Math.min(this.settings.attemptTimeoutMs, watchDiscoveryTimeoutMs));
        if (outcome.kind !== 'answer') break;
        if (outcome.answer.status !== 200) continue;
        found.push(...serverAddresses(parseJson(outcome.answer.body)));
        if (found.length > 0) break;
      }
    }
    return [...new Set([...found, ...this.endpoints])];
  }

  private async openStream(endpoint: string, prefix: string, position: StreamPosition | undefined, stop: AbortSignal): Promise<OpenedStream> {
    const parameters: string[] = [];
    if (prefix !== '') parameters.push(`prefix=${encodeURIComponent(prefix)}`);
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    // A whole seq travels as fromSeq; a place inside a transaction only as an event id.
    if (position !== undefined && position.index === undefined) parameters.push(`fromSeq=${position.seq}`);
    if (position?.index !== undefined) headers['last-event-id'] = eventId(position);
    const target = `/v1/watch${parameters.length === 0 ? '' : `?${parameters.join('&')}`}`;
    const controller = new AbortController();
    const onStop = (): void => controller.abort();
    stop.addEventListener('abort', onStop);
    const cancel = (): void => {
      stop.removeEventListener('abort', onStop);
      controller.abort();
    };
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.settings.attemptTimeoutMs);
    let response: Response;
    try {
      response = await this.fetch(endpoint + target, { method: 'GET', headers, signal: controller.signal, redirect: 'manual' });
    } catch (error) {
      cancel();
      return { kind: 'failed', notAServer: false, reason: timedOut ? 'no answer in time' : networkCode(error) ?? (error as Error).message };
    } finally {
      clearTimeout(timer);
    }
    if (response.status === 200 && response.body !== null) {
      const after = parseEventId(response.headers.get('mainstay-watch-after') ?? undefined);
      if (after !== undefined) return { kind: 'stream', body: response.body, after, cancel };
      cancel();
      return { kind: 'failed', notAServer: true, reason: 'the answer is not a Mainstay change stream' };
    }
    let body: Uint8Array;
    try {
      body = new Uint8Array(await response.arrayBuffer());
    } catch (error) {
      cancel();
      return { kind: 'failed', notAServer: false, reason: (error as Error).message };
    }
    cancel();
    const error = (parseJson(body) as { error?: { code?: unknown; message?: unknown; fromSeqMin?: unknown } } | undefined)?.error;
    const message = typeof error?.message === 'string' ? error.message : `HTTP ${response.status}`;
    if (response.status === 410) {
      return { kind: 'compacted', error: new CompactedError(message, typeof error?.fromSeqMin === 'number' ? error.fromSeqMin : undefined) };
    }
    // The manager, or something else that has no change stream.
    if (response.status === 404 || response.status === 405) return { kind: 'failed', notAServer: true, reason: `it has no change stream (HTTP ${response.status})` };
    if (response.status === 400 || response.status === 414) return { kind: 'refused', error: errorFromAnswer({ status: response.status, headers: response.headers, body }) };
    return { kind: 'failed', notAServer: false, reason: message };
  }

  private watchBackoffMs(round: number): number {
    const { backoffMsMin, backoffMsMax } = this.settings;
    const ceiling = Math.min(backoffMsMax, Math.max(1, backoffMsMin) * 2 ** Math.min(round, 20));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  // ---------------------------------------------------------------- the retry loop

  private async run<T>(call: Call<T>): Promise<T> {
    this.checkOpen(false);
    if (!call.write) return await this.attempts(call);
    const session = await this.takeSession();
    try {
      const requestId = this.nextRequestId++;
      call.headers = { ...call.headers, 'mainstay-client-id': session, 'mainstay-request-id': String(requestId) };
      if (call.wire?.type === 'write') call.wire = { ...call.wire, session: { clientId: session, requestId } };
      return await this.attempts(call);
    } finally {
      this.releaseSession(session);
    }
  }

  /**
   * Send the call until an answer settles it, repeating the same request (and so the same request
   * id) after network errors, timeouts, 421, 429, 502, 503 and 504, within the retries and deadline.
   */
  private async attempts<T>(call: Call<T>): Promise<T> {
    const deadline = Date.now() + this.settings.timeoutMs;
    /** Whether some attempt of this write may have been applied. */
    let maybeApplied = false;
    let failure: MainstayError = new UnavailableError('UNAVAILABLE', 'No attempt was made', true, undefined);
    /** The last answer named another main: go there at once (but pause if redirects repeat). */
    let redirected = false;
    let redirectsInARow = 0;
    for (let attempt = 0; attempt <= this.settings.retries; attempt++) {
      if (attempt > 0) {
        redirectsInARow = redirected ? redirectsInARow + 1 : 0;
        const pause = redirected && redirectsInARow === 1 ? 0 : this.backoffMs(attempt, failure);
        redirected = false;
        if (Date.now() + pause >= deadline) break;
        await this.pause(pause, call.write && maybeApplied);
      }
      this.checkOpen(call.write && maybeApplied);
      const main = this.main ?? await this.discover(deadline);
      if (main === undefined) {
        failure = new UnavailableError('UNAVAILABLE', `Cannot find the main: no endpoint (${this.endpoints.join(', ')}) names a reachable main`, true, undefined);
        continue;
      }
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) break;
      const outcome = await this.send(main, call, Math.min(this.settings.attemptTimeoutMs, remainingMs));
      this.checkOpen(call.write && (maybeApplied || outcome.kind !== 'answer'));
      if (outcome.kind === 'timeout') {
        maybeApplied = true;
        this.forgetMain(main);
        failure = new TimeoutError('TIMEOUT', `${main} did not answer within the attempt's deadline`, !call.write, undefined);
        continue;
      }
      if (outcome.kind === 'network') {
        maybeApplied ||= outcome.sent;
        this.forgetMain(main);
        failure = new UnavailableError('UNAVAILABLE', `Cannot reach ${main}: ${outcome.message}`, !(call.write && outcome.sent), undefined);
        continue;
      }
      const answer = outcome.answer;
      const accepted = call.accept(answer);
      if (accepted !== undefined) return accepted.value;
      const error = errorFromAnswer(answer);
      switch (answer.status) {
        case 421: {
          const redirect = errorMain(answer);
          // A main that names itself is still taking office: ask again after a pause.
          redirected = redirect !== undefined && redirect !== main;
          this.main = redirected ? redirect : undefined;
          failure = error;
          continue;
        }
        case 429:
          failure = error;
          continue;
        case 502:
        case 503:
        case 504:
          maybeApplied ||= !error.definite;
          this.forgetMain(main);
          failure = error;
          continue;
        default:
          // Any other answer settles the request: the server decided it (retries of a write that
          // was applied earlier return the recorded result, so this is the write's outcome).
          throw error;
      }
    }
    const definite = !(call.write && maybeApplied);
    const suffix = definite ? '' : '; the write may have been applied';
    throw makeError(failure.code, `${failure.message} (gave up after the retries and ${this.settings.timeoutMs} ms${suffix})`, definite, failure.status);
  }

  private async send<T>(base: string, call: Call<T>, timeoutMs: number): Promise<AttemptOutcome> {
    if (this.protocol === 'wire' && call.wire !== undefined && base.startsWith('http:') && !this.httpOnlyBases.has(base)) {
      const outcome = await this.sendWire(base, call, call.wire, timeoutMs);
      if (outcome !== undefined) return outcome;
    }
    const controller = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const onClose = (): void => controller.abort();
    this.closing.signal.addEventListener('abort', onClose);
    try {
      const init: RequestInit = { method: call.method, headers: call.headers ?? {}, signal: controller.signal, redirect: 'manual' };
      if (call.body !== undefined) init.body = call.body;
      const response = await this.fetch(base + call.target, init);
      const body = new Uint8Array(await response.arrayBuffer());
      return { kind: 'answer', answer: { status: response.status, headers: response.headers, body } };
    } catch (error) {
      if (timedOut) return { kind: 'timeout' };
      if (this.closing.signal.aborted) return { kind: 'network', sent: true, message: 'the client was closed' };
      const code = networkCode(error);
      return { kind: 'network', sent: code === undefined || !notSentCodes.has(code), message: code ?? (error as Error).message };
    } finally {
      clearTimeout(timer);
      this.closing.signal.removeEventListener('abort', onClose);
    }
  }

  /**
   * One attempt over the wire protocol. The answer is rendered as the HTTP API would have given it
   * (renderClientResponse), so both protocols go through the same acceptance and retry rules.
   * Returns undefined when `base` turns out not to speak it (the caller then uses HTTP).
   */
  private async sendWire<T>(base: string, call: Call<T>, request: ClientRequest, timeoutMs: number): Promise<AttemptOutcome | undefined> {
    if (this.closing.signal.aborted) return { kind: 'network', sent: false, message: 'the client was closed' };
    const deadline = performance.now() + timeoutMs;
    let onClose = (): void => {};
    const closed = new Promise<'closed'>((resolve) => {
      onClose = () => resolve('closed');
    });
    this.closing.signal.addEventListener('abort', onClose);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const expired = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), timeoutMs);
      });
      // The cached connection, or a new one; one the server has closed since (a restart, say) is
      // replaced at once rather than costing the attempt.
      let connecting = this.wireConnections.get(base) ?? this.openWire(base, timeoutMs);
      let connection: WireConnection | 'timeout' | 'closed';
      try {
        connection = await Promise.race([connecting, expired, closed]);
        if (typeof connection === 'object' && connection.closed) {
          connecting = this.openWire(base, timeoutMs);
          connection = await Promise.race([connecting, expired, closed]);
        }
      } catch (error) {
        if (error instanceof WireProtocolMismatchError) {
          // An HTTP-only server or proxy: this base gets HTTP from now on.
          this.httpOnlyBases.add(base);
          return undefined;
        }
        return { kind: 'network', sent: false, message: networkCode(error) ?? (error as Error).message };
      }
      if (connection === 'timeout') return { kind: 'network', sent: false, message: `no connection within ${timeoutMs} ms` };
      if (connection === 'closed') {
        connecting.then((late) => late.close(), () => {});
        return { kind: 'network', sent: true, message: 'the client was closed' };
      }
      if (connection.closed) return { kind: 'network', sent: false, message: 'the connection closed at once' };
      let response: WireResponse | 'closed';
      try {
        response = await Promise.race([connection.request(request, Math.max(1, deadline - performance.now())), closed]);
      } catch (error) {
        // A timeout abandons this request only; the connection goes on serving the others (the
        // WireConnection drops it itself if nothing at all came back meanwhile).
        if (error instanceof WireTimeoutError) return { kind: 'timeout' };
        if (this.wireConnections.get(base) === connecting) this.wireConnections.delete(base);
        return { kind: 'network', sent: error instanceof WireConnectionError ? error.sent : true, message: (error as Error).message };
      }
      if (response === 'closed') return { kind: 'network', sent: true, message: 'the client was closed' };
      const context: RenderContext = { target: call.target };
      if (response.type === 'error' && response.error.mainAddress !== undefined) context.mainAddress = response.error.mainAddress;
      const rendered = renderClientResponse(response, request, context);
      const body = typeof rendered.body === 'string' ? utf8.encode(rendered.body) : rendered.body;
      return { kind: 'answer', answer: { status: rendered.status, headers: new Headers(rendered.headers), body } };
    } finally {
      clearTimeout(timer);
      this.closing.signal.removeEventListener('abort', onClose);
    }
  }

  /** A new wire connection to `base`, cached until it fails. */
  private openWire(base: string, timeoutMs: number): Promise<WireConnection> {
    const connecting = WireConnection.connect(base, { connectTimeoutMs: timeoutMs });
    this.wireConnections.set(base, connecting);
    connecting.catch(() => {
      if (this.wireConnections.get(base) === connecting) this.wireConnections.delete(base);
    });
    return connecting;
  }

  /** Ask the endpoints, in turn, for the cluster map; remember and return the main's URL. */
  private async discover(deadline: number): Promise<string | undefined> {
    for (let asked = 0; asked < this.endpoints.length; asked++) {
      const endpoint = this.endpoints[(this.nextEndpoint + asked) % this.endpoints.length] as string;
      // Servers and the manager serve GET /v1/status with the map; the manager also GET /v1/cluster.
      for (const target of ['/v1/status', '/v1/cluster']) {
        const remainingMs = deadline - Date.now();
        if (remainingMs <= 0 || this.closing.signal.aborted) return undefined;
        const outcome = await this.send(endpoint, { method: 'GET', target, write: false, accept: () => undefined },
          Math.min(this.settings.attemptTimeoutMs, remainingMs));
        if (outcome.kind !== 'answer') break;
        const main = outcome.answer.status === 200 ? mainFromMap(parseJson(outcome.answer.body)) : undefined;
        if (main !== undefined) {
          this.nextEndpoint = (this.nextEndpoint + asked) % this.endpoints.length;
          this.main = main;
          return main;
        }
      }
    }
    this.nextEndpoint = (this.nextEndpoint + 1) % this.endpoints.length;
    return undefined;
  }

  private forgetMain(main: string): void {
    if (this.main === main) this.main = undefined;
  }

  private backoffMs(attempt: number, failure: MainstayError): number {
    const { backoffMsMin, backoffMsMax } = this.settings;
    const ceiling = Math.min(backoffMsMax, backoffMsMin * 2 ** (attempt - 1));
    // Jitter spreads the retries of many clients after a failover.
    const pause = ceiling / 2 + Math.random() * (ceiling / 2);
    return failure.code === 'OVERLOADED' ? Math.max(pause, Math.min(backoffMsMax, 1000)) : pause;
  }

  private async pause(ms: number, maybeApplied: boolean): Promise<void> {
    if (ms <= 0) return;
    try {
      await sleep(ms, undefined, { signal: this.closing.signal });
    } catch {
      this.checkOpen(maybeApplied);
    }
  }

  private checkOpen(maybeApplied: boolean): void {
    if (!this.closing.signal.aborted) return;
    const suffix = maybeApplied ? '; the write may have been applied' : '';
    throw new UnavailableError('UNAVAILABLE', `The client is closed${suffix}`, !maybeApplied, undefined);
  }

  // ---------------------------------------------------------------- sessions

  private async takeSession(): Promise<string> {
    const idle = this.idleSessions.pop();
    if (idle !== undefined) return idle;
    if (this.sessionsCreated < this.settings.concurrentWritesMax) {
      const index = this.sessionsCreated++;
      return index === 0 ? this.clientId : `${this.clientId}.${index}`;
    }
    return await new Promise<string>((resolve) => this.sessionWaiters.push(resolve));
  }

  private releaseSession(session: string): void {
    const waiter = this.sessionWaiters.shift();
    if (waiter !== undefined) waiter(session);
    else this.idleSessions.push(session);
  }
}

// ---------------------------------------------------------------- encoding

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder('utf-8', { ignoreBOM: true });

function toBytes(value: string | Uint8Array): Uint8Array {
  if (typeof value === 'string') {
    checkWellFormed(value, 'value');
    return utf8.encode(value);
  }
  if (value instanceof Uint8Array) return value;
  throw new TypeError('A value must be a string or a Uint8Array');
}

function checkWellFormed(text: string, what: string): void {
  if (/[\uD800-\uDFFF]/u.test(text)) throw new BadRequestError('BAD_REQUEST', `Cannot send ${what}: it has a lone surrogate, which UTF-8 cannot carry`, true, undefined);
}

/** The path of a key: one percent-encoded segment (so "/" in a key stays part of it). */
function keyTarget(key: string): string {
  if (typeof key !== 'string' || key === '') throw new BadRequestError('BAD_REQUEST', 'Cannot send key: it is empty', true, undefined);
  checkWellFormed(key, 'key');
  // URL parsing collapses "." and ".." segments (even as %2E), so these keys cannot travel in a path.
  if (key === '.' || key === '..') throw new BadRequestError('BAD_REQUEST', `Cannot send key "${key}": URLs cannot carry it as a path segment`, true, undefined);
  return `/v1/kv/${encodeURIComponent(key)}`;
}

function readQuery(options: ReadOptions, extra: Record<string, string>): string {
  const parameters: string[] = Object.entries(extra).map(([name, value]) => `${name}=${encodeURIComponent(value)}`);
  if (options.consistency !== undefined) parameters.push(`consistency=${encodeURIComponent(options.consistency)}`);
  if (options.minSeq !== undefined) parameters.push(`minSeq=${checkWhole(options.minSeq, 'minSeq')}`);
  return parameters.length === 0 ? '' : `?${parameters.join('&')}`;
}

function checkWhole(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new BadRequestError('BAD_REQUEST', `Cannot send ${name}: it must be a whole number, not ${value}`, true, undefined);
  return value;
}

function operationJson(operation: TxnOperation): unknown {
  if ('delete' in operation) return { delete: { key: operation.delete.key } };
  const put = operation.put;
  if ('valueBase64' in put) return { put: { key: put.key, valueBase64: put.valueBase64 } };
  if (typeof put.value === 'string') {
    checkWellFormed(put.value, 'value');
    return { put: { key: put.key, value: put.value } };
  }
  // Bytes travel as base64 so they arrive exactly, whatever they are.
  return { put: { key: put.key, valueBase64: Buffer.from(put.value.buffer, put.value.byteOffset, put.value.byteLength).toString('base64') } };
}

function makeItem(key: string, value: Uint8Array, version: number): Item {
  return {
    key,
    value,
    version,
    text: () => lenientUtf8.decode(value),
    toJSON: () => {
      try {
        return { key, value: strictUtf8.decode(value), version };
      } catch {
        return { key, valueBase64: Buffer.from(value).toString('base64'), version };
      }
    },
  };
}

function itemFromJson(json: unknown): Item {
  const item = json as { key?: unknown; value?: unknown; valueBase64?: unknown; version?: unknown };
  if (typeof item.key !== 'string' || typeof item.version !== 'number') throw unreadable('a list item has no key or version', false);
  if (typeof item.value === 'string') return makeItem(item.key, utf8.encode(item.value), item.version);
  if (typeof item.valueBase64 === 'string') return makeItem(item.key, new Uint8Array(Buffer.from(item.valueBase64, 'base64')), item.version);
  throw unreadable('a list item has neither value nor valueBase64', false);
}

// ---------------------------------------------------------------- the change stream's wire

const watchIdleTimeoutMsDefault = 15_000;
const watchDiscoveryTimeoutMs = 2_000;

/** After every change of the seqs up to `seq`, or, with `index`, of seq `seq` up to that change. */
interface StreamPosition {
  seq: number;
  index?: number;
}

type OpenedStream =
  | { kind: 'stream'; body: ReadableStream<Uint8Array>; after: StreamPosition; cancel(): void }
  | { kind: 'compacted'; error: CompactedError }
  | { kind: 'refused'; error: MainstayError }
  | { kind: 'failed'; notAServer: boolean; reason: string };

/** "42" (seq 42 complete) or "42.1" (seq 42 up to its change 1), as the server names events. */
function eventId(position: StreamPosition): string {
  return position.index === undefined ? String(position.seq) : `${position.seq}.${position.index}`;
}

function parseEventId(text: string | undefined): StreamPosition | undefined {
  const match = /^([0-9]{1,16})(?:\.([0-9]{1,6}))?$/.exec(text ?? '');
  if (match === null) return undefined;
  return match[2] === undefined ? { seq: Number(match[1]) } : { seq: Number(match[1]), index: Number(match[2]) };
}

/** Orders positions; a complete seq comes after each of its changes. */
function comparePositions(a: StreamPosition, b: StreamPosition): number {
  if (a.seq !== b.seq) return a.seq - b.seq;
  const aIndex = a.index ?? Number.POSITIVE_INFINITY;
  const bIndex = b.index ?? Number.POSITIVE_INFINITY;
  return aIndex === bIndex ? 0 : aIndex < bIndex ? -1 : 1;
}

interface ServerSentEvent {
  /** The event field, or "message". */
  type: string;
  data: string;
  id: string | undefined;
}

/**
 * The events of a text/event-stream body (the WHATWG format: lines split at CR, LF or CRLF;
 * comments ignored; an event dispatched at a blank line). Rejects if nothing, not even a
 * heartbeat, arrives for idleTimeoutMs while it waits; the time the caller spends on an event
 * does not count.
 */
async function* readServerSentEvents(body: ReadableStream<Uint8Array>, idleTimeoutMs: number): AsyncGenerator<ServerSentEvent, void, undefined> {
  const reader = body.getReader();
  const decoder = new TextDecoder('utf-8');
  let buffer = '';
  let type = '';
  let data: string[] = [];
  let id: string | undefined;
  try {
    while (true) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const idle = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`nothing arrived for ${idleTimeoutMs} ms`)), idleTimeoutMs);
      });
      let chunk: Awaited<ReturnType<ReadableStreamDefaultReader<Uint8Array>['read']>>;
      try {
        chunk = await Promise.race([reader.read(), idle]);
      } finally {
        clearTimeout(timer);
      }
      if (chunk.done) return;
      buffer += decoder.decode(chunk.value, { stream: true });
      while (true) {
        const match = /\r\n|\r|\n/.exec(buffer);
        // A CR at the very end may be the first half of a CRLF: wait for the next chunk.
        if (match === null || (match[0] === '\r' && match.index === buffer.length - 1)) break;
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === '') {
          if (data.length > 0) yield { type: type === '' ? 'message' : type, data: data.join('\n'), id };
          type = '';
          data = [];
          id = undefined;
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'data') data.push(value);
        else if (field === 'event') type = value;
        else if (field === 'id' && !value.includes('\0')) id = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseJsonText(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new Error('an event\'s data is not JSON');
  }
}

function changeFromJson(json: unknown, at: StreamPosition): Change {
  const body = json as { seq?: unknown; epoch?: unknown; type?: unknown; key?: unknown; value?: unknown; valueBase64?: unknown; version?: unknown } | null;
  if (body === null || typeof body !== 'object') throw new Error('an event\'s data is not a change');
  const { seq, epoch, type, key, version } = body;
  if (typeof seq !== 'number' || seq !== at.seq) throw new Error(`a change's seq does not match its id ${eventId(at)}`);
  if (typeof epoch !== 'number' || typeof key !== 'string' || typeof version !== 'number' || (type !== 'put' && type !== 'delete')) {
    throw new Error('a change lacks its epoch, key, version or type');
  }
  let value: Uint8Array | undefined;
  if (type === 'put') {
    if (typeof body.value === 'string') value = utf8.encode(body.value);
    else if (typeof body.valueBase64 === 'string') value = new Uint8Array(Buffer.from(body.valueBase64, 'base64'));
    else throw new Error('a put has neither value nor valueBase64');
  }
  return {
    seq, epoch, type, key, value, version,
    text: () => value === undefined ? undefined : lenientUtf8.decode(value),
    toJSON: () => {
      if (value === undefined) return { seq, epoch, type, key, version };
      try {
        return { seq, epoch, type, key, value: strictUtf8.decode(value), version };
      } catch {
        return { seq, epoch, type, key, valueBase64: Buffer.from(value).toString('base64'), version };
      }
    },
  };
}

function watchEndReason(data: string): string {
  const body = (() => {
    try {
      return JSON.parse(data) as { error?: { code?: unknown; message?: unknown } };
    } catch {
      return undefined;
    }
  })();
  const code = typeof body?.error?.code === 'string' ? body.error.code : 'ERROR';
  const message = typeof body?.error?.message === 'string' ? body.error.message : 'the server ended the stream';
  return `${code}: ${message}`;
}

/** Every server's URL in a status or cluster answer, the main's first. */
function serverAddresses(json: unknown): string[] {
  if (typeof json !== 'object' || json === null) return [];
  const body = json as { map?: { members?: unknown } | null; servers?: unknown };
  const addresses: string[] = [];
  const main = mainFromMap(json);
  if (main !== undefined) addresses.push(main);
  for (const list of [body.map?.members, body.servers]) {
    if (!Array.isArray(list)) continue;
    for (const member of list) {
      const address = (member as { address?: unknown } | null)?.address;
      if (typeof address === 'string' && /^https?:\/\//.test(address)) addresses.push(trimSlash(address));
    }
  }
  return [...new Set(addresses)];
}

// ---------------------------------------------------------------- decoding answers

function parseJson(body: Uint8Array): unknown {
  try {
    return JSON.parse(lenientUtf8.decode(body)) as unknown;
  } catch {
    return undefined;
  }
}

function writeJson<const F extends string>(answer: Answer, fields: readonly F[]): Record<F, number> {
  const body = parseJson(answer.body) as Record<string, unknown> | undefined;
  const result = {} as Record<F, number>;
  for (const field of fields) {
    const value = body?.[field];
    // The write was applied (200), but its result cannot be read: report it as possibly applied.
    if (typeof value !== 'number') throw unreadable(`the write result has no ${field}`, false);
    result[field] = value;
  }
  return result;
}

function unreadable(what: string, definite: boolean): MainstayError {
  return new MainstayError('UNAVAILABLE', `Cannot read the server's answer: ${what}`, definite, undefined);
}

function errorFromAnswer(answer: Answer): MainstayError {
  const body = parseJson(answer.body) as { error?: { code?: unknown; message?: unknown; definite?: unknown } } | undefined;
  const error = body?.error;
  const known = typeof error?.code === 'string' && (errorCodes as readonly string[]).includes(error.code);
  const code: ErrorCode = known ? error?.code as ErrorCode : codeByStatus[answer.status] ?? (answer.status >= 500 ? 'UNAVAILABLE' : 'BAD_REQUEST');
  const message = typeof error?.message === 'string' ? error.message : `The server answered HTTP ${answer.status}`;
  // Without the server's word (a proxy's 5xx, say), a 5xx may have come after the write was applied.
  const definite = typeof error?.definite === 'boolean' ? error.definite : answer.status < 500;
  return makeError(code, message, definite, answer.status);
}

function errorMain(answer: Answer): string | undefined {
  const main = (parseJson(answer.body) as { error?: { main?: unknown } } | undefined)?.error?.main;
  return typeof main === 'string' && /^https?:\/\//.test(main) ? trimSlash(main) : undefined;
}

/**
 * The main's URL in a status or cluster answer: `map.mainAddress`, or `map.main` looked up in
 * `map.members`, or the manager view's `main` looked up in `servers`.
 */
function mainFromMap(json: unknown): string | undefined {
  if (typeof json !== 'object' || json === null) return undefined;
  const body = json as { map?: unknown; main?: unknown; servers?: unknown };
  const candidates: unknown[] = [];
  if (typeof body.map === 'object' && body.map !== null) {
    const map = body.map as { main?: unknown; mainAddress?: unknown; members?: unknown };
    candidates.push(map.mainAddress, addressOf(map.members, map.main));
  }
  candidates.push(addressOf(body.servers, body.main));
  for (const candidate of candidates) {
    if (typeof candidate === 'string' && /^https?:\/\//.test(candidate)) return trimSlash(candidate);
  }
  return undefined;
}

function addressOf(members: unknown, id: unknown): unknown {
  if (!Array.isArray(members) || typeof id !== 'string') return undefined;
  const member = members.find((candidate: unknown) => (candidate as { id?: unknown } | null)?.id === id) as { address?: unknown } | undefined;
  return member?.address;
}

function networkCode(error: unknown): string | undefined {
  for (let cause: unknown = error, depth = 0; cause !== undefined && cause !== null && depth < 5; depth++) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    cause = (cause as { cause?: unknown }).cause;
  }
  return undefined;
}

function trimSlash(url: string): string {
  return url.endsWith('/') ? url.slice(0, -1) : url;
}

function withoutListenerLimit(controller: AbortController): AbortController {
  setMaxListeners(0, controller.signal);
  return controller;
}
