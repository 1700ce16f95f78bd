// The HTTP API of a server (SPEC.md section 9) as pure translation: an HTTP request in plain data
// becomes a ClientRequest for the core (or a status, health or metrics request, or a specific 4xx
// error), and the core's ClientResponse becomes an HTTP response in plain data. It owns the routes,
// the wire formats (headers, query parameters, the transaction and list JSON) and the input
// limits; it decides nothing about the data. The shell that runs node:http calls it.
//
// Wire formats in brief:
// - Keys travel in the path after /v1/kv/, percent-encoded (so a key may contain "/"), and must be
//   non-empty UTF-8 of at most keyBytesMax bytes. Values are the raw request and response bodies.
// - Versions travel as strong entity tags: `ETag: "42"`, `If-Match: "42"`. A key's version is the
//   seq of its last change; `If-Match: "0"` means "the key is absent", like `If-None-Match: *`.
// - JSON carries values as `"value"` (a string) when the bytes are valid UTF-8, otherwise as
//   `"valueBase64"` (standard base64 with padding, RFC 4648 section 4). Exactly one is present.
// - Transaction body (POST /v1/txn); every field is optional, unknown fields are rejected:
//     { "compare": [ { "key": "a", "version": 3 } ],            // version 0 = "a is absent"
//       "success": [ { "put": { "key": "a", "value": "text" } },
//                    { "put": { "key": "b", "valueBase64": "AAEC" } },
//                    { "delete": { "key": "c" } } ],
//       "failure": [ … same as success … ] }
// - Client sessions: `Mainstay-Client-Id` (1–clientIdBytesMax visible ASCII characters) and
//   `Mainstay-Request-Id` (a positive integer), both or neither, on writes; reads ignore them.
// - The change stream (GET /v1/watch?prefix=P&fromSeq=N) is server-sent events, one per changed
//   key, after a position: `fromSeq` (every change of seqs up to N was seen), or the
//   `Last-Event-ID` header, which wins (an EventSource reconnects to the same URL with it). Event
//   ids name positions: `42` is "everything up to and including seq 42", `42.1` is "seq 42 up to
//   its change 1" (a transaction changes several keys at one seq; only its last change in the
//   stream gets the plain seq). Data: {"seq","epoch","type":"put"|"delete","key",
//   "value"|"valueBase64" (puts),"version"}. `event: progress` (id: a seq, data {"seq"}) says every
//   change up to that seq was sent; `event: error` (data {"error","lastEventId"}) ends a stream the
//   server closes, naming where to resume. A position the server no longer holds gets 410
//   COMPACTED with `fromSeqMin`, the smallest fromSeq it can serve.

import { assert } from '../lib/assert.ts';
import { utf8Length } from '../lib/keys.ts';
import type { ClusterMap, StatusMessage } from '../protocol/messages.ts';
import type {
  ClientRequest, ClientResponse, Compare, Consistency, ErrorBody, ErrorCode, KeyValue, Operation, ServerId,
  Session, Write, WriteResult,
} from '../protocol/types.ts';

// ---------------------------------------------------------------- limits

export interface HttpApiLimits {
  /** Most UTF-8 bytes in a key, and in a list prefix. */
  keyBytesMax: number;
  /** Most bytes in one value (a PUT body, or one put of a transaction). */
  valueBytesMax: number;
  /** Most items one list returns; also the limit when the request gives none. */
  listLimitMax: number;
  /** Most compares and operations (success and failure together) in one transaction. */
  txnOperationsMax: number;
  /** Most bytes of keys and values, decoded, in one transaction. */
  txnBytesMax: number;
  /** Most bytes in a request body. The shell may stop reading after one byte more and pass what it has. */
  requestBodyBytesMax: number;
  /** Largest seq accepted as minSeq, as an If-Match version and as a compare version (the smallest is 0). */
  seqMax: number;
  /** Largest Mainstay-Request-Id accepted (the smallest is 1). */
  requestIdMax: number;
  /** Most characters in a Mainstay-Client-Id. */
  clientIdBytesMax: number;
}

export const defaultHttpApiLimits: Readonly<HttpApiLimits> = Object.freeze({
  keyBytesMax: 1024,
  valueBytesMax: 1024 * 1024,
  listLimitMax: 1000,
  txnOperationsMax: 128,
  txnBytesMax: 2 * 1024 * 1024,
  // Base64 makes a transaction body up to 4/3 of its bytes, plus JSON framing.
  requestBodyBytesMax: 3 * 1024 * 1024,
  seqMax: Number.MAX_SAFE_INTEGER,
  requestIdMax: Number.MAX_SAFE_INTEGER,
  clientIdBytesMax: 128,
});

/** Relations between limits that the parser relies on; call once when the shell starts. */
export function assertHttpApiLimits(limits: HttpApiLimits): void {
  assert(limits.keyBytesMax >= 1, 'keyBytesMax must be at least 1');
  assert(limits.valueBytesMax >= 0, 'valueBytesMax must not be negative');
  assert(limits.listLimitMax >= 1, 'listLimitMax must be at least 1');
  assert(limits.txnOperationsMax >= 1, 'txnOperationsMax must be at least 1');
  assert(limits.txnBytesMax >= limits.keyBytesMax + limits.valueBytesMax, 'txnBytesMax must hold one put of the largest key and value');
  assert(limits.requestBodyBytesMax >= limits.valueBytesMax, 'requestBodyBytesMax must hold the largest value');
  assert(limits.seqMax >= 1 && limits.seqMax <= Number.MAX_SAFE_INTEGER, 'seqMax must be a safe integer');
  assert(limits.requestIdMax >= 1 && limits.requestIdMax <= Number.MAX_SAFE_INTEGER, 'requestIdMax must be a safe integer');
  assert(limits.clientIdBytesMax >= 1, 'clientIdBytesMax must be at least 1');
}

