// The key-value state of a real server, on disk in LMDB (through lmdb-js): user keys, client-session
// records and the state's position in the log (appliedSeq, appliedEpoch), each batch of KvState in
// one LMDB transaction, so a restart finds the state at a batch boundary and replays only the log
// tail after appliedSeq (SPEC.md section 6).
//
// Writes are asynchronous: `commit` queues the batch and returns; it never waits for the disk.
// Batches gather for up to `commitDelayMs` (1 s by default; --state-commit-delay-ms) and go to
// lmdb-js's write thread together, as one transaction (group commit: one data-file sync per
// transaction, not per batch; the log makes writes durable, so the delay costs no safety).
// `flushed()` and `committed()` send what is gathered at once. Until its transaction has
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
// Snapshots: `openSnapshot` reads the state as LMDB's last committed transaction holds it, in one
// read transaction, so keys, sessions, appliedSeq and appliedEpoch agree; batches still in the
// overlay are not part of it (the snapshot's seq is the appliedSeq it shows). `openSnapshotOfApplied`
// first waits for the batches committed so far to reach LMDB, so its snapshot holds everything
// applied when it was called (what a backup promises: every write acknowledged before it started).
// A snapshot held open for long keeps LMDB from reusing the pages freed meanwhile, so the file
// grows while it is open.
// `installSnapshot` replaces the whole state by a snapshot's, a chunk per transaction: the first
// clears everything and marks the store `installing` durably, the last sets appliedSeq and removes
// the mark, so a crash in between is noticed at the next open, which empties the store (appliedSeq
// 0) instead of serving half a snapshot (`installInterrupted` tells the server).
//
// Layout: three LMDB sub-databases, so user keys never collide with metadata:
// - `keys`: UTF-8 key bytes → 8-byte big-endian version (the seq of the key's last change) + value;
// - `sessions`: UTF-8 clientId → the SessionRecord as JSON;
// - `meta` (with lmdb-js entry versions): `format` → the layout's name; `applied` → appliedSeq and
//   appliedEpoch (8 bytes each), its entry version the id of the batch that wrote it; `installing`
//   → present only while a snapshot is being installed.
// Keys are raw UTF-8 bytes compared with memcmp, so `range` returns keys in UTF-8 byte order, which
// is code point order (JavaScript's `<` compares UTF-16 code units and differs for characters above
// U+FFFF versus U+E000–U+FFFF); `compareKeys` gives the same order for strings.

import { compareKeys } from '../lib/keys.ts';
import { open } from 'lmdb';
import type { Database, RootDatabase, Transaction } from 'lmdb';

