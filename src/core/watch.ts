// The change stream's record (GET /v1/watch): which keys every applied entry changed, kept while
// the entry is in the log so that a stream can resume from any seq the log still holds. A log
// entry alone does not say what it changed — a conditional write or a transaction is decided at
// apply time against the state, and a retried request is absorbed — so the state machine reports
// it: KvState.apply hands every batch to the store with the changes it decided (KvBatch.changes).
// The recorder sits between the state machine and its KvStore and keeps those changes.
//
// Changes carry positions: whole numbers that grow by one per change and never go back, so a
// stream is a cursor into the record. The record covers every applied entry with seq above
// `fromSeq`; it starts at the state's appliedSeq when the process starts (entries applied before
// are in the log, but what they changed is no longer known), forgets what the log compacted, and
// starts again (a new generation) whenever the state is replaced: a snapshot install, or a K = 0
// rebuild.

import { assert } from '../lib/assert.ts';
import type { Seq } from '../protocol/types.ts';
import { seq } from '../protocol/types.ts';
import type { Change, KvBatch, KvStore } from './kv.ts';

export type { Change } from './kv.ts';

/** A point of a stream: after every change of the seqs up to `seq`, or, with `index`, of seq `seq` up to that index. */
export interface ChangePosition {
  seq: number;
  /** Undefined: seq `seq` is complete. */
  index?: number | undefined;
}

export interface ChangeRecorderLimits {
  /** Most changes kept; beyond it the oldest seqs are forgotten, as if compacted. */
  changesMax: number;
}

export class ChangeRecorder {
  /** The store to give the state machine (the server core): it records, then writes through. */
  readonly store: KvStore;
  private readonly inner: KvStore;
  private readonly limits: ChangeRecorderLimits;

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
    assert(limits.changesMax >= 1, 'changesMax must be at least 1');
    this.inner = store;
    this.limits = limits;
    this.coveredFromSeq = store.appliedSeq();
    this.coveredThroughSeq = store.appliedSeq();
    this.store = this.decorated();
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
    const changes = batch.changes;
    if (changes === undefined) {
      // Snapshot chunks, and the commit that finishes an install, replace the state: no entry
      // was applied, and what changed since the last recorded seq is unknown.
      this.inner.commit(batch);
      this.restart();
      return;
    }
    const before = this.inner.appliedSeq();
    assert(before === this.coveredThroughSeq, `the recorder follows the state (recorded through ${this.coveredThroughSeq}, state at ${before})`);
    assert(batch.appliedSeq > before, 'a commit of entries advances appliedSeq');
    this.inner.commit(batch);
    for (const change of changes) this.changes.push(change);
    this.coveredThroughSeq = batch.appliedSeq;
    this.enforceChangesMax();
  }

  /** The state was replaced: start a new record at its appliedSeq. */
  private restart(): void {
    this.headPosition = this.endPosition;
    this.changes = [];
    this.head = 0;
    this.coveredFromSeq = this.inner.appliedSeq();
    this.coveredThroughSeq = this.inner.appliedSeq();
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