// ---------------------------------------------------------------- plain HTTP data

/** Header values as node:http gives them (names in any case; repeated headers as arrays). */
export type HttpHeaders = Readonly<Record<string, string | readonly string[] | undefined>>;

export interface HttpRequestInput {
  /** Upper case, as on the request line. */
  method: string;
  /** The request target's path, still percent-encoded. It may carry "?query" when `query` is omitted. */
  path: string;
  /** The raw query string (with or without "?"), or already decoded pairs such as a URLSearchParams. */
  query?: string | Iterable<readonly [string, string]>;
  headers: HttpHeaders;
  /** The whole body. */
  body: Uint8Array;
  /**
   * The shell stopped reading because the body exceeded requestBodyBytesMax (body is then
   * ignored); the answer is 413 TOO_LARGE once the route and method are known to be right.
   */
  bodyTooLarge?: boolean;
}

export interface HttpResponse {
  status: number;
  headers: Record<string, string>;
  body: Uint8Array | string;
}

/** A point of the change stream: after every change of the seqs up to `seq`, or, with `index`, of seq `seq` up to that change. */
export interface WatchPosition {
  seq: number;
  /** Undefined: seq `seq` is complete. */
  index?: number | undefined;
}

/** GET /v1/watch. */
export interface WatchRequest {
  /** Only keys starting with this (UTF-8, at most keyBytesMax bytes; empty: every key). */
  prefix: string;
  /** Send the changes after this; undefined: after the server's commitSeq when the stream opens. */
  after?: WatchPosition;
}

export type ParsedHttpRequest =
  | { kind: 'client'; request: ClientRequest }
  | { kind: 'watch'; watch: WatchRequest }
  | { kind: 'status' }
  | { kind: 'health' }
  | { kind: 'metrics' }
  | { kind: 'error'; status: number; error: ErrorBody; headers: Record<string, string> };

/** The error object of every JSON error body: `{"error": ErrorJson}`. */
export interface ErrorJson {
  code: ErrorCode;
  message: string;
  /** false means the write may still commit. */
  definite: boolean;
  /** With NOT_MAIN: the main's base URL, when this server knows it. */
  main?: string;
  /** With NOT_MAIN: the main's server id, when this server knows it. */
  mainId?: string;
}

/** One key of a list response; exactly one of value and valueBase64 is present. */
export interface ItemJson {
  key: string;
  value?: string;
  valueBase64?: string;
  version: number;
}

export interface MemberJson {
  id: string;
  /** The member's HTTP base URL. */
  address: string;
  role: 'main' | 'standby' | 'learner';
  priority: number;
}

/** The cluster map as GET /v1/status (under "map") and the manager's GET /v1/cluster (under "map") show it. */
export interface ClusterMapJson {
  version: number;
  epoch: number;
  main: string | null;
  /** The main's HTTP base URL, or null when no main is appointed or its address is unknown. */
  mainAddress: string | null;
  ackQuorum: number;
  members: MemberJson[];
}

// ---------------------------------------------------------------- constants of the wire

export const headerNames = Object.freeze({
  clientId: 'Mainstay-Client-Id',
  requestId: 'Mainstay-Request-Id',
  appliedSeq: 'Mainstay-Applied-Seq',
  /** On a watch stream's response: the position (an event id) after which it sends changes. */
  watchAfter: 'Mainstay-Watch-After',
  lastEventId: 'Last-Event-ID',
});

/** What 429 and 503 answers ask clients to wait before retrying. */
export const retryAfterSeconds = 1;

const jsonType = 'application/json; charset=utf-8';
const bytesType = 'application/octet-stream';
const metricsType = 'text/plain; version=0.0.4; charset=utf-8';

const statusByCode: Readonly<Record<ErrorCode, number>> = {
  BAD_REQUEST: 400,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  PRECONDITION_FAILED: 412,
  TOO_LARGE: 413,
  NOT_MAIN: 421,
  OVERLOADED: 429,
  UNAVAILABLE: 503,
  TIMEOUT: 504,
};

/** The HTTP status that answers an error code. */
export function statusForErrorCode(code: ErrorCode): number {
  return statusByCode[code];
}

// ---------------------------------------------------------------- parsing

/** An input the parser refuses; caught in parseHttpRequest and turned into its error result. */
class Rejection {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    readonly message: string,
    readonly headers: Record<string, string> = {},
  ) {}
}

function reject(message: string): never {
  throw new Rejection(400, 'BAD_REQUEST', message);
}

function rejectTooLarge(status: 413 | 414, message: string): never {
  throw new Rejection(status, 'TOO_LARGE', message);
}

interface Route {
  /** How messages name the route, e.g. "/v1/kv/{key}". */
  name: string;
  methods: readonly string[];
}

const keyRoute: Route = { name: '/v1/kv/{key}', methods: ['GET', 'PUT', 'DELETE'] };
const listRoute: Route = { name: '/v1/kv', methods: ['GET'] };
const txnRoute: Route = { name: '/v1/txn', methods: ['POST'] };
const watchRoute: Route = { name: '/v1/watch', methods: ['GET'] };
const plainRoutes: ReadonlyMap<string, Route & { kind: 'status' | 'health' | 'metrics' }> = new Map([
  ['/v1/status', { name: '/v1/status', methods: ['GET'], kind: 'status' as const }],
  ['/healthz', { name: '/healthz', methods: ['GET'], kind: 'health' as const }],
  ['/metrics', { name: '/metrics', methods: ['GET'], kind: 'metrics' as const }],
]);
const kvPathPrefix = '/v1/kv/';

/**
 * Translate one HTTP request. Every input it cannot serve gets a specific 4xx with a definite
 * error; the shell renders that with `renderParseError`.
 */
