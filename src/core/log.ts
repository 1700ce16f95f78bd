// The in-memory view of a server's log: the entries from firstSeq to lastSeq, the part of the log
// that replication and truncation work on. The durable copy is kept by a shell (file log or
// simulated disk); this view is what the core reasons about.

import { assert } from '../lib/assert.ts';
import type { Epoch, LogEntry, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';

export class LogView {
  /** entries[i] has seq firstSeq + i. Invariant: seqs are consecutive, epochs never decrease. */
  private entries: LogEntry[];
  /** Seq of entries[0]; everything below it was compacted (or never existed). */
  firstSeq: Seq;
  /** Epoch of the entry at firstSeq − 1, or 0 (needed to check an append right after the start). */
  private baseEpoch: Epoch;

  constructor(entries: LogEntry[], firstSeq: Seq = seq(1), baseEpoch: Epoch = epoch(0)) {
    assert(firstSeq >= 1, 'firstSeq starts at 1');
    this.entries = entries;
    this.firstSeq = firstSeq;
    this.baseEpoch = baseEpoch;
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i] as LogEntry;
      assert(entry.seq === firstSeq + i, 'log entries have consecutive seqs');
      if (i > 0) assert(entry.epoch >= (entries[i - 1] as LogEntry).epoch, 'log epochs never decrease');
    }
  }

  get lastSeq(): Seq {
    return seq(this.firstSeq + this.entries.length - 1);
  }

  get lastEpoch(): Epoch {
    return this.epochAt(this.lastSeq) ?? this.baseEpoch;
  }

  get length(): number {
    return this.entries.length;
  }

  /** The entry's epoch, baseEpoch at firstSeq − 1, undefined outside the view. */
  epochAt(at: number): Epoch | undefined {
    if (at === this.firstSeq - 1) return this.baseEpoch;
    return this.entries[at - this.firstSeq]?.epoch;
  }

  entry(at: number): LogEntry | undefined {
    return this.entries[at - this.firstSeq];
  }

  /** Entries in [from, to], both inclusive, clipped to the view. */
  slice(from: number, to: number): LogEntry[] {
    const start = Math.max(from, this.firstSeq) - this.firstSeq;
    const end = Math.min(to, this.lastSeq) - this.firstSeq + 1;
    return end > start ? this.entries.slice(start, end) : [];
  }

  append(entry: LogEntry): void {
    assert(entry.seq === this.lastSeq + 1, `append must continue at lastSeq + 1 (${this.lastSeq + 1}), got ${entry.seq}`);
    assert(entry.epoch >= this.lastEpoch, 'an appended entry may not have a lower epoch than the last one');
    this.entries.push(entry);
  }

  /** Drop every entry up to and including `through` (they are in the state, or no longer needed). */
  compact(through: number): void {
    if (through < this.firstSeq) return;
    assert(through <= this.lastSeq, 'cannot compact beyond the end of the log');
    this.baseEpoch = this.epochAt(through) as Epoch;
    this.entries = this.entries.slice(through - this.firstSeq + 1);
    this.firstSeq = seq(through + 1);
  }

  /** Forget every entry: the log restarts empty at firstSeq (after a snapshot up to firstSeq − 1). */
  reset(firstSeq: Seq, baseEpoch: Epoch): void {
    assert(firstSeq >= 1, 'firstSeq starts at 1');
    this.entries = [];
    this.firstSeq = firstSeq;
    this.baseEpoch = baseEpoch;
  }

  get startEpoch(): Epoch {
    return this.baseEpoch;
  }

  /** Remove every entry after `after`. */
  truncateAfter(after: number): void {
    assert(after >= this.firstSeq - 1, 'cannot truncate below the start of the log view');
    if (after < this.lastSeq) this.entries.length = after - this.firstSeq + 1;
  }

  /**
   * Last seq whose entry has an epoch at most `limit` (epochs never decrease along the log, so
   * this is where epoch `limit` ends). firstSeq − 1 if there is none in the view.
   */
  endOfEpoch(limit: number): Seq {
    let low: number = this.firstSeq;
    let high: number = this.lastSeq;
    let found: number = this.firstSeq - 1;
    while (low <= high) {
      const middle = (low + high) >>> 1;
      if ((this.epochAt(middle) as Epoch) <= limit) {
        found = middle;
        low = middle + 1;
      } else {
        high = middle - 1;
      }
    }
    return seq(found);
  }

  /** The largest epoch present in the view that is at most `limit`, or baseEpoch. */
  largestEpochAtMost(limit: number): Epoch {
    const end = this.endOfEpoch(limit);
    return this.epochAt(end) ?? this.baseEpoch;
  }
}

/** Roughly the bytes an entry takes on the wire (keys counted as UTF-16 units): to size batches. */
export function approximateEntryBytes(entry: LogEntry): number {
  const write = entry.write;
  let bytes = 32 + (entry.session === undefined ? 0 : 16 + entry.session.clientId.length);
  switch (write.type) {
    case 'put': return bytes + write.key.length + write.value.length;
    case 'delete': return bytes + write.key.length;
    case 'txn':
      for (const compare of write.compares) bytes += 12 + compare.key.length;
      for (const operation of [...write.success, ...write.failure]) bytes += 8 + operation.key.length + (operation.type === 'put' ? operation.value.length : 0);
      return bytes;
    default: return bytes;
  }
}
