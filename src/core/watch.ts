// The change stream's record (GET /v1/watch): which keys every applied entry changed, kept while
// the entry is in the log so that a stream can resume from any seq the log still holds. A log
// entry alone does not say what it changed — a conditional write or a transaction is decided at
// apply time against the state, and a retried request is absorbed — so the recorder sits between
// the state machine and its KvStore: when a batch of entries is about to be committed, it replays
// the batch through a second KvState that reads the state as it was before the batch (the same
// decisions, the same session table), and derives each entry's own changes from the replay's
// outcomes. The replay's net result must equal the batch the real state machine wrote; that is
// asserted.
//
// Changes carry positions: whole numbers that grow by one per change and never go back, so a
// stream is a cursor into the record. The record covers every applied entry with seq above
// `fromSeq`; it starts at the state's appliedSeq when the process starts (entries applied before
// are in the log, but what they changed is no longer known), forgets what the log compacted, and
// starts again (a new generation) whenever the state is replaced: a snapshot install, or a K = 0
// rebuild.

import { assert } from '../lib/assert.ts';
import type { Epoch, KeyValue, LogEntry, Operation, Seq } from '../protocol/types.ts';
import { seq } from '../protocol/types.ts';
import type { ApplyOutcome, KvBatch, KvSnapshotReader, KvStore, SessionRecord, StoredValue } from './kv.ts';
import { KvState } from './kv.ts';

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

/** A point of a stream: after every change of the seqs up to `seq`, or, with `index`, of seq `seq` up to that index. */
export interface ChangePosition {
  seq: number;
  /** Undefined: seq `seq` is complete. */
  index?: number | undefined;
}

/** What the recorder reads from the server core. */
export interface ChangeSource {
  /** The log entry at a seq, while the log holds it (the entries being applied always are). */
  entryAt(at: number): LogEntry | undefined;
  /** True while the state is being replaced by a snapshot: its commits are not entries. */
  readonly isInstallingSnapshot: boolean;
}

export interface ChangeRecorderLimits {
  /** The state machine's sessionsMax: the replay must remember and evict sessions as it does. */
  sessionsMax: number;
  /** Most changes kept; beyond it the oldest seqs are forgotten, as if compacted. */
  changesMax: number;
}

export class ChangeRecorder {
  /** The store to give the state machine (the server core): it records, then writes through. */
  readonly store: KvStore;
  private readonly inner: KvStore;
  private readonly limits: ChangeRecorderLimits;
  private source: ChangeSource | undefined;
  /** The replaying state machine, built at the first batch after a (re)start. */
  private replay: { state: KvState; view: ReplayView } | undefined;

  /** The kept changes are changes[head…], in (seq, index) order. */
  private changes: Change[] = [];
  private head = 0;
  /** Position of changes[head]. */
  private headPosition = 0;
  /**
   * Every change of an applied entry with seq in (fromSeq, throughSeq] is kept.
   * Invariant: fromSeq <= throughSeq; throughSeq is the state's appliedSeq.
   */
  private coveredFromSeq: Seq;
  private coveredThroughSeq: Seq;
  private generationCount = 0;

  constructor(store: KvStore, limits: ChangeRecorderLimits) {
    assert(limits.sessionsMax >= 1, 'sessionsMax must be at least 1');
    assert(limits.changesMax >= 1, 'changesMax must be at least 1');
    this.inner = store;
    this.limits = limits;
    this.coveredFromSeq = store.appliedSeq();
    this.coveredThroughSeq = store.appliedSeq();
    this.store = this.decorated();
  }

  /** Where the entries being applied are read; call once the core exists, before its first input. */
  attach(source: ChangeSource): void {
    assert(this.source === undefined, 'a recorder reads one core');
    this.source = source;
  }

  /** Changes of every applied entry with a seq above this are kept: the oldest fromSeq a stream may resume at. */
  get fromSeq(): Seq {
    return this.coveredFromSeq;
  }

  /** The last applied seq recorded (the state's appliedSeq). */
  get throughSeq(): Seq {
    return this.coveredThroughSeq;
  }

  /** Grows whenever the state is replaced; positions of an older generation are meaningless. */
  get generation(): number {
    return this.generationCount;
  }

  /** Position of the oldest kept change. */
  get startPosition(): number {
    return this.headPosition;
  }

  /** Position the next recorded change will have. */
  get endPosition(): number {
    return this.headPosition + this.changes.length - this.head;
  }

  /** The change at a position, or undefined if it is forgotten or not recorded yet. */
  changeAt(position: number): Change | undefined {
    if (position < this.headPosition) return undefined;
    return this.changes[this.head + position - this.headPosition];
  }