export function parseHttpRequest(input: HttpRequestInput, limits: HttpApiLimits = defaultHttpApiLimits): ParsedHttpRequest {
  try {
    return parseOrReject(input, limits);
  } catch (thrown) {
    if (!(thrown instanceof Rejection)) throw thrown;
    return {
      kind: 'error',
      status: thrown.status,
      error: { code: thrown.code, message: thrown.message, definite: true },
      headers: thrown.headers,
    };
  }
}

function parseOrReject(input: HttpRequestInput, limits: HttpApiLimits): ParsedHttpRequest {
  let path = input.path;
  let rawQuery = input.query;
  const questionMark = path.indexOf('?');
  if (questionMark >= 0) {
    if (rawQuery === undefined) rawQuery = path.slice(questionMark + 1);
    path = path.slice(0, questionMark);
  }
  if (!path.startsWith('/')) reject(`Cannot parse the request target "${printable(path)}": it must start with "/"`);
  const method = input.method.toUpperCase();

  const plain = plainRoutes.get(path);
  if (plain !== undefined) {
    checkMethod(plain, method);
    return { kind: plain.kind };
  }
  const route = path === '/v1/kv' ? listRoute : path.startsWith(kvPathPrefix) ? keyRoute : path === '/v1/txn' ? txnRoute
    : path === '/v1/watch' ? watchRoute : undefined;
  if (route === undefined) {
    throw new Rejection(404, 'NOT_FOUND', `Not found: there is no route ${printable(path)}; the API has /v1/kv/{key}, /v1/kv, /v1/txn, /v1/watch, /v1/status, /healthz and /metrics`);
  }
  checkMethod(route, method);
  if (input.bodyTooLarge === true || input.body.length > limits.requestBodyBytesMax) {
    rejectTooLarge(413, `The body is more than ${limits.requestBodyBytesMax} bytes, the limit; send less`);
  }
  const query = parseQuery(rawQuery ?? '');

  if (route === listRoute) {
    checkQueryNames(query, route, method, ['prefix', 'limit', 'consistency', 'minSeq']);
    checkNoBody(input.body, method);
    const prefix = query.get('prefix') ?? '';
    const prefixBytes = utf8Length(prefix);
    if (prefixBytes > limits.keyBytesMax) rejectTooLarge(414, `Cannot parse prefix: it is ${prefixBytes} bytes, more than the limit of ${limits.keyBytesMax}`);
    const limitText = query.get('limit');
    const limit = limitText === undefined ? limits.listLimitMax : parseWholeNumber(limitText, 1, limits.listLimitMax, 'limit');
    return { kind: 'client', request: { type: 'list', prefix, limit, ...readOptions(query, limits) } };
  }

  if (route === watchRoute) {
    checkQueryNames(query, route, method, ['prefix', 'fromSeq']);
    checkNoBody(input.body, method);
    return { kind: 'watch', watch: parseWatch(query, header(input.headers, headerNames.lastEventId.toLowerCase()), limits) };
  }

  if (route === txnRoute) {
    checkQueryNames(query, route, method, []);
    const session = parseSession(input.headers, limits);
    const write = parseTxn(input.body, limits);
    return { kind: 'client', request: withSession({ type: 'write', write }, session) };
  }

  const key = parseKey(path.slice(kvPathPrefix.length), limits);
  if (method === 'GET') {
    checkQueryNames(query, route, method, ['consistency', 'minSeq']);
    checkNoBody(input.body, method);
    return { kind: 'client', request: { type: 'read', key, ...readOptions(query, limits) } };
  }
  checkQueryNames(query, route, method, []);
  const session = parseSession(input.headers, limits);
  const ifVersion = parseIfMatch(header(input.headers, 'if-match'), limits);
  const ifNoneMatch = header(input.headers, 'if-none-match');
  if (method === 'DELETE') {
    if (ifNoneMatch !== undefined) reject('Cannot use If-None-Match with DELETE: use If-Match with the version to delete');
    checkNoBody(input.body, method);
    const write: Write = { type: 'delete', key };
    if (ifVersion !== undefined) write.ifVersion = ifVersion;
    return { kind: 'client', request: withSession({ type: 'write', write }, session) };
  }
  assert(method === 'PUT', 'checkMethod lets only GET, PUT and DELETE reach a key');
  if (ifNoneMatch !== undefined && ifNoneMatch.trim() !== '*') {
    reject('Cannot parse If-None-Match: only * (create the key only if it is absent) is supported');
  }
  if (ifNoneMatch !== undefined && ifVersion !== undefined) {
    reject('Cannot use If-Match and If-None-Match together: send If-Match: "<version>" or If-None-Match: *');
  }
  if (input.body.length > limits.valueBytesMax) {
    rejectTooLarge(413, `The value is ${input.body.length} bytes, more than the limit of ${limits.valueBytesMax}; store smaller values`);
  }
  const write: Write = { type: 'put', key, value: input.body };
  if (ifVersion !== undefined) write.ifVersion = ifVersion;
  if (ifNoneMatch !== undefined) write.ifAbsent = true;
  return { kind: 'client', request: withSession({ type: 'write', write }, session) };
}

function checkMethod(route: Route, method: string): void {
  if (route.methods.includes(method)) return;
  const allowed = route.methods.join(', ');
  throw new Rejection(405, 'METHOD_NOT_ALLOWED',
    `Method ${printable(method)} is not allowed on ${route.name}; use ${listInWords(route.methods)}`, { Allow: allowed });
}

function checkNoBody(body: Uint8Array, method: string): void {
  if (body.length > 0) reject(`A ${method} request takes no body; send it without one`);
}

function withSession(request: ClientRequest & { type: 'write' }, session: Session | undefined): ClientRequest {
  if (session !== undefined) request.session = session;
  return request;
}

