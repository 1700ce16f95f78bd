// The vocabulary of Mainstay (SPEC.md section 1) as types: branded numbers that must not mix,
// log entries, writes, client requests and responses, and error codes. Pure data, no logic.

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

/** Position of an entry in the cluster's log: 1, 2, 3 … with no gaps. 0 means "before the first". */
export type Seq = Brand<number, 'Seq'>;
/** Number of a main's appointment; every appointment is a new epoch. 0 means "never appointed". */
export type Epoch = Brand<number, 'Epoch'>;
/** A server's stable name, for example "s1". */
export type ServerId = Brand<string, 'ServerId'>;

export const seq = (value: number): Seq => value as Seq;
export const epoch = (value: number): Epoch => value as Epoch;
export const serverId = (value: string): ServerId => value as ServerId;

/** A client session makes retries exactly-once: one request at a time per client, ids increasing. */
export interface Session {
  clientId: string;
  requestId: number;
}

/** A comparison inside a transaction; `version: 0` means "the key is absent". */
export interface Compare {
  key: string;
  version: number;
}

export type Operation =
  | { type: 'put'; key: string; value: Uint8Array }
  | { type: 'delete'; key: string };

/**
 * A write operation request (SPEC.md section 3). Conditions are decided at apply time so every
 * server reaches the same result. A key's version is the seq of its last change.
 */
export type Write =
  | { type: 'put'; key: string; value: Uint8Array; ifVersion?: number; ifAbsent?: boolean }
  | { type: 'delete'; key: string; ifVersion?: number }
  | { type: 'txn'; compares: Compare[]; success: Operation[]; failure: Operation[] }
  /** Appended by a new main first in its epoch; changes no key. */
  | { type: 'epochStart' }
  /** Appended by the main when it adopts a new configuration (members or K); changes no key. */
  | { type: 'configChange'; mapVersion: number };

/** One record of the log. */
export interface LogEntry {
  epoch: Epoch;
  seq: Seq;
  write: Write;
  session?: Session;
}

/** What applying a write produced; recorded in the session table for exactly-once retries. */
export type WriteResult =
  | { status: 'ok'; seq: Seq; epoch: Epoch; version: number }
  | { status: 'preconditionFailed'; seq: Seq; epoch: Epoch; version: number }
  | { status: 'txn'; seq: Seq; epoch: Epoch; succeeded: boolean };

/** The last request applied for one client, and what it produced (part of the replicated state). */
export interface SessionRecord {
  clientId: string;
  requestId: number;
  result: WriteResult;
  /** Seq of the entry that last touched this record; orders eviction identically on every server. */
  lastSeq: Seq;
}

export type Consistency = 'linearizable' | 'local';

export type ClientRequest =
  | { type: 'write'; write: Write; session?: Session }
  | { type: 'read'; key: string; consistency: Consistency; minSeq?: number }
  | { type: 'list'; prefix: string; limit: number; consistency: Consistency; minSeq?: number };

export type ErrorCode =
  | 'NOT_MAIN'
  | 'TIMEOUT'
  | 'PRECONDITION_FAILED'
  | 'NOT_FOUND'
  | 'UNAVAILABLE'
  | 'BAD_REQUEST'
  /** HTTP only: the route exists but not with this method (405, with an Allow header). */
  | 'METHOD_NOT_ALLOWED'
  | 'TOO_LARGE'
  | 'OVERLOADED';

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  /** false means the write may still commit. */
  definite: boolean;
  /** With NOT_MAIN: the main this server believes in, if any. */
  main?: ServerId;
}

export interface KeyValue {
  key: string;
  value: Uint8Array;
  version: number;
}

export type ClientResponse =
  | { type: 'write'; result: WriteResult }
  | { type: 'read'; item: KeyValue | undefined; appliedSeq: Seq }
  | { type: 'list'; items: KeyValue[]; appliedSeq: Seq }
  | { type: 'error'; error: ErrorBody };

export function errorResponse(code: ErrorCode, message: string, definite: boolean, main?: ServerId): ClientResponse {
  const error: ErrorBody = { code, message, definite };
  if (main !== undefined) error.main = main;
  return { type: 'error', error };
}

/** Compare (epoch, seq) positions: the "latest and most complete" order of SPEC.md section 5. */
export function comparePosition(a: { lastEpoch: Epoch; lastSeq: Seq }, b: { lastEpoch: Epoch; lastSeq: Seq }): number {
  if (a.lastEpoch !== b.lastEpoch) return a.lastEpoch - b.lastEpoch;
  return a.lastSeq - b.lastSeq;
}
