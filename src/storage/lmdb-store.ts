// The key-value state of a real server, on disk in LMDB (through lmdb-js): user keys, client-session
// records and the state's position in the log (appliedSeq, appliedEpoch), each batch of KvState in
// one LMDB transaction, so a restart finds the state at a batch boundary and replays only the log
// tail after appliedSeq (SPEC.md section 6).
//
// Writes are asynchronous: `commit` queues the batch for lmdb-js's write thread and returns; it
// never waits for the disk. The write thread commits queued batches in transactions, several per
// transaction when they queue up while it writes (group commit). Until its transaction has
// committed, a batch lives in an in-memory overlay that every read consults first, so reads see
// every committed batch at once (read-your-writes). `flushed()` says when everything committed so
// far is on disk. If LMDB fails to write (disk full, I/O error), the store stops: `commit` throws,
// `flushed()` and `close()` reject.
//
// Sync flags: none of the unsafe ones (no noSync, noMetaSync, mapAsync or useWritemap); lmdb-js's
// default on Linux and macOS, overlappingSync, is kept: a transaction is committed (visible) first
// and fsynced afterwards on the write thread, outside the write lock, so fsyncs overlap with later
// transactions instead of stalling them, and LMDB's meta-page scheme still makes every recovery land
// on a whole transaction. What a crash can lose:
// - a process crash (kill -9, assertion, OOM) loses only batches whose LMDB transaction had not
//   committed yet (they were still in the overlay); committed ones are in the OS page cache;
// - a machine crash or power loss also loses transactions committed after the last finished
//   flush (lmdb-js then restores the last flushed meta page, see its `safeRestore`).
// Either way the store reopens at a batch boundary with appliedSeq matching the data, never ahead
// of it, and the server replays the log from appliedSeq + 1. One more rule keeps that true after a
// failed write: lmdb-js goes on committing the transactions queued behind a failed one, so every
// batch is conditional on the previous batch being on disk (see `enqueue`).
//
// Layout: three LMDB sub-databases, so user keys never collide with metadata:
// - `keys`: UTF-8 key bytes → 8-byte big-endian version (the seq of the key's last change) + value;
// - `sessions`: UTF-8 clientId → the SessionRecord as JSON;
// - `meta` (with lmdb-js entry versions): `format` → the layout's name; `applied` → appliedSeq and
//   appliedEpoch (8 bytes each), its entry version the id of the batch that wrote it.
// Keys are raw UTF-8 bytes compared with memcmp, so `range` returns keys in UTF-8 byte order, which
// is code point order (JavaScript's `<` compares UTF-16 code units and differs for characters above
// U+FFFF versus U+E000–U+FFFF); `compareKeys` gives the same order for strings.

import { compareKeys } from '../lib/keys.ts';
import { open } from 'lmdb';
import type { Database, RootDatabase } from 'lmdb';