function readOptions(query: Map<string, string>, limits: HttpApiLimits): { consistency: Consistency; minSeq?: number } {
  const consistencyText = query.get('consistency');
  let consistency: Consistency = 'linearizable';
  if (consistencyText !== undefined) {
    if (consistencyText !== 'linearizable' && consistencyText !== 'local') {
      reject(`Cannot parse consistency "${printable(consistencyText)}": use linearizable or local`);
    }
    consistency = consistencyText;
  }
  const minSeqText = query.get('minSeq');
  if (minSeqText === undefined) return { consistency };
  return { consistency, minSeq: parseWholeNumber(minSeqText, 0, limits.seqMax, 'minSeq') };
}

function parseWatch(query: Map<string, string>, lastEventId: string | undefined, limits: HttpApiLimits): WatchRequest {
  const prefix = query.get('prefix') ?? '';
  const prefixBytes = utf8Length(prefix);
  if (prefixBytes > limits.keyBytesMax) rejectTooLarge(414, `Cannot parse prefix: it is ${prefixBytes} bytes, more than the limit of ${limits.keyBytesMax}`);
  const fromSeqText = query.get('fromSeq');
  const fromSeq = fromSeqText === undefined ? undefined : parseWholeNumber(fromSeqText, 0, limits.seqMax, 'fromSeq');
  // An EventSource sends the id of the last event it received when it reconnects, to the URL it
  // first opened: the header is the newer position. An empty one means "no event yet".
  if (lastEventId !== undefined && lastEventId.trim() !== '') {
    const after = parseWatchEventId(lastEventId.trim(), limits.seqMax);
    if (after === undefined) {
      reject(`Cannot parse Last-Event-ID "${printable(lastEventId)}": use an event id of this stream, a seq such as 42 or a seq and a change such as 42.1`);
    }
    return { prefix, after };
  }
  return fromSeq === undefined ? { prefix } : { prefix, after: { seq: fromSeq } };
}

/** A decimal whole number in [min, max]; digits only (no sign, exponent or spaces). */
function parseWholeNumber(text: string, min: number, max: number, name: string): number {
  const value = /^[0-9]{1,16}$/.test(text) ? Number(text) : NaN;
  if (!(value >= min && value <= max)) {
    reject(`Cannot parse ${name} "${printable(text)}": use a whole number from ${min} to ${max}`);
  }
  return value;
}

/** Query parameters by name; a name given twice, or bad percent-encoding, is rejected. */
function parseQuery(query: string | Iterable<readonly [string, string]>): Map<string, string> {
  const parameters = new Map<string, string>();
  const add = (name: string, value: string): void => {
    if (parameters.has(name)) reject(`Query parameter "${printable(name)}" is given more than once; give it once`);
    parameters.set(name, value);
  };
  if (typeof query !== 'string') {
    for (const [name, value] of query) add(name, value);
    return parameters;
  }
  const text = query.startsWith('?') ? query.slice(1) : query;
  for (const part of text.split('&')) {
    if (part === '') continue;
    const equals = part.indexOf('=');
    const rawName = equals < 0 ? part : part.slice(0, equals);
    const rawValue = equals < 0 ? '' : part.slice(equals + 1);
    // Forms encode spaces as "+" in queries (not in paths).
    const decode = (raw: string, what: string): string => decodeUtf8OrReject(percentDecode(raw, what, true), what);
    const name = decode(rawName, 'a query parameter name');
    add(name, decode(rawValue, `query parameter "${printable(name)}"`));
  }
  return parameters;
}

function checkQueryNames(query: Map<string, string>, route: Route, method: string, allowed: readonly string[]): void {
  for (const name of query.keys()) {
    if (allowed.includes(name)) continue;
    const hint = allowed.length === 0 ? 'it takes none' : `use ${listInWords(allowed)}`;
    reject(`Unknown query parameter "${printable(name)}" for ${method} ${route.name}: ${hint}`);
  }
}

function parseKey(encoded: string, limits: HttpApiLimits): string {
  if (encoded === '') reject('Cannot parse key: it is empty; put the key after /v1/kv/');
  const bytes = percentDecode(encoded, 'key');
  if (bytes.length > limits.keyBytesMax) {
    rejectTooLarge(414, `Cannot parse key: it is ${bytes.length} bytes, more than the limit of ${limits.keyBytesMax}; use shorter keys`);
  }
  return decodeUtf8OrReject(bytes, 'key');
}

/**
 * Percent-decode to bytes. Characters outside visible ASCII must arrive percent-encoded. In
 * queries "+" stands for a space, as forms and URLSearchParams encode it; in paths it is a "+".
 */
function percentDecode(text: string, what: string, plusIsSpace = false): Uint8Array {
  const bytes = new Uint8Array(text.length);
  let length = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code === 0x25) {
      const hex = text.slice(i + 1, i + 3);
      if (!/^[0-9A-Fa-f]{2}$/.test(hex)) {
        reject(`Cannot parse ${what}: "${printable(text.slice(i, i + 3))}" is not a valid percent-encoding; encode each byte as %XX`);
      }
      bytes[length++] = parseInt(hex, 16);
      i += 2;
    } else if (code === 0x2b && plusIsSpace) {
      bytes[length++] = 0x20;
    } else if (code >= 0x21 && code <= 0x7e) {
      bytes[length++] = code;
    } else {
      reject(`Cannot parse ${what}: it contains a character outside visible ASCII; percent-encode its UTF-8 bytes`);
    }
  }
  return bytes.subarray(0, length);
}

function decodeUtf8OrReject(bytes: Uint8Array, what: string): string {
  const text = decodeUtf8(bytes);
  if (text === undefined) reject(`Cannot parse ${what}: it is not valid UTF-8 once percent-decoded; encode text as UTF-8`);
  return text;
}