import { assert } from '../lib/assert.ts';
import { copyBytes } from '../lib/bytes.ts';
import type { KvBatch, KvSnapshotReader, KvStore, SessionRecord, SnapshotChunk, StoredValue } from '../core/kv.ts';
import { snapshotItemBytes } from '../core/kv.ts';
import type { Epoch, KeyValue, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import type { KvSnapshot, SnapshotPosition } from './snapshot.ts';

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
const installingKey = Buffer.from('installing');
/** Most install transactions queued for LMDB before installSnapshot waits for them to commit. */
const installBatchesInflightMax = 8;

export interface LmdbStoreOptions {
  /** Initial size of the memory map; lmdb-js grows it as the data grows. */
  mapSizeBytes?: number;
  /**
   * How long queued batches wait for more before their LMDB transaction starts (default 1000 ms).
   * Every transaction costs a data-file sync; the log, not LMDB, makes a write durable, so grouping
   * many batches per transaction costs no safety, only overlay memory for that long.
   */
  commitDelayMs?: number;
}

/** See LmdbStoreOptions.commitDelayMs. */
export const defaultCommitDelayMs = 1000;

/** A batch handed to LMDB whose transaction has not committed yet, with what it wrote. */
interface InflightBatch {
  id: number;
  /** The appliedSeq this batch writes. */
  appliedSeq: Seq;
  keys: string[];
  clientIds: string[];
  isReset: boolean;
}

interface PendingKey {
  /** The last batch that wrote this key. */
  batchId: number;
  /** The key as LMDB will hold it (UTF-8), made when the batch is committed, not in the transaction. */
  keyBytes: Buffer;
  /** The key's new StoredValue as LMDB will hold it (encodeStored); null: deleted. */
  encoded: Buffer | null;
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
    let installInterrupted = false;
    if (meta.getBinary(installingKey) !== undefined) {
      // Half a snapshot is no state at all: start empty, before the first entry.
      installInterrupted = true;
      const version = meta.getEntry(appliedKey)?.version ?? 0;
      await root.transaction(() => {
        void keys.clearAsync();
        void sessions.clearAsync();
        void meta.remove(installingKey);
        void meta.put(appliedKey, encodeApplied(seq(0), epoch(0)), version + 1);
      });
      await root.flushed;
    }
    const applied = meta.getEntry(appliedKey);
    assert(applied !== undefined && applied.value.length === 2 * versionBytes && applied.version !== undefined,
      `The key-value store at ${path} has no valid applied position`);
    const store = new LmdbKvStore(path, root, keys, sessions, meta, { ...decodeApplied(applied.value), batchId: applied.version }, options.commitDelayMs ?? defaultCommitDelayMs);
    store.installInterrupted = installInterrupted;
    return store;
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
  /** The appliedSeq of the last batch LMDB committed: what a snapshot opened now shows. */
  private committedApplied: Seq;
  private appliedAtEpoch: Epoch;
  /** Settles when the last batch handed to lmdb-js has committed or failed, for `flushed`. */
  private lastWrite: Promise<void> = Promise.resolve();
  /** Batches waiting (commitDelayMs at most) to be handed to lmdb-js together, and their ids. */
  private queued: (() => void)[] = [];
  /** Newest write of each key by the batches queued since the last special write (see takeCoalesced). */
  private queuedKeys = new Map<string, PendingKey>();
  /** The same for session records (null: removed). */
  private queuedSessions = new Map<string, SessionRecord | null>();
  /** The applied record of the last of those batches. */
  private queuedApplied: { id: number; appliedSeq: Seq; appliedEpoch: Epoch } | null = null;
  private queuedFirstId: number | null = null;
  private queuedLastId = 0;
  private queueTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly commitDelayMs: number;
  /** Set when LMDB failed to write: the store then refuses commits and `flushed` rejects. */
  private failure: Error | null = null;
  /** LMDB's own message for the first failed transaction, once lmdb-js has reported it. */
  private failureCause: string | null = null;
  private readonly failed: Promise<never>;
  private rejectFailed: (error: Error) => void = () => {};
  private closed = false;
  /** A snapshot install is under way: reads and commits are refused until it finishes or is abandoned. */
  private installing = false;
  /** Snapshots not yet closed; closing the store closes them. */
  private readonly openSnapshots = new Set<LmdbSnapshot>();
  /** The last open found a snapshot install cut short, and emptied the store (appliedSeq 0). */
  installInterrupted = false;

  /** Use `openLmdbStore`. */
  constructor(
    readonly path: string,
    private readonly root: RootDatabase<Buffer, Buffer>,
    private readonly keys: Database<Buffer, Buffer>,
    private readonly sessions: Database<Buffer, Buffer>,
    private readonly meta: Database<Buffer, Buffer>,
    applied: { appliedSeq: Seq; appliedEpoch: Epoch; batchId: number },
    commitDelayMs: number,
  ) {
    assert(commitDelayMs >= 0, 'commitDelayMs must not be negative');
    this.commitDelayMs = commitDelayMs;
    this.lastBatchId = applied.batchId;
    this.applied = applied.appliedSeq;
    this.committedApplied = applied.appliedSeq;
    this.appliedAtEpoch = applied.appliedEpoch;
    this.failed = new Promise<never>((_resolve, reject) => {
      this.rejectFailed = reject;
    });
    // Nobody may be waiting when a write fails; the failure is reported by commit and flushed.
    this.failed.catch(() => {});
  }

  get(key: string): StoredValue | undefined {
    this.assertReadable();
    const pending = this.pendingKeys.get(key);
    if (pending !== undefined) return pending.encoded === null ? undefined : decodeStored(pending.encoded);
    if (this.pendingResetId !== null) return undefined;
    const keyBytes = encodeKeyToRead(key);
    // The empty key and keys longer than the limit cannot have been written.
    if (keyBytes === undefined || keyBytes.length > lmdbKeyBytesMax) return undefined;
    const bytes = this.keys.getBinaryFast(keyBytes);
    return bytes === undefined ? undefined : decodeStored(bytes);
  }

  range(prefix: string, limit: number): KeyValue[] {
    this.assertReadable();
    const result: KeyValue[] = [];
    if (limit <= 0) return result;
    const prefixBytes = encodeKeyToRead(prefix);
    // A prefix longer than any key matches none.
    if (prefixBytes !== undefined && prefixBytes.length > lmdbKeyBytesMax) return result;
    // The overlay is small (batches in flight), so scanning it whole is cheaper than indexing it.
    const overlay: [string, Buffer | null][] = [];
    for (const [key, pending] of this.pendingKeys) {
      if (key.startsWith(prefix)) overlay.push([key, pending.encoded]);
    }
    overlay.sort(([a], [b]) => compareKeys(a, b));
    let next = 0;
    /** Take overlay entries ordered before `key` (all of them if undefined). */
    const takeOverlayBefore = (key: string | undefined): void => {
      while (next < overlay.length && result.length < limit) {
        const [pendingKey, encoded] = overlay[next] as [string, Buffer | null];
        if (key !== undefined && compareKeys(pendingKey, key) >= 0) return;
        next++;
        if (encoded !== null) result.push({ key: pendingKey, ...decodeStored(encoded) });
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
    this.assertReadable();
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
    const keys: string[] = [];
    const keyBytes: Buffer[] = [];
    const encodedValues: (Buffer | null)[] = [];
    for (const [key, stored] of batch.keys) {
      keys.push(key);
      keyBytes.push(encodeKey(key));
      encodedValues.push(stored === null ? null : encodeStored(stored));
    }
    const sessionWrites: { clientId: string; record: SessionRecord | null }[] = [];
    for (const [clientId, record] of batch.sessions) {
      assert(record === null || record.clientId === clientId, 'A session record must be filed under its clientId');
      checkKey(clientId);
      sessionWrites.push({ clientId, record });
    }

    const id = ++this.lastBatchId;
    for (let i = 0; i < keys.length; i++) {
      // One small object per key waiting for LMDB (reads decode a copy of the value): the overlay
      // holds a second of writes, and every object in it lives long enough to cost the GC. The
      // key's bytes are made here, batch by batch: made in the transaction, for every key of a
      // second at once, they stalled the event loop for 15–20 ms a second.
      const key = keys[i] as string;
      const pending: PendingKey = { batchId: id, keyBytes: keyBytes[i] as Buffer, encoded: encodedValues[i] as Buffer | null };
      this.pendingKeys.set(key, pending);
      this.queuedKeys.set(key, pending);
    }
    for (const write of sessionWrites) {
      this.pendingSessions.set(write.clientId, { batchId: id, record: write.record });
      this.queuedSessions.set(write.clientId, write.record);
    }
    this.applied = batch.appliedSeq;
    this.appliedAtEpoch = batch.appliedEpoch;
    this.queuedApplied = { id, appliedSeq: batch.appliedSeq, appliedEpoch: batch.appliedEpoch };

    // The batch's writes land in one LMDB transaction, possibly with other whole batches, so every
    // recovery is at a batch boundary. Batches queued together write each key and session once,
    // with its newest state (queuedKeys), and the last batch's applied record.
    this.enqueue({ id, appliedSeq: batch.appliedSeq, keys, clientIds: sessionWrites.map((write) => write.clientId), isReset: false }, null);
  }

  /**
   * The coalesced writes of the batches queued since the last special write (a reset, a snapshot
   * chunk) as one closure, in their place in the queue, so that writes stay in batch order.
   */
  private takeCoalesced(): void {
    const applied = this.queuedApplied;
    if (applied === null) return;
    const keys = this.queuedKeys;
    const sessions = this.queuedSessions;
    this.queuedKeys = new Map();
    this.queuedSessions = new Map();
    this.queuedApplied = null;
    this.queued.push(() => {
      // commit checked every key and clientId already.
      for (const { keyBytes, encoded } of keys.values()) {
        if (encoded === null) void this.keys.remove(keyBytes);
        else void this.keys.put(keyBytes, encoded);
      }
      for (const [clientId, record] of sessions) {
        if (record === null) void this.sessions.remove(Buffer.from(clientId, 'utf8'));
        else void this.sessions.put(Buffer.from(clientId, 'utf8'), Buffer.from(JSON.stringify(record), 'utf8'));
      }
      void this.meta.put(appliedKey, encodeApplied(applied.appliedSeq, applied.appliedEpoch), applied.id);
    });
  }

  reset(): void {
    this.assertWritable();
    assert(!this.installing, 'The key-value store is installing a snapshot');
    this.enqueueReset(false);
  }

  /** Queues the removal of every key and session, appliedSeq 0, and sets or removes the install mark. */
  private enqueueReset(installing: boolean): void {
    const id = ++this.lastBatchId;
    // Older overlay entries are obsolete: the reset comes after them.
    this.pendingKeys.clear();
    this.pendingSessions.clear();
    this.pendingResetId = id;
    this.applied = seq(0);
    this.appliedAtEpoch = epoch(0);
    this.enqueue({ id, appliedSeq: seq(0), keys: [], clientIds: [], isReset: true }, () => {
      void this.keys.clearAsync();
      void this.sessions.clearAsync();
      if (installing) void this.meta.put(installingKey, Buffer.from('1'), id);
      else void this.meta.remove(installingKey);
      void this.meta.put(appliedKey, encodeApplied(seq(0), epoch(0)), id);
    });
  }

  /**
   * Resolves once every batch committed to the store so far has committed in LMDB (visible to a
   * new read transaction, not necessarily synced); rejects if LMDB failed to write.
   */
  async committed(): Promise<void> {
    this.startWrite();
    await this.lastWrite;
    if (this.failure !== null) throw this.failure;
  }

  // ---------------------------------------------------------------- snapshots

  /**
   * At most the appliedSeq a snapshot opened now would show: the last batch whose LMDB commit
   * has been reported (LMDB may be slightly ahead of the report, never behind it).
   */
  snapshotSeq(): Seq {
    return this.committedApplied;
  }

  /** The core's view of a snapshot (KvStore): see openSnapshot. */
  snapshotReader(): KvSnapshotReader {
    return this.openSnapshot();
  }

  /**
   * A consistent view of the state as LMDB's last committed transaction holds it (batches still
   * in the overlay are not part of it): its seq and epoch are the appliedSeq and appliedEpoch of
   * that transaction. Close it when done; it pins the pages it reads.
   */
  openSnapshot(): KvSnapshot {
    this.assertReadable();
    const transaction = this.root.useReadTransaction();
    try {
      const applied = this.meta.get(appliedKey, { transaction });
      assert(applied !== undefined && applied.length === 2 * versionBytes, `The key-value store at ${this.path} has no valid applied position`);
      const position = decodeApplied(applied);
      const snapshot = new LmdbSnapshot(this.keys, this.sessions, transaction, { seq: position.appliedSeq, epoch: position.appliedEpoch },
        (closed) => this.openSnapshots.delete(closed));
      this.openSnapshots.add(snapshot);
      return snapshot;
    } catch (error) {
      transaction.done();
      throw error;
    }
  }

  /**
   * A snapshot (see openSnapshot) that holds every batch committed to the store before the call:
   * it waits until they have reached LMDB, so its seq is at least the appliedSeq at the call. The
   * overlay alone cannot serve a snapshot (it holds only the latest changes), hence the wait.
   */
  async openSnapshotOfApplied(): Promise<KvSnapshot> {
    await this.committed();
    return this.openSnapshot();
  }

  /**
   * Replaces the whole state by a snapshot's: the chunks (every key, in strictly increasing key
   * order, before any session; sessions in clientId order) and its position. Reads and commits
   * are refused meanwhile. Resolves once the new state is durable; if `source` fails, the store is
   * left empty at appliedSeq 0 and the error is rethrown. Returns how many keys and sessions it
   * installed. (The core installs a snapshot its own way, through KvState and commit.)
   */
  async installSnapshot(source: AsyncIterable<SnapshotChunk> | Iterable<SnapshotChunk>, position: SnapshotPosition): Promise<{ keys: number; sessions: number }> {
    this.assertWritable();
    assert(!this.installing, 'A snapshot install is already under way');
    assert(Number.isSafeInteger(position.seq) && position.seq >= 0, `a snapshot's seq is a seq, not ${position.seq}`);
    assert(position.seq > 0 || position.epoch === 0, 'a snapshot at seq 0 has epoch 0');
    this.installing = true;
    const counts = { keys: 0, sessions: 0 };
    let lastKey: Buffer | undefined;
    let lastClientId: Buffer | undefined;
    let sessionsStarted = false;
    try {
      this.enqueueReset(true);
      for await (const chunk of source) {
        const keyWrites: [Buffer, Buffer][] = [];
        const sessionWrites: [Buffer, Buffer][] = [];
        if (chunk.items.length > 0) {
          assert(!sessionsStarted, 'A snapshot has every key before the first session');
          for (const item of chunk.items) {
            const keyBytes = encodeKey(item.key);
            // Tested before asserting, so the messages are only built for a bad snapshot.
            if (!(lastKey === undefined || Buffer.compare(lastKey, keyBytes) < 0)) {
              assert(false, `A snapshot's keys are in strictly increasing order: ${JSON.stringify(item.key)} is not`);
            }
            if (!(Number.isSafeInteger(item.version) && item.version >= 1 && item.version <= position.seq)) {
              assert(false, `The version of ${JSON.stringify(item.key)} is not within the snapshot`);
            }
            lastKey = keyBytes;
            keyWrites.push([keyBytes, encodeStored(item)]);
          }
          counts.keys += keyWrites.length;
        }
        if (chunk.sessions.length > 0) {
          sessionsStarted = true;
          for (const record of chunk.sessions) {
            const keyBytes = encodeKey(record.clientId);
            if (!(lastClientId === undefined || Buffer.compare(lastClientId, keyBytes) < 0)) {
              assert(false, `A snapshot's sessions are in strictly increasing clientId order: ${JSON.stringify(record.clientId)} is not`);
            }
            lastClientId = keyBytes;
            sessionWrites.push([keyBytes, Buffer.from(JSON.stringify(record), 'utf8')]);
          }
          counts.sessions += sessionWrites.length;
        }
        const id = ++this.lastBatchId;
        // Until the last transaction, appliedSeq stays 0: the mark says the state is partial.
        this.enqueue({ id, appliedSeq: seq(0), keys: [], clientIds: [], isReset: false }, () => {
          for (const [key, value] of keyWrites) void this.keys.put(key, value);
          for (const [key, value] of sessionWrites) void this.sessions.put(key, value);
          void this.meta.put(appliedKey, encodeApplied(seq(0), epoch(0)), id);
        });
        if (this.pendingBatchCount >= installBatchesInflightMax) await this.committed();
      }
      const id = ++this.lastBatchId;
      const applied = encodeApplied(position.seq, position.epoch);
      this.enqueue({ id, appliedSeq: position.seq, keys: [], clientIds: [], isReset: false }, () => {
        void this.meta.remove(installingKey);
        void this.meta.put(appliedKey, applied, id);
      });
      this.applied = position.seq;
      this.appliedAtEpoch = position.epoch;
      await this.flushed();
    } catch (error) {
      if (this.failure === null) {
        // Leave a well-defined state: empty, before the first entry. If even that cannot be
        // written, the store has failed, which its next use reports; the cause here is `error`.
        this.enqueueReset(false);
        await this.flushed().catch(() => {});
      }
      throw error;
    } finally {
      this.installing = false;
    }
    return counts;
  }

  /**
   * Resolves when everything committed so far is durable on disk; rejects if LMDB failed to write
   * (then the store is unusable and the server must stop).
   */
  async flushed(): Promise<void> {
    // The commit of the last batch first, then the fsync that follows it. lmdb-js's `flushed`
    // never settles after a failed transaction, hence the race with `failed`.
    this.startWrite();
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
    for (const snapshot of [...this.openSnapshots]) snapshot.close();
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
  private enqueue(batch: InflightBatch, writes: (() => void) | null): void {
    this.inflight.push(batch);
    if (writes !== null) {
      this.takeCoalesced();
      this.queued.push(writes);
    }
    this.queuedFirstId ??= batch.id;
    this.queuedLastId = batch.id;
    if (this.commitDelayMs === 0) this.startWrite();
    else this.queueTimer ??= setTimeout(() => this.startWrite(), this.commitDelayMs);
  }

  /**
   * Hand every queued batch to lmdb-js as one conditional write (one transaction, so one data-file
   * sync for all of them), applied only if LMDB's `applied` record is still the batch before the
   * first of them.
   */
  private startWrite(): void {
    if (this.queueTimer !== null) clearTimeout(this.queueTimer);
    this.queueTimer = null;
    this.takeCoalesced();
    const group = this.queued;
    const firstId = this.queuedFirstId;
    const lastId = this.queuedLastId;
    this.queued = [];
    this.queuedFirstId = null;
    if (group.length === 0 || firstId === null || this.failure !== null) return;
    let written: Promise<boolean>;
    try {
      written = this.meta.ifVersion(appliedKey, firstId - 1, () => {
        for (const writes of group) writes();
      });
    } catch (error) {
      // Nothing was checked to fail here; if lmdb-js refuses anyway, the overlay is ahead of what
      // will ever be on disk, so the store must not take more writes.
      this.fail(error);
      return;
    }
    // Settles, never rejects: a failure is recorded in `failure` for commit, flushed and close.
    this.lastWrite = written.then(
      (applied) => {
        if (applied) this.onCommitted(lastId);
        else this.fail(new Error(`LMDB skipped batches ${firstId}–${lastId}: the store no longer follows batch ${firstId - 1} `
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
      this.committedApplied = batch.appliedSeq;
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

  /** Reads of the state: refused while a snapshot install has it half written. */
  private assertReadable(): void {
    this.assertOpen();
    assert(!this.installing, `The key-value store at ${this.path} is installing a snapshot: it cannot be read until the install finishes`);
  }

  private assertWritable(): void {
    this.assertOpen();
    assert(!this.installing, `The key-value store at ${this.path} is installing a snapshot: it takes no other write until the install finishes`);
    if (this.failure !== null) throw this.failure;
  }
}

/**
 * A snapshot of an LmdbKvStore: one LMDB read transaction. Each chunk is read by a range of its
 * own (from just after the previous chunk's last key), so no cursor stays open between chunks and
 * a consumer may take as long as it likes between them.
 */
class LmdbSnapshot implements KvSnapshot {
  readonly seq: Seq;
  readonly epoch: Epoch;
  private closed = false;
  /** Where next() stands: the database it reads and the last key it returned. */
  private cursor: { phase: 'keys' | 'sessions' | 'done'; after: Buffer | undefined } = { phase: 'keys', after: undefined };

  constructor(
    private readonly keys: Database<Buffer, Buffer>,
    private readonly sessions: Database<Buffer, Buffer>,
    private readonly transaction: Transaction,
    position: SnapshotPosition,
    private readonly onClose: (snapshot: LmdbSnapshot) => void,
  ) {
    this.seq = position.seq;
    this.epoch = position.epoch;
  }

  private counts: { keys: number; sessions: number } | undefined;

  /**
   * Keys in the view. Counted on first use, which walks the whole database (lmdb-js counts by
   * iterating): a backup wants it for its header, a standby's catch-up does not.
   */
  get keyCount(): number {
    return this.count().keys;
  }

  get sessionCount(): number {
    return this.count().sessions;
  }

  private count(): { keys: number; sessions: number } {
    this.counts ??= { keys: this.keys.getCount({ transaction: this.transaction }), sessions: this.sessions.getCount({ transaction: this.transaction }) };
    return this.counts;
  }

  *chunks(maxBytes: number): Generator<SnapshotChunk> {
    assert(Number.isSafeInteger(maxBytes) && maxBytes >= 1, 'maxBytes must be a positive integer');
    for (let after: Buffer | undefined, more = true; more;) {
      const chunk = this.readKeys(after, Infinity, maxBytes);
      ({ after, more } = chunk);
      if (chunk.items.length > 0) yield { items: chunk.items, sessions: [] };
    }
    for (let after: Buffer | undefined, more = true; more;) {
      const chunk = this.readSessions(after, Infinity, maxBytes);
      ({ after, more } = chunk);
      if (chunk.items.length > 0) yield { items: [], sessions: chunk.items };
    }
  }

  /** The next chunk of at most maxItems keys and about maxBytes, then of sessions; undefined at the end. */
  next(maxItems: number, maxBytes: number): SnapshotChunk | undefined {
    assert(Number.isSafeInteger(maxItems) && maxItems >= 1, 'maxItems must be a positive integer');
    assert(maxBytes >= 1, 'maxBytes must be positive');
    while (this.cursor.phase !== 'done') {
      if (this.cursor.phase === 'keys') {
        const chunk = this.readKeys(this.cursor.after, maxItems, maxBytes);
        this.cursor = chunk.more ? { phase: 'keys', after: chunk.after } : { phase: 'sessions', after: undefined };
        if (chunk.items.length > 0) return { items: chunk.items, sessions: [] };
      } else {
        const chunk = this.readSessions(this.cursor.after, maxItems, maxBytes);
        this.cursor = chunk.more ? { phase: 'sessions', after: chunk.after } : { phase: 'done', after: undefined };
        if (chunk.items.length > 0) return { items: [], sessions: chunk.items };
      }
    }
    return undefined;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.transaction.done();
    this.onClose(this);
  }

  private readKeys(after: Buffer | undefined, maxItems: number, maxBytes: number): { items: KeyValue[]; after: Buffer | undefined; more: boolean } {
    // lmdb-js hands out each value of a range as a fresh copy, so a view into it is the item's own.
    return this.read(this.keys, after, maxItems, maxBytes, (key, value) => {
      assert(value.length >= versionBytes, 'A stored value is shorter than its version');
      return { key: key.toString('utf8'), value: new Uint8Array(value.buffer, value.byteOffset + versionBytes, value.length - versionBytes), version: readUint53(value, 0) };
    },
      (key, value) => snapshotItemBytes(key.length, value.length - versionBytes));
  }

  private readSessions(after: Buffer | undefined, maxItems: number, maxBytes: number): { items: SessionRecord[]; after: Buffer | undefined; more: boolean } {
    return this.read(this.sessions, after, maxItems, maxBytes, (_key, value) => decodeSession(value), (key, value) => key.length + value.length);
  }

  /** Up to maxItems items or maxBytes after `after`; `more` is false once the database has no more. */
  private read<T>(database: Database<Buffer, Buffer>, after: Buffer | undefined, maxItems: number, maxBytes: number,
    decode: (key: Buffer, value: Buffer) => T, measure: (key: Buffer, value: Buffer) => number): { items: T[]; after: Buffer | undefined; more: boolean } {
    assert(!this.closed, 'The snapshot is closed');
    const items: T[] = [];
    let bytes = 0;
    for (const entry of database.getRange({ transaction: this.transaction, ...(after === undefined ? {} : { start: after, exclusiveStart: true }) })) {
      items.push(decode(entry.key, entry.value));
      bytes += measure(entry.key, entry.value);
      // Leaving the loop closes the range's cursor; the key is copied, the range may reuse its buffer.
      if (bytes >= maxBytes || items.length >= maxItems) return { items, after: Buffer.from(entry.key), more: true };
    }
    return { items, after: undefined, more: false };
  }
}

/**
 * Creates the store of a data directory from a snapshot (a restore): `path` must not hold a store
 * with data yet. Resolves once it is durable and closed, with how many keys and sessions it holds.
 */
export async function writeRestoredStore(path: string, source: AsyncIterable<SnapshotChunk> | Iterable<SnapshotChunk>,
  position: SnapshotPosition, options: LmdbStoreOptions = {}): Promise<{ keys: number; sessions: number }> {
  const store = await openLmdbStore(path, options);
  try {
    assert(store.appliedSeq() === 0 && store.range('', 1).length === 0 && store.loadSessions().length === 0,
      `Cannot restore into ${path}: it already holds a key-value store with data`);
    return await store.installSnapshot(source, position);
  } finally {
    await store.close();
  }
}

/**
 * Throws unless `key` can be an LMDB key (checked before a batch changes anything). A lone
 * surrogate has no UTF-8 form (it would be stored as U+FFFD and collide with other keys).
 */
function checkKey(key: string): void {
  checkKeyBytes(key, Buffer.byteLength(key, 'utf8'));
}

/** The bytes of a key or clientId to write; the protocol must have refused any other. */
function encodeKey(key: string): Buffer {
  const bytes = Buffer.from(key, 'utf8');
  checkKeyBytes(key, bytes.length);
  return bytes;
}

function checkKeyBytes(key: string, utf8Bytes: number): void {
  assert(key.isWellFormed(), 'Keys and clientIds must be well-formed Unicode (no lone surrogates)');
  assert(utf8Bytes > 0, 'Keys and clientIds must not be empty');
  assert(utf8Bytes <= lmdbKeyBytesMax, `Keys and clientIds must have at most ${lmdbKeyBytesMax} UTF-8 bytes`);
}

/** The bytes of a key or prefix to read; undefined for the empty string. */
function encodeKeyToRead(key: string): Buffer | undefined {
  assert(key.isWellFormed(), 'Keys and prefixes must be well-formed Unicode (no lone surrogates)');
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

/** A StoredValue with its own copy of the value, as a plain Uint8Array (cut from a shared slab when small). */
function decodeStored(bytes: Buffer): StoredValue {
  assert(bytes.length >= versionBytes, 'A stored value is shorter than its version');
  return { value: copyBytes(bytes.subarray(versionBytes)), version: readUint53(bytes, 0) };
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
