// The key-value state machine: applies committed log entries in seq order to a KvStore, decides
// conditional writes and transactions deterministically at apply time, and keeps the bounded
// client-session table that makes retried writes exactly-once, also across failover (the table is
// part of the replicated state, so every server has the same one).

import { assert, unreachable } from '../lib/assert.ts';
import type { Epoch, KeyValue, LogEntry, Operation, Seq, Session, SessionRecord, Write, WriteResult } from '../protocol/types.ts';

export type { SessionRecord } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import { compareKeys, utf8Length } from '../lib/keys.ts';

export interface StoredValue {
  value: Uint8Array;
  /** The seq of the key's last change. */
  version: number;
}

/** One atomic change of the store: keys (null = delete), sessions (null = evict), new appliedSeq. */
export interface KvBatch {
  keys: Map<string, StoredValue | null>;
  sessions: Map<string, SessionRecord | null>;
  appliedSeq: Seq;
  /** Epoch of the entry at appliedSeq: with appliedSeq it names the state's position in the log. */
  appliedEpoch: Epoch;
  /**
   * What each applied entry changed, in seq order, as the change stream reports it (GET /v1/watch,
   * src/core/watch.ts). Set by KvState.apply; absent from batches that apply no entry (a snapshot
   * install). Stores ignore it.
   */
  changes?: Change[];
}

/** One key changed by one applied entry. */
export interface Change {
  seq: Seq;
  /** The epoch of the entry. */
  epoch: Epoch;
  /** Place among the changes of its seq (a transaction changes several keys at one seq), from 0. */
  index: number;
  /** Whether it is the last change of its seq. */
  last: boolean;
  type: 'put' | 'delete';
  key: string;
  /** The new value; puts only. */
  value?: Uint8Array;
  /** The key's version after the change: the seq of the change (SPEC.md section 9). */
  version: number;
}

/**
 * Where the state lives: memory in the simulator, LMDB on a real server. Reads are synchronous.
 * `commit` makes the whole batch, data and appliedSeq together, visible and durable atomically.
 */
export interface KvStore {
  get(key: string): StoredValue | undefined;
  /** Keys starting with prefix, in key order, at most limit. */
  range(prefix: string, limit: number): KeyValue[];
  appliedSeq(): Seq;
  appliedEpoch(): Epoch;
  /** Every session record, in any order. */
  loadSessions(): SessionRecord[];
  commit(batch: KvBatch): void;
  /** Remove every key and session and set appliedSeq to 0, atomically (K = 0 rebuilds only). */
  reset(): void;
  /**
   * A point-in-time view of the durable state, read in chunks while the store keeps changing: what
   * a main streams to a standby that needs entries its log no longer has.
   */
  snapshotReader(): KvSnapshotReader;
  /** At most the appliedSeq a snapshotReader opened now would show (it may trail appliedSeq). */
  snapshotSeq(): Seq;
}

export interface SnapshotChunk {
  items: KeyValue[];
  sessions: SessionRecord[];
}

export interface KvSnapshotReader {
  /** The appliedSeq and appliedEpoch of the view: the state after applying the log up to seq. */
  readonly seq: Seq;
  readonly epoch: Epoch;
  /**
   * The next chunk of at most maxItems keys (then sessions) and about maxBytes (snapshotItemBytes;
   * at least one item, so one large value may exceed it), or undefined at the end.
   */
  next(maxItems: number, maxBytes: number): SnapshotChunk | undefined;
  close(): void;
}

export interface KvLimits {
  /** Most client sessions remembered; the least recently used is evicted beyond it. */
  sessionsMax: number;
}

export interface ApplyOutcome {
  seq: Seq;
  result: WriteResult;
  /** True if this entry was a retry of a request already applied (its recorded result is returned). */
  duplicate: boolean;
}

export class KvState {
  /** Sessions in least-recently-applied order (Map insertion order), so the first is evicted first. */
  private readonly sessions = new Map<string, SessionRecord>();

  constructor(
    private readonly store: KvStore,
    private readonly limits: KvLimits,
  ) {
    assert(limits.sessionsMax >= 1, 'KvState needs room for at least one session');
    // Nothing applied means nothing stored: keys here are a snapshot install a crash interrupted.
    if (store.appliedSeq() === 0 && (store.range('', 1).length > 0 || store.loadSessions().length > 0)) store.reset();
    const loaded = store.loadSessions().sort((a, b) => a.lastSeq - b.lastSeq);
    for (const record of loaded) this.sessions.set(record.clientId, record);
  }

  get appliedSeq(): Seq {
    return this.store.appliedSeq();
  }

  get appliedEpoch(): Epoch {
    return this.store.appliedEpoch();
  }