  /** The position of the first kept change after `after` (endPosition if there is none yet). */
  positionAfter(after: ChangePosition): number {
    let low = this.head;
    let high = this.changes.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (comparePositions(this.changes[middle] as Change, after) <= 0) low = middle + 1;
      else high = middle;
    }
    return this.headPosition + low - this.head;
  }

  /** Forget the changes of seqs up to `through` (the log no longer holds them). */
  forgetThrough(through: number): void {
    const limit = seq(Math.min(through, this.coveredThroughSeq));
    if (limit <= this.coveredFromSeq) return;
    this.coveredFromSeq = limit;
    while (this.head < this.changes.length && (this.changes[this.head] as Change).seq <= limit) {
      this.head++;
      this.headPosition++;
    }
    // Drop the forgotten prefix once it is most of the array, so trimming costs O(1) amortized.
    if (this.head > 1024 && this.head * 2 > this.changes.length) {
      this.changes = this.changes.slice(this.head);
      this.head = 0;
    }
  }

  // ---------------------------------------------------------------- recording

  /** Every method passes through but commit and reset (tsc flags a KvStore method added and not passed on). */
  private decorated(): KvStore {
    const inner = this.inner;
    return {
      get: (key) => inner.get(key),
      range: (prefix, limit) => inner.range(prefix, limit),
      appliedSeq: () => inner.appliedSeq(),
      appliedEpoch: () => inner.appliedEpoch(),
      loadSessions: () => inner.loadSessions(),
      snapshotReader: () => inner.snapshotReader(),
      snapshotSeq: () => inner.snapshotSeq(),
      commit: (batch) => this.commit(batch),
      reset: () => {
        inner.reset();
        this.restart();
      },
    };
  }

  private commit(batch: KvBatch): void {
    const source = this.source;
    if (source === undefined || source.isInstallingSnapshot) {
      // Snapshot chunks, and the commit that finishes an install, replace the state: no entry
      // was applied, and what changed since the last recorded seq is unknown.
      this.inner.commit(batch);
      this.restart();
      return;
    }
    const before = this.inner.appliedSeq();
    assert(before === this.coveredThroughSeq, `the recorder follows the state (recorded through ${this.coveredThroughSeq}, state at ${before})`);
    assert(batch.appliedSeq > before, 'a commit outside a snapshot install applies entries');
    const entries: LogEntry[] = [];
    for (let at = before + 1; at <= batch.appliedSeq; at++) {
      const entry = source.entryAt(at);
      assert(entry !== undefined, `the entry at seq ${at} being applied is in the log`);
      entries.push(entry);
    }
    const { changes, net } = this.replayEntries(entries);
    this.inner.commit(batch);
    assertSameChanges(net, batch.keys);
    this.replay?.view.follow(batch);
    for (const change of changes) this.changes.push(change);
    this.coveredThroughSeq = batch.appliedSeq;
    this.enforceChangesMax();
  }

  /**
   * What each entry changed, decided against the state before the batch by the replaying state
   * machine (its outcomes say which writes held, which transaction branch ran, which entries were
   * retries it absorbed), and the batch's net result.
   */
  private replayEntries(entries: readonly LogEntry[]): { changes: Change[]; net: Map<string, StoredValue | null> } {
    if (this.replay === undefined) {
      const view = new ReplayView(this.inner);
      this.replay = { view, state: new KvState(view, { sessionsMax: this.limits.sessionsMax }) };
    }
    const { view, state } = this.replay;
    const outcomes = state.apply(entries);
    assert(outcomes.length === entries.length, 'the replay answers every entry');
    // Whether a key exists, as the entries of this batch change it (before it: the real state).
    const exists = new Map<string, boolean>();
    const present = (key: string): boolean => exists.get(key) ?? this.inner.get(key) !== undefined;
    const changes: Change[] = [];
    entries.forEach((entry, i) => {
      const outcome = outcomes[i] as ApplyOutcome;
      if (outcome.duplicate) return;
      const write = entry.write;
      const operations: readonly Operation[] = write.type === 'put' || write.type === 'delete'
        ? (outcome.result.status === 'ok' ? [write] : [])
        : write.type === 'txn' ? (outcome.result.status === 'txn' && outcome.result.succeeded ? write.success : write.failure) : [];
      // The entry's net change per key, in the order keys were first written (as the state machine
      // batches them): a transaction that writes a key twice changes it once.
      const final = new Map<string, Uint8Array | null>();
      for (const operation of operations) final.set(operation.key, operation.type === 'put' ? operation.value : null);
      const merged: { type: 'put' | 'delete'; key: string; value?: Uint8Array }[] = [];
      for (const [key, value] of final) {
        if (value !== null) merged.push({ type: 'put', key, value });
        // A delete of an absent key changes nothing a reader can see.
        else if (present(key)) merged.push({ type: 'delete', key });
      }
      for (const [key, value] of final) exists.set(key, value !== null);
      merged.forEach((change, index) => {
        const recorded: Change = {
          seq: entry.seq, epoch: entry.epoch, index, last: index === merged.length - 1, type: change.type, key: change.key, version: entry.seq,
        };
        if (change.value !== undefined) recorded.value = change.value;
        changes.push(recorded);
      });
    });
    return { changes, net: view.takeBatch() };
  }

  /** The state was replaced: start a new record at its appliedSeq. */
  private restart(): void {
    this.headPosition = this.endPosition;
    this.changes = [];
    this.head = 0;
    this.coveredFromSeq = this.inner.appliedSeq();
    this.coveredThroughSeq = this.inner.appliedSeq();
    this.replay = undefined;
    this.generationCount++;
  }

  private enforceChangesMax(): void {
    const kept = this.changes.length - this.head;
    if (kept <= this.limits.changesMax) return;
    // Forget whole seqs, so that fromSeq stays "every change above it is kept".
    const oldest = this.changes[this.head + kept - this.limits.changesMax - 1] as Change;
    this.forgetThrough(oldest.seq);
  }
}