/** One header's value, looked up case-insensitively; a header sent twice is rejected. */
function header(headers: HttpHeaders, lowerName: string): string | undefined {
  let found: string | readonly string[] | undefined;
  for (const name in headers) {
    if (name.toLowerCase() !== lowerName) continue;
    const value = headers[name];
    if (value === undefined) continue;
    if (found !== undefined) found = [...asArray(found), ...asArray(value)];
    else found = value;
  }
  if (found === undefined || typeof found === 'string') return found;
  if (found.length === 1) return found[0];
  reject(`Header ${lowerName} is sent ${found.length} times; send it once`);
}

function asArray(value: string | readonly string[]): readonly string[] {
  return typeof value === 'string' ? [value] : value;
}

/** If-Match: "<version>" (a strong entity tag). Absent → undefined. */
function parseIfMatch(value: string | undefined, limits: HttpApiLimits): number | undefined {
  if (value === undefined) return undefined;
  const match = /^"([0-9]{1,16})"$/.exec(value.trim());
  const version = match === null ? NaN : Number(match[1]);
  if (!(version >= 0 && version <= limits.seqMax)) {
    reject(`Cannot parse If-Match ${printable(value)}: send one version in double quotes, such as If-Match: "42"`);
  }
  return version;
}

function parseSession(headers: HttpHeaders, limits: HttpApiLimits): Session | undefined {
  const clientId = header(headers, headerNames.clientId.toLowerCase());
  const requestIdText = header(headers, headerNames.requestId.toLowerCase());
  if (clientId === undefined && requestIdText === undefined) return undefined;
  if (clientId === undefined) reject(`${headerNames.requestId} needs ${headerNames.clientId}: send both headers or neither`);
  if (requestIdText === undefined) reject(`${headerNames.clientId} needs ${headerNames.requestId}: send both headers or neither`);
  if (!/^[\x21-\x7e]+$/.test(clientId) || clientId.length > limits.clientIdBytesMax) {
    reject(`Cannot parse ${headerNames.clientId}: use 1 to ${limits.clientIdBytesMax} visible ASCII characters`);
  }
  const requestId = /^[0-9]{1,16}$/.test(requestIdText.trim()) ? Number(requestIdText.trim()) : NaN;
  if (!(requestId >= 1 && requestId <= limits.requestIdMax)) {
    reject(`Cannot parse ${headerNames.requestId} "${printable(requestIdText)}": use a whole number from 1 to ${limits.requestIdMax}, increasing per client`);
  }
  return { clientId, requestId };
}

// ---------------------------------------------------------------- the transaction body

type Json = null | boolean | number | string | Json[] | { [field: string]: Json };
type JsonObject = { [field: string]: Json };

function parseTxn(body: Uint8Array, limits: HttpApiLimits): Write & { type: 'txn' } {
  const text = decodeUtf8(body);
  if (text === undefined) reject('Cannot parse the transaction: the body is not valid UTF-8; send JSON');
  let json: Json;
  try {
    json = JSON.parse(text) as Json;
  } catch (error) {
    reject(`Cannot parse the transaction: the body is not valid JSON (${(error as Error).message}); send a JSON object with compare, success and failure`);
  }
  const root = expectObject(json, 'the body', ['compare', 'success', 'failure']);
  const compareList = optionalArray(root, 'compare');
  const successList = optionalArray(root, 'success');
  const failureList = optionalArray(root, 'failure');
  const count = compareList.length + successList.length + failureList.length;
  if (count > limits.txnOperationsMax) {
    rejectTooLarge(413, `The transaction has ${count} compares and operations, more than the limit of ${limits.txnOperationsMax}; split it`);
  }
  const budget = { bytes: 0 };
  const compares = compareList.map((item, index) => parseCompare(item, `compare[${index}]`, limits, budget));
  const success = successList.map((item, index) => parseOperation(item, `success[${index}]`, limits, budget));
  const failure = failureList.map((item, index) => parseOperation(item, `failure[${index}]`, limits, budget));
  return { type: 'txn', compares, success, failure };
}

function parseCompare(json: Json, where: string, limits: HttpApiLimits, budget: { bytes: number }): Compare {
  const object = expectObject(json, where, ['key', 'version']);
  const key = txnKey(object, where, limits, budget);
  const version = required(object, 'version', where);
  if (typeof version !== 'number' || !Number.isInteger(version) || version < 0 || version > limits.seqMax) {
    reject(`Cannot parse the transaction: ${where}.version must be a whole number from 0 to ${limits.seqMax} (0 means the key is absent)`);
  }
  return { key, version };
}

function parseOperation(json: Json, where: string, limits: HttpApiLimits, budget: { bytes: number }): Operation {
  const object = expectObject(json, where, ['put', 'delete']);
  const names = Object.keys(object);
  if (names.length !== 1) {
    reject(`Cannot parse the transaction: ${where} must have exactly one of put and delete, such as {"delete":{"key":"a"}}`);
  }
  if (object.delete !== undefined) {
    const operation = expectObject(object.delete, `${where}.delete`, ['key']);
    return { type: 'delete', key: txnKey(operation, `${where}.delete`, limits, budget) };
  }
  const at = `${where}.put`;
  const operation = expectObject(object.put as Json, at, ['key', 'value', 'valueBase64']);
  const key = txnKey(operation, at, limits, budget);
  const text = operation.value;
  const base64 = operation.valueBase64;
  if ((text === undefined) === (base64 === undefined)) {
    reject(`Cannot parse the transaction: ${at} must have exactly one of value (a UTF-8 string) and valueBase64`);
  }
  let value: Uint8Array;
  if (text !== undefined) {
    if (typeof text !== 'string') reject(`Cannot parse the transaction: ${at}.value must be a string; use valueBase64 for bytes`);
    if (!text.isWellFormed()) reject(`Cannot parse the transaction: ${at}.value has a lone surrogate, which is not UTF-8; use valueBase64 for bytes`);
    value = utf8Encoder.encode(text);
  } else {
    if (typeof base64 !== 'string') reject(`Cannot parse the transaction: ${at}.valueBase64 must be a string`);
    const decoded = decodeBase64(base64);
    if (decoded === undefined) reject(`Cannot parse the transaction: ${at}.valueBase64 is not valid base64 (RFC 4648 alphabet, with padding)`);
    value = decoded;
  }
  if (value.length > limits.valueBytesMax) {
    rejectTooLarge(413, `Cannot accept the transaction: ${at} has a value of ${value.length} bytes, more than the limit of ${limits.valueBytesMax}`);
  }
  spend(budget, value.length, limits);
  return { type: 'put', key, value };
}