  get(key: string): StoredValue | undefined {
    return this.store.get(key);
  }

  range(prefix: string, limit: number): KeyValue[] {
    return this.store.range(prefix, limit);
  }

  /**
   * Forget the whole state. Only with K = 0, where a failover may lose entries a standby already
   * applied: the state is rebuilt by applying the surviving log again.
   */
  reset(): void {
    this.store.reset();
    this.sessions.clear();
  }

  /** Store one chunk of a snapshot being installed (after reset(); appliedSeq stays 0 meanwhile). */
  installChunk(chunk: SnapshotChunk): void {
    assert(this.appliedSeq === 0, 'snapshot chunks go into an empty state');
    const keys = new Map<string, StoredValue | null>();
    for (const item of chunk.items) keys.set(item.key, { value: item.value, version: item.version });
    const sessions = new Map<string, SessionRecord | null>();
    for (const record of chunk.sessions) sessions.set(record.clientId, record);
    this.store.commit({ keys, sessions, appliedSeq: seq(0), appliedEpoch: epoch(0) });
  }

  /** The last chunk is in: the state is the main's at (snapshotSeq, snapshotEpoch). */
  finishSnapshot(snapshotSeq: Seq, snapshotEpoch: Epoch): void {
    assert(this.appliedSeq === 0 && snapshotSeq > 0, 'a snapshot finishes an install into an empty state');
    this.store.commit({ keys: new Map(), sessions: new Map(), appliedSeq: snapshotSeq, appliedEpoch: snapshotEpoch });
    this.sessions.clear();
    for (const record of this.store.loadSessions().sort((a, b) => a.lastSeq - b.lastSeq)) this.sessions.set(record.clientId, record);
  }

  snapshotReader(): KvSnapshotReader {
    return this.store.snapshotReader();
  }

  /** What a snapshot opened now would show (see KvStore.snapshotSeq). */
  get snapshotSeq(): Seq {
    return this.store.snapshotSeq();
  }

  /** The recorded result if this exact request was already applied. */
  sessionResult(session: Session): WriteResult | undefined {
    const record = this.sessions.get(session.clientId);
    if (record === undefined || record.requestId !== session.requestId) return undefined;
    return record.result;
  }

  /**
   * Apply committed entries, which must directly follow appliedSeq, in one atomic batch.
   * Returns what each entry produced.
   */
  apply(entries: readonly LogEntry[]): ApplyOutcome[] {
    if (entries.length === 0) return [];
    // Check the whole batch before changing anything, so a rejected batch leaves no trace.
    for (let i = 0; i < entries.length; i++) {
      assert((entries[i] as LogEntry).seq === this.appliedSeq + 1 + i,
        `apply must continue at appliedSeq + 1 with consecutive seqs (expected ${this.appliedSeq + 1 + i}, got ${(entries[i] as LogEntry).seq})`);
    }
    const changes: Change[] = [];
    const batch: KvBatch = { keys: new Map(), sessions: new Map(), appliedSeq: this.appliedSeq, appliedEpoch: this.appliedEpoch, changes };
    const read = (key: string): StoredValue | undefined => {
      const pending = batch.keys.get(key);
      if (pending === null) return undefined;
      return pending ?? this.store.get(key);
    };
    const outcomes: ApplyOutcome[] = [];
    const sessions = this.sessionOverlay(batch.sessions);
    for (const entry of entries) {
      batch.appliedSeq = entry.seq;
      batch.appliedEpoch = entry.epoch;
      const session = entry.session;
      if (session !== undefined) {
        const record = sessions.get(session.clientId);
        if (record !== undefined && session.requestId <= record.requestId) {
          // A retry of a request already applied (or an older one): change nothing. For the exact
          // request the recorded result is returned; an older one cannot be waiting for a reply.
          outcomes.push({ seq: entry.seq, result: record.result, duplicate: true });
          continue;
        }
      }
      const existedBefore = deletedKeys(entry.write).map((key) => read(key) !== undefined);
      const result = decide(entry.write, entry.seq, entry.epoch, read, batch.keys);
      outcomes.push({ seq: entry.seq, result, duplicate: false });
      recordChanges(entry, result, existedBefore, changes);
      if (session !== undefined) {
        sessions.record({ clientId: session.clientId, requestId: session.requestId, result, lastSeq: entry.seq });
      }
    }
    this.store.commit(batch);
    assert(this.appliedSeq === batch.appliedSeq, 'KvStore.commit must advance appliedSeq');
    // The store has the batch: only now does the in-memory table follow it, in apply order.
    for (const [clientId, record] of batch.sessions) {
      this.sessions.delete(clientId);
      if (record !== null) this.sessions.set(clientId, record);
    }
    return outcomes;
  }