/** Orders two stream positions; a complete seq comes after every change of that seq. */
export function comparePositions(a: ChangePosition, b: ChangePosition): number {
  if (a.seq !== b.seq) return a.seq - b.seq;
  const aIndex = a.index ?? Number.POSITIVE_INFINITY;
  const bIndex = b.index ?? Number.POSITIVE_INFINITY;
  return aIndex === bIndex ? 0 : aIndex < bIndex ? -1 : 1;
}

/**
 * The replaying state machine's store: it reads the real state, which is still as it was before
 * the batch (KvState reads the batch's own earlier changes from the batch), and keeps the batch it
 * commits for the comparison with the real one.
 */
class ReplayView implements KvStore {
  private readonly real: KvStore;
  private batch: Map<string, StoredValue | null> | undefined;
  private applied: Seq;
  private appliedAtEpoch: Epoch;

  constructor(real: KvStore) {
    this.real = real;
    this.applied = real.appliedSeq();
    this.appliedAtEpoch = real.appliedEpoch();
  }

  /** The keys the last batch changed (taken once). */
  takeBatch(): Map<string, StoredValue | null> {
    const batch = this.batch;
    assert(batch !== undefined, 'the replay committed a batch');
    this.batch = undefined;
    return batch;
  }

  /** The real state committed the batch too. */
  follow(batch: KvBatch): void {
    assert(this.applied === batch.appliedSeq, 'the replay applied what the state machine applied');
  }

  get(key: string): StoredValue | undefined {
    return this.real.get(key);
  }

  commit(batch: KvBatch): void {
    this.batch = batch.keys;
    this.applied = batch.appliedSeq;
    this.appliedAtEpoch = batch.appliedEpoch;
  }

  appliedSeq(): Seq {
    return this.applied;
  }

  appliedEpoch(): Epoch {
    return this.appliedAtEpoch;
  }

  // KvState's constructor reads these once, before any batch.
  range(prefix: string, limit: number): KeyValue[] {
    return this.real.range(prefix, limit);
  }

  loadSessions(): SessionRecord[] {
    return this.real.loadSessions();
  }

  reset(): void {
    assert(false, 'the replay never resets the state: a reset restarts the recorder');
  }

  snapshotReader(): KvSnapshotReader {
    assert(false, 'the replay is never snapshotted');
  }

  snapshotSeq(): Seq {
    assert(false, 'the replay is never snapshotted');
  }
}

function assertSameChanges(replayed: Map<string, StoredValue | null>, written: Map<string, StoredValue | null>): void {
  assert(replayed.size === written.size, `the replay changed ${replayed.size} keys, the state machine ${written.size}`);
  for (const [key, stored] of written) {
    const mine = replayed.get(key);
    assert(mine !== undefined, `the replay did not change key ${JSON.stringify(key)}`);
    assert((mine === null) === (stored === null), `the replay and the state machine disagree on deleting ${JSON.stringify(key)}`);
    if (mine !== null && stored !== null) assert(mine.version === stored.version, `the replay and the state machine disagree on the version of ${JSON.stringify(key)}`);
  }
}