import { assert } from '../lib/assert.ts';
import type { KvBatch, KvStore, SessionRecord, StoredValue } from '../core/kv.ts';
import type { Epoch, KeyValue, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';

/** Name of the on-disk layout; a store written in another layout is refused, not misread. */
const formatName = 'mainstay-kv-lmdb-1';

/**
 * Most UTF-8 bytes in a key or clientId: lmdb-js's key limit with the default page size. Requests
 * must be refused before this (the protocol's key limit must not exceed it).
 */
export const lmdbKeyBytesMax = 1978;

const versionBytes = 8;
const formatKey = Buffer.from('format');
const appliedKey = Buffer.from('applied');

export interface LmdbStoreOptions {
  /** Initial size of the memory map; lmdb-js grows it as the data grows. */
  mapSizeBytes?: number;
}

/** A batch handed to LMDB whose transaction has not committed yet, with what it wrote. */
interface InflightBatch {
  id: number;
  keys: string[];
  clientIds: string[];
  isReset: boolean;
}

interface PendingKey {
  /** The last batch that wrote this key. */
  batchId: number;
  /** null: deleted. */
  stored: StoredValue | null;
}

interface PendingSession {
  batchId: number;
  /** null: evicted. */
  record: SessionRecord | null;
}

/** Open (or create) the store in directory `path`. */
export async function openLmdbStore(path: string, options: LmdbStoreOptions = {}): Promise<LmdbKvStore> {
  const root = open<Buffer, Buffer>(path, {
    maxDbs: 3,
    // Only explicit batches group writes: lmdb-js's event-turn batch would create commit promises
    // of its own that nobody handles, so a failed write would crash the process with an unhandled
    // rejection instead of failing the store.
    eventTurnBatching: false,
    encoding: 'binary',
    keyEncoding: 'binary',
    ...(options.mapSizeBytes === undefined ? {} : { mapSize: options.mapSizeBytes }),
  });
  try {
    const databaseOptions = { encoding: 'binary', keyEncoding: 'binary' } as const;
    const keys = root.openDB<Buffer, Buffer>('keys', databaseOptions);
    const sessions = root.openDB<Buffer, Buffer>('sessions', databaseOptions);
    // Versions number the batches: the `applied` record carries the id of the batch that wrote it.
    const meta = root.openDB<Buffer, Buffer>('meta', { ...databaseOptions, useVersions: true });
    const format = meta.getBinary(formatKey)?.toString('utf8');
    if (format === undefined) {
      // A new store: mark it, so a later open knows what it reads. Anything else in it means the
      // directory holds some other LMDB database.
      if (keys.getKeysCount({ limit: 1 }) > 0 || sessions.getKeysCount({ limit: 1 }) > 0) {
        throw new Error(`Cannot open the key-value store at ${path}: it has data but no format marker`);
      }
      await root.transaction(() => {
        meta.put(formatKey, Buffer.from(formatName), 0);
        meta.put(appliedKey, encodeApplied(seq(0), epoch(0)), 0);
      });
      await root.flushed;
    } else if (format !== formatName) {
      throw new Error(`Cannot open the key-value store at ${path}: its format is "${format}", expected "${formatName}"`);
    }
    const applied = meta.getEntry(appliedKey);
    assert(applied !== undefined && applied.value.length === 2 * versionBytes && applied.version !== undefined,
      `The key-value store at ${path} has no valid applied position`);
    return new LmdbKvStore(path, root, keys, sessions, meta, { ...decodeApplied(applied.value), batchId: applied.version });
  } catch (error) {
    await root.close();
    throw error;
  }
}

export class LmdbKvStore implements KvStore {
  /**
   * Keys changed by batches whose LMDB transaction has not committed yet, with their newest state.
   * Invariant: an entry stays until the batch in its batchId (the last that wrote the key) has
   * committed, so an entry overwritten by a later batch outlives the earlier batch's commit.
   */
  private readonly pendingKeys = new Map<string, PendingKey>();
  /** The same overlay for session records. */
  private readonly pendingSessions = new Map<string, PendingSession>();
  /** Batches handed to LMDB and not yet known committed, oldest first from `inflightHead`. */
  private inflight: InflightBatch[] = [];
  private inflightHead = 0;
  /**
   * A reset whose transaction has not committed yet: until it has, LMDB's keys and sessions are
   * stale and only the overlay (which the reset emptied) counts.
   */
  private pendingResetId: number | null = null;
  /**
   * Id of the last batch (or reset) handed to LMDB. Ids continue across restarts: LMDB's `applied`
   * record carries the id of the batch that wrote it as its version.
   */
  private lastBatchId: number;
  /** Invariant: equals what LMDB will hold once every inflight batch has committed. */
  private applied: Seq;
  private appliedAtEpoch: Epoch;
  /** Settles when the last batch has committed or failed, for `flushed`. */
  private lastWrite: Promise<void> = Promise.resolve();
  /** Set when LMDB failed to write: the store then refuses commits and `flushed` rejects. */
  private failure: Error | null = null;
  /** LMDB's own message for the first failed transaction, once lmdb-js has reported it. */
  private failureCause: string | null = null;
  private readonly failed: Promise<never>;
  private rejectFailed: (error: Error) => void = () => {};
  private closed = false;

  /** Use `openLmdbStore`. */
  constructor(
    readonly path: string,
    private readonly root: RootDatabase<Buffer, Buffer>,
    private readonly keys: Database<Buffer, Buffer>,
    private readonly sessions: Database<Buffer, Buffer>,
    private readonly meta: Database<Buffer, Buffer>,
    applied: { appliedSeq: Seq; appliedEpoch: Epoch; batchId: number },
  ) {
    this.lastBatchId = applied.batchId;
    this.applied = applied.appliedSeq;
    this.appliedAtEpoch = applied.appliedEpoch;
    this.failed = new Promise<never>((_resolve, reject) => {
      this.rejectFailed = reject;
    });
    // Nobody may be waiting when a write fails; the failure is reported by commit and flushed.
    this.failed.catch(() => {});
  }

  get(key: string): StoredValue | undefined {
    this.assertOpen();
    const pending = this.pendingKeys.get(key);
    if (pending !== undefined) return pending.stored === null ? undefined : copyStored(pending.stored);
    if (this.pendingResetId !== null) return undefined;
    const keyBytes = encodeKeyToRead(key);
    // The empty key and keys longer than the limit cannot have been written.
    if (keyBytes === undefined || keyBytes.length > lmdbKeyBytesMax) return undefined;
    const bytes = this.keys.getBinaryFast(keyBytes);
    return bytes === undefined ? undefined : decodeStored(bytes);
  }

  range(prefix: string, limit: number): KeyValue[] {
    this.assertOpen();
    const result: KeyValue[] = [];
    if (limit <= 0) return result;
    const prefixBytes = encodeKeyToRead(prefix);
    // A prefix longer than any key matches none.
    if (prefixBytes !== undefined && prefixBytes.length > lmdbKeyBytesMax) return result;
    // The overlay is small (batches in flight), so scanning it whole is cheaper than indexing it.
    const overlay: [string, StoredValue | null][] = [];
    for (const [key, pending] of this.pendingKeys) {
      if (key.startsWith(prefix)) overlay.push([key, pending.stored]);
    }
    overlay.sort(([a], [b]) => compareKeys(a, b));
    let next = 0;
    /** Take overlay entries ordered before `key` (all of them if undefined). */
    const takeOverlayBefore = (key: string | undefined): void => {
      while (next < overlay.length && result.length < limit) {
        const [pendingKey, stored] = overlay[next] as [string, StoredValue | null];
        if (key !== undefined && compareKeys(pendingKey, key) >= 0) return;
        next++;
        if (stored !== null) result.push({ key: pendingKey, ...copyStored(stored) });
      }
    };
    if (this.pendingResetId === null) {
      const end = prefixBytes === undefined ? undefined : prefixUpperBound(prefixBytes);
      const options = {
        ...(prefixBytes === undefined ? {} : { start: prefixBytes }),
        ...(end === undefined ? {} : { end }),
      };
      for (const entry of this.keys.getRange(options)) {
        const key = entry.key.toString('utf8');
        takeOverlayBefore(key);
        if (result.length >= limit) break;
        // A key in the overlay has a newer state, taken in order by takeOverlayBefore.
        if (this.pendingKeys.has(key)) continue;
        result.push({ key, ...decodeStored(entry.value) });
        if (result.length >= limit) break;
      }
    }
    takeOverlayBefore(undefined);
    return result;
  }

  appliedSeq(): Seq {
    this.assertOpen();
    return this.applied;
  }

  appliedEpoch(): Epoch {
    this.assertOpen();
    return this.appliedAtEpoch;
  }

  loadSessions(): SessionRecord[] {
    this.assertOpen();
    const records: SessionRecord[] = [];
    if (this.pendingResetId === null) {
      for (const entry of this.sessions.getRange()) {
        const clientId = entry.key.toString('utf8');
        if (this.pendingSessions.has(clientId)) continue;
        records.push(decodeSession(entry.value));
      }
    }
    for (const pending of this.pendingSessions.values()) {
      if (pending.record !== null) records.push(pending.record);
    }
    return records;
  }

  commit(batch: KvBatch): void {
    this.assertWritable();
    assert(batch.appliedSeq >= this.applied, 'appliedSeq never goes back');
    // Check and encode the whole batch before changing anything, so a refused batch leaves no trace.
    // The encoded values are fresh buffers: the caller may reuse its own afterwards.
    const keyWrites: { key: string; keyBytes: Buffer; encoded: Buffer | null }[] = [];
    for (const [key, stored] of batch.keys) {
      keyWrites.push({ key, keyBytes: encodeKey(key), encoded: stored === null ? null : encodeStored(stored) });
    }
    const sessionWrites: { clientId: string; keyBytes: Buffer; record: SessionRecord | null; encoded: Buffer | null }[] = [];
    for (const [clientId, record] of batch.sessions) {
      assert(record === null || record.clientId === clientId, 'A session record must be filed under its clientId');
      const encoded = record === null ? null : Buffer.from(JSON.stringify(record), 'utf8');
      sessionWrites.push({ clientId, keyBytes: encodeKey(clientId), record, encoded });
    }
    const applied = encodeApplied(batch.appliedSeq, batch.appliedEpoch);

    const id = ++this.lastBatchId;
    for (const write of keyWrites) {
      // The overlay's value is a view into the encoded buffer; reads hand out copies of it.
      const stored = write.encoded === null ? null : decodeStoredView(write.encoded);
      this.pendingKeys.set(write.key, { batchId: id, stored });
    }
    for (const write of sessionWrites) this.pendingSessions.set(write.clientId, { batchId: id, record: write.record });
    this.applied = batch.appliedSeq;
    this.appliedAtEpoch = batch.appliedEpoch;

    // The batch's writes land in one LMDB transaction, possibly with other whole batches, so every
    // recovery is at a batch boundary.
    this.enqueue({ id, keys: keyWrites.map((write) => write.key), clientIds: sessionWrites.map((write) => write.clientId), isReset: false }, () => {
      for (const write of keyWrites) {
        if (write.encoded === null) void this.keys.remove(write.keyBytes);
        else void this.keys.put(write.keyBytes, write.encoded);
      }
      for (const write of sessionWrites) {
        if (write.encoded === null) void this.sessions.remove(write.keyBytes);
        else void this.sessions.put(write.keyBytes, write.encoded);
      }
      void this.meta.put(appliedKey, applied, id);
    });
  }

  reset(): void {
    this.assertWritable();
    const id = ++this.lastBatchId;
    // Older overlay entries are obsolete: the reset comes after them.
    this.pendingKeys.clear();
    this.pendingSessions.clear();
    this.pendingResetId = id;
    this.applied = seq(0);
    this.appliedAtEpoch = epoch(0);
    this.enqueue({ id, keys: [], clientIds: [], isReset: true }, () => {
      void this.keys.clearAsync();
      void this.sessions.clearAsync();
      void this.meta.put(appliedKey, encodeApplied(seq(0), epoch(0)), id);
    });
  }

  /**
   * Resolves when everything committed so far is durable on disk; rejects if LMDB failed to write
   * (then the store is unusable and the server must stop).
   */
  async flushed(): Promise<void> {
    // The commit of the last batch first, then the fsync that follows it. lmdb-js's `flushed`
    // never settles after a failed transaction, hence the race with `failed`.
    await this.lastWrite;
    if (this.failure !== null) throw this.failure;
    await Promise.race([this.root.flushed, this.failed]);
  }

  /** How many batches are not yet committed to LMDB (still held in the overlay): for backpressure and metrics. */
  get pendingBatchCount(): number {
    return this.inflight.length - this.inflightHead;
  }

  /**
   * Flush and close; reads and commits afterwards throw. If something committed could not be
   * written, rejects at once with that failure: lmdb-js cannot finish closing an environment whose
   * write failed, so its handle is left to the process exit.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    let failure: unknown = null;
    try {
      await this.flushed();
    } catch (error) {
      failure = error;
    }
    this.closed = true;
    if (failure !== null) {
      // Stops any further write; the promise never settles after a failed transaction.
      void this.root.close();
      throw failure;
    }
    await this.root.close();
  }

  /**
   * Hand a batch's writes to lmdb-js as one conditional batch: they apply only if LMDB's `applied`
   * record is still the previous batch's. lmdb-js goes on committing queued transactions after one
   * has failed; the condition makes every later batch a no-op instead, so the disk never holds a
   * batch without all those before it. (It also stops a second process writing the same store.)
   */
  private enqueue(batch: InflightBatch, writes: () => void): void {
    this.inflight.push(batch);
    let written: Promise<boolean>;
    try {
      written = this.meta.ifVersion(appliedKey, batch.id - 1, writes);
    } catch (error) {
      // Nothing was checked to fail here; if lmdb-js refuses anyway, the overlay is ahead of what
      // will ever be on disk, so the store must not take more writes.
      this.fail(error);
      throw this.failure;
    }
    // Settles, never rejects: a failure is recorded in `failure` for commit, flushed and close.
    this.lastWrite = written.then(
      (applied) => {
        if (applied) this.onCommitted(batch.id);
        else this.fail(new Error(`LMDB skipped batch ${batch.id}: the store no longer follows batch ${batch.id - 1} `
          + '(an earlier write failed, or another process writes this store)'));
      },
      (error: unknown) => this.fail(error),
    );
  }

  /** LMDB committed every batch up to `id` (transactions commit in order): drop their overlay entries. */
  private onCommitted(id: number): void {
    while (this.inflightHead < this.inflight.length) {
      const batch = this.inflight[this.inflightHead] as InflightBatch;
      if (batch.id > id) break;
      this.inflightHead++;
      for (const key of batch.keys) {
        if (this.pendingKeys.get(key)?.batchId === batch.id) this.pendingKeys.delete(key);
      }
      for (const clientId of batch.clientIds) {
        if (this.pendingSessions.get(clientId)?.batchId === batch.id) this.pendingSessions.delete(clientId);
      }
      if (batch.isReset && this.pendingResetId === batch.id) this.pendingResetId = null;
    }
    if (this.inflightHead > 1024 && this.inflightHead * 2 > this.inflight.length) {
      this.inflight = this.inflight.slice(this.inflightHead);
      this.inflightHead = 0;
    }
  }

  private fail(error: unknown): void {
    // lmdb-js reports the LMDB error itself through a second promise, one per failed transaction:
    // handle every one (an unhandled rejection would kill the process) and name the first cause.
    const commitError = (error as { commitError?: Promise<unknown> } | null)?.commitError;
    if (commitError !== undefined) {
      commitError.catch((cause: unknown) => {
        if (this.failure !== null && this.failureCause === null) {
          this.failureCause = cause instanceof Error ? cause.message : String(cause);
          this.failure.message += ` (${this.failureCause})`;
        }
      });
    }
    if (this.failure !== null) return;
    const detail = error instanceof Error ? error.message : String(error);
    this.failure = new Error(`Cannot write the key-value store at ${this.path}, so it takes no more batches `
      + `(batches after appliedSeq on disk are lost and the server must stop): ${detail}`, { cause: error });
    this.rejectFailed(this.failure);
  }

  private assertOpen(): void {
    if (this.closed) throw new Error(`The key-value store at ${this.path} is closed`);
  }

  private assertWritable(): void {
    this.assertOpen();
    if (this.failure !== null) throw this.failure;
  }
}

/**
 * Order of keys in the store: UTF-8 byte order, which is code point order. Differs from `<` on
 * strings only when one key has a character above U+FFFF where the other has one in U+E000–U+FFFF.
 */
/** A lone surrogate has no UTF-8 form (it would be stored as U+FFFD and collide with other keys). */
const loneSurrogate = /\p{Surrogate}/u;

/** The bytes of a key or clientId to write; the protocol must have refused any other. */
function encodeKey(key: string): Buffer {
  assert(!loneSurrogate.test(key), 'Keys and clientIds must be well-formed Unicode (no lone surrogates)');
  const bytes = Buffer.from(key, 'utf8');
  assert(bytes.length > 0, 'Keys and clientIds must not be empty');
  assert(bytes.length <= lmdbKeyBytesMax, `Keys and clientIds must have at most ${lmdbKeyBytesMax} UTF-8 bytes`);
  return bytes;
}

/** The bytes of a key or prefix to read; undefined for the empty string. */
function encodeKeyToRead(key: string): Buffer | undefined {
  assert(!loneSurrogate.test(key), 'Keys and prefixes must be well-formed Unicode (no lone surrogates)');
  return key.length === 0 ? undefined : Buffer.from(key, 'utf8');
}

/** The smallest byte string above every key that starts with `prefix`, or undefined if none. */
function prefixUpperBound(prefix: Buffer): Buffer | undefined {
  let end = prefix.length;
  while (end > 0 && prefix[end - 1] === 0xff) end--;
  if (end === 0) return undefined;
  const bound = Buffer.from(prefix.subarray(0, end));
  bound[end - 1] = (bound[end - 1] as number) + 1;
  return bound;
}

function writeUint53(target: Buffer, offset: number, value: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, `Cannot store ${value}: not a safe non-negative integer`);
  target.writeUInt32BE(Math.floor(value / 0x1_0000_0000), offset);
  target.writeUInt32BE(value >>> 0, offset + 4);
}