function txnKey(object: JsonObject, where: string, limits: HttpApiLimits, budget: { bytes: number }): string {
  const key = required(object, 'key', where);
  if (typeof key !== 'string') reject(`Cannot parse the transaction: ${where}.key must be a string`);
  if (key === '') reject(`Cannot parse the transaction: ${where}.key is empty; give a non-empty key`);
  if (!key.isWellFormed()) reject(`Cannot parse the transaction: ${where}.key has a lone surrogate, which is not UTF-8`);
  const bytes = utf8Length(key);
  if (bytes > limits.keyBytesMax) {
    rejectTooLarge(413, `Cannot accept the transaction: ${where}.key is ${bytes} bytes, more than the limit of ${limits.keyBytesMax}`);
  }
  spend(budget, bytes, limits);
  return key;
}

function spend(budget: { bytes: number }, bytes: number, limits: HttpApiLimits): void {
  budget.bytes += bytes;
  if (budget.bytes > limits.txnBytesMax) {
    rejectTooLarge(413, `The transaction's keys and values are more than ${limits.txnBytesMax} bytes, the limit; split it`);
  }
}

function expectObject(json: Json, where: string, fields: readonly string[]): JsonObject {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    reject(`Cannot parse the transaction: ${where} must be a JSON object`);
  }
  for (const name of Object.keys(json)) {
    if (!fields.includes(name)) {
      reject(`Cannot parse the transaction: unknown field "${printable(name)}" in ${where}; use ${listInWords(fields)}`);
    }
  }
  return json;
}

function optionalArray(object: JsonObject, name: string): Json[] {
  const value = object[name];
  if (value === undefined) return [];
  if (!Array.isArray(value)) reject(`Cannot parse the transaction: ${name} must be an array`);
  return value;
}

function required(object: JsonObject, name: string, where: string): Json {
  const value = object[name];
  if (value === undefined) reject(`Cannot parse the transaction: ${where}.${name} is missing`);
  return value;
}

// ---------------------------------------------------------------- rendering

export interface RenderContext {
  /** With NOT_MAIN: the HTTP base URL of the main the error names (see `memberAddress`). */
  mainAddress?: string;
  /** The request's path and query, so a NOT_MAIN answer can point at the same request on the main. */
  target?: string;
  /** Longest list body, in characters of JSON; a longer one is answered TOO_LARGE (default httpListAnswerCharsMax). */
  listAnswerCharsMax?: number;
}

/**
 * Longest list answer over HTTP (64 Mi characters of JSON, as the wire protocol has 64 MiB frames): a list
 * of large values would otherwise be a string past what V8 can hold, built on the server's event loop.
 */
export const httpListAnswerCharsMax = 64 * 1024 * 1024;

/** Translate the core's answer to `request` into HTTP. */
export function renderClientResponse(response: ClientResponse, request: ClientRequest, context: RenderContext = {}): HttpResponse {
  switch (response.type) {
    case 'error':
      return renderCoreError(response.error, request, context);
    case 'write':
      assert(request.type === 'write', 'a write response answers a write');
      return renderWrite(response.result, request.write);
    case 'read': {
      assert(request.type === 'read', 'a read response answers a read');
      const appliedSeq = String(response.appliedSeq);
      if (response.item === undefined) {
        return renderError(404, { code: 'NOT_FOUND', message: `Key ${JSON.stringify(request.key)} is absent`, definite: true },
          { [headerNames.appliedSeq]: appliedSeq });
      }
      return {
        status: 200,
        headers: { 'Content-Type': bytesType, 'ETag': `"${response.item.version}"`, [headerNames.appliedSeq]: appliedSeq },
        body: response.item.value,
      };
    }
    case 'list': {
      assert(request.type === 'list', 'a list response answers a list');
      // Item by item, so an answer too large stops before it is built whole.
      const charsMax = context.listAnswerCharsMax ?? httpListAnswerCharsMax;
      const tail = `],"appliedSeq":${response.appliedSeq}}`;
      let chars = '{"items":['.length + tail.length;
      const parts: string[] = [];
      for (const item of response.items) {
        const part = JSON.stringify(itemJson(item));
        chars += part.length + (parts.length > 0 ? 1 : 0);
        if (chars > charsMax) {
          return renderError(413, { code: 'TOO_LARGE', definite: true,
            message: `The answer would be more than ${charsMax} characters of JSON (${response.items.length} items; the first ${parts.length} fit); list with a smaller limit` });
        }
        parts.push(part);
      }
      return { status: 200, headers: { 'Content-Type': jsonType, [headerNames.appliedSeq]: String(response.appliedSeq) }, body: `{"items":[${parts.join(',')}${tail}` };
    }
  }
}

function renderWrite(result: WriteResult, write: Write): HttpResponse {
  if (result.status === 'preconditionFailed') {
    return renderError(412, { code: 'PRECONDITION_FAILED', message: `The condition failed: the key's version is ${result.version}`, definite: true });
  }
  if (result.status === 'txn') {
    assert(write.type === 'txn', 'a transaction result answers a transaction');
    return renderJson(200, { seq: result.seq, epoch: result.epoch, succeeded: result.succeeded });
  }
  assert(write.type === 'put' || write.type === 'delete', 'an ok result answers a put or a delete');
  if (write.type === 'delete') return renderJson(200, { seq: result.seq, epoch: result.epoch });
  return renderJson(200, { seq: result.seq, epoch: result.epoch, version: result.version }, { 'ETag': `"${result.version}"` });
}