  /**
   * The session table as seen inside a batch: committed records overlaid by the batch's changes.
   * Eviction happens right after each record (least recently applied first), so the outcome does
   * not depend on how entries are split into batches.
   */
  private sessionOverlay(changes: Map<string, SessionRecord | null>) {
    const committed = this.sessions;
    const limit = this.limits.sessionsMax;
    let size = committed.size;
    const oldest = committed.keys();
    const get = (clientId: string): SessionRecord | undefined => {
      const changed = changes.get(clientId);
      if (changed !== undefined) return changed ?? undefined;
      return committed.get(clientId);
    };
    const evictOne = (): void => {
      for (let next = oldest.next(); !next.done; next = oldest.next()) {
        if (changes.has(next.value)) continue;
        changes.set(next.value, null);
        return;
      }
      // Every committed record was touched: evict the batch's least recent live record.
      for (const [clientId, record] of changes) {
        if (record === null) continue;
        changes.delete(clientId);
        changes.set(clientId, null);
        return;
      }
      assert(false, 'no session to evict');
    };
    const record = (entry: SessionRecord): void => {
      if (get(entry.clientId) === undefined) size++;
      // Re-inserting keeps the batch's changes in apply order, which is recency order.
      changes.delete(entry.clientId);
      changes.set(entry.clientId, entry);
      while (size > limit) {
        evictOne();
        size--;
      }
    };
    return { get, record };
  }
}

type Reader = (key: string) => StoredValue | undefined;

/** Decide one write against the current state, recording its changes in `changes`. */
function decide(write: Write, at: Seq, epoch: Epoch, read: Reader, changes: Map<string, StoredValue | null>): WriteResult {
  switch (write.type) {
    case 'epochStart':
    case 'configChange':
      return { status: 'ok', seq: at, epoch, version: 0 };
    case 'put': {
      if (write.ifVersion === undefined && write.ifAbsent !== true) {
        // A plain put needs no read of the current value.
        changes.set(write.key, { value: write.value, version: at });
        return { status: 'ok', seq: at, epoch, version: at };
      }
      const current = read(write.key);
      const currentVersion = current?.version ?? 0;
      const failed = (write.ifAbsent === true && current !== undefined)
        || (write.ifVersion !== undefined && write.ifVersion !== currentVersion);
      if (failed) return { status: 'preconditionFailed', seq: at, epoch, version: currentVersion };
      changes.set(write.key, { value: write.value, version: at });
      return { status: 'ok', seq: at, epoch, version: at };
    }
    case 'delete': {
      const current = read(write.key);
      const currentVersion = current?.version ?? 0;
      if (write.ifVersion !== undefined && write.ifVersion !== currentVersion) {
        return { status: 'preconditionFailed', seq: at, epoch, version: currentVersion };
      }
      if (current !== undefined) changes.set(write.key, null);
      return { status: 'ok', seq: at, epoch, version: at };
    }
    case 'txn': {
      const succeeded = write.compares.every((compare) => (read(compare.key)?.version ?? 0) === compare.version);
      const operations = succeeded ? write.success : write.failure;
      for (const operation of operations) applyOperation(operation, at, changes);
      return { status: 'txn', seq: at, epoch, succeeded };
    }
    default:
      return unreachable(write, 'Unknown write type');
  }
}

const noKeys: readonly string[] = [];

/** The keys a write may delete, in a fixed order (recordChanges reads their prior existence). */
function deletedKeys(write: Write): readonly string[] {
  if (write.type === 'delete') return [write.key];
  if (write.type !== 'txn') return noKeys;
  return [...write.success, ...write.failure].filter((operation) => operation.type === 'delete').map((operation) => operation.key);
}

/**
 * Append what one applied (not absorbed) entry changed: its net change per key, in the order the
 * keys were first written (a transaction that writes a key twice changes it once), leaving out
 * deletes of keys that did not exist before the entry (nothing a reader can see changed).
 */
function recordChanges(entry: LogEntry, result: WriteResult, existedBefore: readonly boolean[], changes: Change[]): void {
  const write = entry.write;
  if (write.type === 'put' || write.type === 'delete') {
    // One key, one operation: the general path's maps would say the same, at a price per write.
    if (result.status !== 'ok' || (write.type === 'delete' && existedBefore[0] !== true)) return;
    changes.push(changeOf(entry, 0, true, write.key, write.type === 'put' ? write.value : null));
    return;
  }
  const operations: readonly Operation[] = write.type === 'txn' ? (result.status === 'txn' && result.succeeded ? write.success : write.failure) : [];
  if (operations.length === 0) return;
  const existed = new Map<string, boolean>();
  deletedKeys(write).forEach((key, i) => existed.set(key, existedBefore[i] as boolean));
  const final = new Map<string, Uint8Array | null>();
  for (const operation of operations) final.set(operation.key, operation.type === 'put' ? operation.value : null);
  const first = changes.length;
  for (const [key, value] of final) {
    if (value === null && existed.get(key) !== true) continue;
    changes.push(changeOf(entry, changes.length - first, false, key, value));
  }
  if (changes.length > first) (changes[changes.length - 1] as Change).last = true;
}