function readUint53(source: Buffer, offset: number): number {
  return source.readUInt32BE(offset) * 0x1_0000_0000 + source.readUInt32BE(offset + 4);
}

function encodeStored(stored: StoredValue): Buffer {
  const encoded = Buffer.allocUnsafe(versionBytes + stored.value.length);
  writeUint53(encoded, 0, stored.version);
  encoded.set(stored.value, versionBytes);
  return encoded;
}

/** A StoredValue whose value is a view into `encoded` (for the overlay only). */
function decodeStoredView(encoded: Buffer): StoredValue {
  return { value: encoded.subarray(versionBytes), version: readUint53(encoded, 0) };
}

/** A StoredValue with its own copy of the value, as a plain Uint8Array. */
function decodeStored(bytes: Buffer): StoredValue {
  assert(bytes.length >= versionBytes, 'A stored value is shorter than its version');
  const value = new Uint8Array(bytes.length - versionBytes);
  bytes.copy(value, 0, versionBytes);
  return { value, version: readUint53(bytes, 0) };
}

function copyStored(stored: StoredValue): StoredValue {
  return { value: new Uint8Array(stored.value), version: stored.version };
}

function decodeSession(bytes: Buffer): SessionRecord {
  return JSON.parse(bytes.toString('utf8')) as SessionRecord;
}

function encodeApplied(appliedSeq: Seq, appliedEpoch: Epoch): Buffer {
  const encoded = Buffer.alloc(2 * versionBytes);
  writeUint53(encoded, 0, appliedSeq);
  writeUint53(encoded, versionBytes, appliedEpoch);
  return encoded;
}

function decodeApplied(bytes: Buffer): { appliedSeq: Seq; appliedEpoch: Epoch } {
  return { appliedSeq: seq(readUint53(bytes, 0)), appliedEpoch: epoch(readUint53(bytes, versionBytes)) };
}