function renderCoreError(error: ErrorBody, request: ClientRequest, context: RenderContext): HttpResponse {
  const status = statusForErrorCode(error.code);
  const headers: Record<string, string> = {};
  const json: ErrorJson = { code: error.code, message: error.message, definite: error.definite };
  switch (error.code) {
    case 'NOT_MAIN':
      if (context.mainAddress !== undefined) {
        json.main = context.mainAddress;
        json.message = `${error.message}; send the request to the main at ${context.mainAddress}`;
        headers.Location = joinUrl(context.mainAddress, context.target ?? '');
      } else {
        json.message = `${error.message}, and it knows no main; retry later or ask the manager`;
      }
      if (error.main !== undefined) json.mainId = error.main;
      json.definite = true;
      break;
    case 'TIMEOUT':
      // A write that timed out may still commit; never let a client take it for a failure.
      if (request.type === 'write') json.definite = false;
      break;
    case 'OVERLOADED':
    case 'UNAVAILABLE':
      headers['Retry-After'] = String(retryAfterSeconds);
      break;
    default:
      break;
  }
  return renderError(status, json, headers);
}

/** A JSON error response: `{"error": {...}}`. */
export function renderError(status: number, error: ErrorJson | ErrorBody, headers: Record<string, string> = {}): HttpResponse {
  const json: ErrorJson = { code: error.code, message: error.message, definite: error.definite };
  if (error.main !== undefined) json.main = error.main;
  if ('mainId' in error && error.mainId !== undefined) json.mainId = error.mainId;
  return renderJson(status, { error: json }, headers);
}

/** The response to a `kind: 'error'` parse result. */
export function renderParseError(parsed: ParsedHttpRequest & { kind: 'error' }): HttpResponse {
  return renderError(parsed.status, parsed.error, parsed.headers);
}

export function renderJson(status: number, value: unknown, headers: Record<string, string> = {}): HttpResponse {
  return { status, headers: { 'Content-Type': jsonType, ...headers }, body: JSON.stringify(value) };
}

/** GET /v1/status: this server's status with the cluster map it holds (members' addresses included). */
export function renderStatus(self: { id: ServerId; address: string }, status: StatusMessage, map: ClusterMap | undefined): HttpResponse {
  const { type: _type, ...fields } = status;
  return renderJson(200, { id: self.id, address: self.address, ...fields, map: map === undefined ? null : clusterMapJson(map) });
}

/** The cluster map as JSON; the manager's GET /v1/cluster answers `{ "map": clusterMapJson(map), … }`. */
export function clusterMapJson(map: ClusterMap): ClusterMapJson {
  return {
    version: map.version,
    epoch: map.epoch,
    main: map.main,
    mainAddress: memberAddress(map, map.main) ?? null,
    ackQuorum: map.ackQuorum,
    members: map.members.map((member) => ({
      id: member.id,
      address: member.address,
      role: member.id === map.main ? 'main' : member.role,
      priority: member.priority,
    })),
  };
}

/** The HTTP base URL of a member, to fill `RenderContext.mainAddress` from a NOT_MAIN error's `main`. */
export function memberAddress(map: ClusterMap | undefined, id: ServerId | null | undefined): string | undefined {
  if (map === undefined || id === null || id === undefined) return undefined;
  return map.members.find((member) => member.id === id)?.address;
}

/** GET /healthz: 200 when the server serves, 503 with the reason otherwise. */
export function renderHealth(health: { ok: boolean; reason?: string }): HttpResponse {
  if (health.ok) return renderJson(200, { ok: true });
  return renderJson(503, { ok: false, reason: health.reason ?? 'unknown' }, { 'Retry-After': String(retryAfterSeconds) });
}

/** GET /metrics: Prometheus text exposition. */
export function renderMetrics(text: string): HttpResponse {
  return { status: 200, headers: { 'Content-Type': metricsType }, body: text };
}

/** A list item: the value as a string when its bytes are valid UTF-8, as base64 otherwise. */
export function itemJson(item: KeyValue): ItemJson {
  const text = decodeUtf8(item.value);
  if (text !== undefined) return { key: item.key, value: text, version: item.version };
  return { key: item.key, valueBase64: encodeBase64(item.value), version: item.version };
}

// ---------------------------------------------------------------- the change stream

/** One change as the watch stream carries it (the recorder's Change has these fields). */
export interface WatchChange {
  seq: number;
  epoch: number;
  /** Place among the changes of its seq, from 0. */
  index: number;
  type: 'put' | 'delete';
  key: string;
  /** Puts only. */
  value?: Uint8Array;
  version: number;
}

/** The data of a change event; exactly one of value and valueBase64 on a put, neither on a delete. */
export interface WatchChangeJson {
  seq: number;
  epoch: number;
  type: 'put' | 'delete';
  key: string;
  value?: string;
  valueBase64?: string;
  version: number;
}

/** Why the server ended a stream (`event: error`); the consumer resumes from `lastEventId`, here or elsewhere. */
export type WatchEndCode =
  /** The consumer fell behind what this server keeps (it read too slowly, or the log was compacted under it). */
  | 'SLOW_CONSUMER'
  /** This server stopped being the main. */
  | 'STEPPED_DOWN'
  /** This server's state was replaced (a snapshot install, a K = 0 rebuild). */
  | 'STATE_RESET'
  | 'SHUTTING_DOWN';

const eventStreamType = 'text/event-stream; charset=utf-8';

/** The id of an event at a position: "42" (seq 42 complete) or "42.1" (seq 42 up to its change 1). */
export function watchEventId(position: WatchPosition): string {
  return position.index === undefined ? String(position.seq) : `${position.seq}.${position.index}`;
}