/** One change of `entry` (value null: a delete), built whole: a field added later costs every kept change a property array. */
function changeOf(entry: LogEntry, index: number, last: boolean, key: string, value: Uint8Array | null): Change {
  return value === null
    ? { seq: entry.seq, epoch: entry.epoch, index, last, type: 'delete', key, version: entry.seq }
    : { seq: entry.seq, epoch: entry.epoch, index, last, type: 'put', key, value, version: entry.seq };
}

function applyOperation(operation: Operation, at: Seq, changes: Map<string, StoredValue | null>): void {
  if (operation.type === 'put') changes.set(operation.key, { value: operation.value, version: at });
  else changes.set(operation.key, null);
}

/** A KvStore in memory: the simulator's store, and the oracle of property tests. */
export class MemoryKvStore implements KvStore {
  readonly data = new Map<string, StoredValue>();
  readonly sessionRecords = new Map<string, SessionRecord>();
  private applied: Seq = seq(0);
  private appliedAtEpoch: Epoch = epoch(0);

  get(key: string): StoredValue | undefined {
    return this.data.get(key);
  }

  range(prefix: string, limit: number): KeyValue[] {
    const keys = [...this.data.keys()].filter((key) => key.startsWith(prefix)).sort(compareKeys);
    return keys.slice(0, limit).map((key) => {
      const stored = this.data.get(key) as StoredValue;
      return { key, value: stored.value, version: stored.version };
    });
  }

  appliedSeq(): Seq {
    return this.applied;
  }

  appliedEpoch(): Epoch {
    return this.appliedAtEpoch;
  }

  loadSessions(): SessionRecord[] {
    return [...this.sessionRecords.values()];
  }

  commit(batch: KvBatch): void {
    assert(batch.appliedSeq >= this.applied, 'appliedSeq never goes back');
    for (const [key, stored] of batch.keys) {
      // Copy, as a real store does: a caller reusing its buffer must not change the state.
      if (stored === null) this.data.delete(key);
      else this.data.set(key, { value: stored.value.slice(), version: stored.version });
    }
    for (const [clientId, record] of batch.sessions) {
      if (record === null) this.sessionRecords.delete(clientId);
      else this.sessionRecords.set(clientId, record);
    }
    this.applied = batch.appliedSeq;
    this.appliedAtEpoch = batch.appliedEpoch;
  }

  reset(): void {
    this.data.clear();
    this.sessionRecords.clear();
    this.applied = seq(0);
    this.appliedAtEpoch = epoch(0);
  }

  snapshotSeq(): Seq {
    return this.applied;
  }

  snapshotReader(): KvSnapshotReader {
    // A copy taken now: later commits do not change it.
    const items = this.range('', Number.MAX_SAFE_INTEGER);
    const sessions = [...this.sessionRecords.values()];
    let offset = 0;
    let sessionsSent = false;
    return {
      seq: this.applied,
      epoch: this.appliedAtEpoch,
      next(maxItems: number, maxBytes: number): SnapshotChunk | undefined {
        if (offset < items.length) {
          const chunk = takeChunk(items, offset, maxItems, maxBytes, (item) => snapshotItemBytes(utf8Length(item.key), item.value.length));
          offset += chunk.length;
          return { items: chunk, sessions: [] };
        }
        // Sessions in one chunk, as they always went (each record is small and sessionsMax bounds them).
        if (!sessionsSent) {
          sessionsSent = true;
          return { items: [], sessions };
        }
        return undefined;
      },
      close(): void {},
    };
  }
}

/**
 * What a key counts for against a snapshot chunk's byte budget: its key and value bytes and a little
 * for the version and framing. Stores measure chunks with it (storage/snapshot.ts too).
 */
export function snapshotItemBytes(keyBytes: number, valueBytes: number): number {
  return keyBytes + valueBytes + 16;
}

/**
 * Items from `start` until maxItems of them or maxBytes is reached (the item that reaches it
 * included, so at least one): the rule LmdbKvStore's reader follows too.
 */
function takeChunk<T>(all: readonly T[], start: number, maxItems: number, maxBytes: number, bytesOf: (item: T) => number): T[] {
  let end = start;
  for (let bytes = 0; end < all.length && end - start < maxItems && bytes < maxBytes; end++) bytes += bytesOf(all[end] as T);
  return all.slice(start, end);
}