/** The position an event id names, or undefined if it is not one. */
export function parseWatchEventId(text: string, seqMax: number = Number.MAX_SAFE_INTEGER): WatchPosition | undefined {
  const match = /^([0-9]{1,16})(?:\.([0-9]{1,6}))?$/.exec(text);
  if (match === null) return undefined;
  const at = Number(match[1]);
  if (at > seqMax) return undefined;
  return match[2] === undefined ? { seq: at } : { seq: at, index: Number(match[2]) };
}

/** Status and headers of a stream that sends the changes after `after`. */
export function watchStreamHead(after: WatchPosition): { status: number; headers: Record<string, string> } {
  return {
    status: 200,
    headers: {
      'Content-Type': eventStreamType,
      'Cache-Control': 'no-cache, no-transform',
      // Proxies that buffer responses (nginx) would hold the events back.
      'X-Accel-Buffering': 'no',
      [headerNames.watchAfter]: watchEventId(after),
    },
  };
}

/** The first bytes of a stream: how long an EventSource waits before it reconnects. */
export function renderWatchPreamble(retryMs: number): string {
  return `retry: ${retryMs}\n\n`;
}

/** A change event; `complete` when no later change of its seq follows in this stream, so its id is the plain seq. */
export function renderWatchChange(change: WatchChange, complete: boolean): string {
  const id = watchEventId(complete ? { seq: change.seq } : { seq: change.seq, index: change.index });
  return `id: ${id}\ndata: ${JSON.stringify(watchChangeJson(change))}\n\n`;
}

export function watchChangeJson(change: WatchChange): WatchChangeJson {
  const { seq: at, epoch: atEpoch, key, version } = change;
  if (change.type === 'delete') return { seq: at, epoch: atEpoch, type: 'delete', key, version };
  const value = change.value ?? new Uint8Array(0);
  const text = decodeUtf8(value);
  return text === undefined
    ? { seq: at, epoch: atEpoch, type: 'put', key, valueBase64: encodeBase64(value), version }
    : { seq: at, epoch: atEpoch, type: 'put', key, value: text, version };
}

/** Every change up to `throughSeq` was sent (none of them matched, or all did): the consumer may resume after it. */
export function renderWatchProgress(throughSeq: number): string {
  return `id: ${throughSeq}\nevent: progress\ndata: ${JSON.stringify({ seq: throughSeq })}\n\n`;
}

/** A comment, which keeps proxies and the consumer's idle timer from closing a quiet stream. */
export const watchHeartbeat = ': heartbeat\n\n';

/** The last event of a stream the server ends. */
export function renderWatchEnd(code: WatchEndCode, message: string, lastEventId: string): string {
  return `event: error\ndata: ${JSON.stringify({ error: { code, message, definite: true }, lastEventId })}\n\n`;
}

/** 410: the position is older than what this server keeps; `fromSeqMin` is the smallest fromSeq it can serve. */
export function renderWatchGone(after: WatchPosition, fromSeqMin: number): HttpResponse {
  return renderJson(410, {
    error: {
      code: 'COMPACTED',
      message: `Cannot resume the change stream after ${watchEventId(after)}: this server keeps the changes after seq ${fromSeqMin} only `
        + '(older ones are compacted from its log, or were applied before it started); resume on another server, or read the state and watch from its appliedSeq',
      definite: true,
      fromSeqMin,
    },
  });
}

// ---------------------------------------------------------------- text and bytes

const utf8Encoder = new TextEncoder();
// fatal: invalid UTF-8 is an error, not U+FFFD; ignoreBOM: a leading BOM is data and is kept.
const utf8Decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The text of valid UTF-8 bytes, or undefined. */
export function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return utf8Decoder.decode(bytes);
  } catch {
    return undefined;
  }
}

const base64Alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const base64Values = new Map([...base64Alphabet].map((character, index) => [character, index]));

export function encodeBase64(bytes: Uint8Array): string {
  let text = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const a = bytes[i] as number;
    const b = bytes[i + 1];
    const c = bytes[i + 2];
    const triple = (a << 16) | ((b ?? 0) << 8) | (c ?? 0);
    text += base64Alphabet[(triple >> 18) & 63];
    text += base64Alphabet[(triple >> 12) & 63];
    text += b === undefined ? '=' : base64Alphabet[(triple >> 6) & 63];
    text += c === undefined ? '=' : base64Alphabet[triple & 63];
  }
  return text;
}

/** Standard base64 with padding; undefined when the text is not that. */
export function decodeBase64(text: string): Uint8Array | undefined {
  if (text.length % 4 !== 0) return undefined;
  const padding = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  const bytes = new Uint8Array((text.length / 4) * 3 - padding);
  let length = 0;
  for (let i = 0; i < text.length; i += 4) {
    let quad = 0;
    for (let j = 0; j < 4; j++) {
      const character = text[i + j] as string;
      const isPadding = character === '=' && i + j >= text.length - padding;
      const value = isPadding ? 0 : base64Values.get(character);
      if (value === undefined) return undefined;
      quad = (quad << 6) | value;
    }
    for (const shift of [16, 8, 0]) {
      if (length < bytes.length) bytes[length++] = (quad >> shift) & 255;
    }
  }
  return bytes;
}

// ---------------------------------------------------------------- message helpers

/** Echo user input in a message safely: control characters escaped, long text cut. */
function printable(text: string): string {
  const cut = text.length > 64 ? `${text.slice(0, 64)}…` : text;
  return JSON.stringify(cut).slice(1, -1);
}

function listInWords(items: readonly string[]): string {
  if (items.length <= 1) return items.join('');
  return `${items.slice(0, -1).join(', ')} or ${items[items.length - 1] as string}`;
}

function joinUrl(base: string, target: string): string {
  return base.endsWith('/') && target.startsWith('/') ? base + target.slice(1) : base + target;
}
