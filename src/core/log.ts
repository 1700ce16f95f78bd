// The in-memory view of a server's log: the entries from firstSeq to lastSeq, the part of the log
// that replication and truncation work on. The durable copy is kept by a shell (file log or
// simulated disk); this view is what the core reasons about.
//
// Only the newest entries are kept as objects ("hot"): the ones the server is about to apply and
// send. Older ones, kept for standbys that lag (up to logRetentionEntries), are frozen a chunk at a
// time into one buffer each, encoded as the protocol encodes entries, with their epochs beside
// them; reading one decodes it. Every entry held as objects lives through several young-generation
// collections and is then promoted, so a hundred thousand retained entries are a million objects
// for the garbage collector to copy and mark; frozen, they are a few hundred buffers.

import { assert } from '../lib/assert.ts';
import { Reader, Writer, readEntry, writeEntry } from '../protocol/codec.ts';
import type { Epoch, LogEntry, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';

export interface LogViewOptions {
  /** Newest entries kept as objects; older ones are frozen once hotEntries + chunkEntries are hot. */
  hotEntries: number;
  /** Entries per frozen chunk. */
  chunkEntries: number;
  /**
   * Most bytes of one chunk (by approximateEntryBytes): entries that would make a larger one stay
   * objects until they are compacted (a chunk is one buffer; large values would make it huge).
   */
  chunkBytesMax: number;
}

export const defaultLogViewOptions: LogViewOptions = { hotEntries: 2048, chunkEntries: 1024, chunkBytesMax: 64 * 1024 * 1024 };

/** chunkEntries consecutive entries from firstSeq, encoded back to back. */
interface FrozenChunk {
  readonly firstSeq: number;
  readonly bytes: Uint8Array;
  /** ends[i]: where entry i's encoding ends in bytes (it starts where entry i − 1's ends). */
  readonly ends: Uint32Array;
  readonly epochs: Uint32Array;
}

export class LogView {
  /**
   * Entries from firstSeq to hotFirstSeq − 1 are in frozen chunks (the first chunk may start below
   * firstSeq: its entries there were compacted), the rest in hot: hot[i] has seq hotFirstSeq + i.
   * Invariant: seqs are consecutive, epochs never decrease; every chunk holds chunkEntries entries.
   */
  private frozen: FrozenChunk[] = [];
  private hot: LogEntry[];
  private hotFirstSeq: number;
  /** Seq of the first entry; everything below it was compacted (or never existed). */
  firstSeq: Seq;
  /** Epoch of the entry at firstSeq − 1, or 0 (needed to check an append right after the start). */
  private baseEpoch: Epoch;
  private readonly options: LogViewOptions;

  constructor(entries: LogEntry[], firstSeq: Seq = seq(1), baseEpoch: Epoch = epoch(0), options: LogViewOptions = defaultLogViewOptions) {
    assert(firstSeq >= 1, 'firstSeq starts at 1');
    assert(Number.isSafeInteger(options.hotEntries) && options.hotEntries >= 0, 'hotEntries is a count');
    assert(Number.isSafeInteger(options.chunkEntries) && options.chunkEntries >= 1, 'chunkEntries is at least 1');
    assert(options.chunkBytesMax >= 0, 'chunkBytesMax is a size');
    this.options = options;
    this.hot = entries;
    this.hotFirstSeq = firstSeq;
    this.firstSeq = firstSeq;
    this.baseEpoch = baseEpoch;
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i] as LogEntry;
      assert(entry.seq === firstSeq + i, 'log entries have consecutive seqs');
      if (i > 0) assert(entry.epoch >= (entries[i - 1] as LogEntry).epoch, 'log epochs never decrease');
    }
    this.freeze();
  }

  get lastSeq(): Seq {
    return seq(this.hotFirstSeq + this.hot.length - 1);
  }

  get lastEpoch(): Epoch {
    return this.epochAt(this.lastSeq) ?? this.baseEpoch;
  }

  get length(): number {
    return this.lastSeq - this.firstSeq + 1;
  }

  /** Entries held in memory: the view's, and compacted ones that share the first frozen chunk with them. */
  get heldEntries(): number {
    return this.frozen.length * this.options.chunkEntries + this.hot.length;
  }

  /** What the view holds in memory: entries as objects, entries frozen, and the frozen chunks' bytes. */
  get memory(): { objectEntries: number; frozenEntries: number; frozenBytes: number } {
    let frozenBytes = 0;
    for (const chunk of this.frozen) frozenBytes += chunk.bytes.byteLength + chunk.ends.byteLength + chunk.epochs.byteLength;
    return { objectEntries: this.hot.length, frozenEntries: this.frozen.length * this.options.chunkEntries, frozenBytes };
  }

  /** The entry's epoch, baseEpoch at firstSeq − 1, undefined outside the view. */
  epochAt(at: number): Epoch | undefined {
    if (at === this.firstSeq - 1) return this.baseEpoch;
    if (at >= this.hotFirstSeq) return this.hot[at - this.hotFirstSeq]?.epoch;
    if (at < this.firstSeq) return undefined;
    const { chunk, index } = this.locate(at);
    return epoch(chunk.epochs[index] as number);
  }

  entry(at: number): LogEntry | undefined {
    if (at >= this.hotFirstSeq) return this.hot[at - this.hotFirstSeq];
    if (at < this.firstSeq) return undefined;
    const { chunk, index } = this.locate(at);
    return decodeFrozen(chunk, index);
  }

  /** Entries in [from, to], both inclusive, clipped to the view. */
  slice(from: number, to: number): LogEntry[] {
    const start = Math.max(from, this.firstSeq);
    const end = Math.min(to, this.lastSeq);
    if (end < start) return [];
    if (start >= this.hotFirstSeq) return this.hot.slice(start - this.hotFirstSeq, end - this.hotFirstSeq + 1);
    const entries: LogEntry[] = [];
    for (let at = start; at <= end && at < this.hotFirstSeq; at++) {
      const { chunk, index } = this.locate(at);
      entries.push(decodeFrozen(chunk, index));
    }
    if (end >= this.hotFirstSeq) for (const entry of this.hot.slice(0, end - this.hotFirstSeq + 1)) entries.push(entry);
    return entries;
  }

  append(entry: LogEntry): void {
    assert(entry.seq === this.lastSeq + 1, `append must continue at lastSeq + 1 (${this.lastSeq + 1}), got ${entry.seq}`);
    assert(entry.epoch >= this.lastEpoch, 'an appended entry may not have a lower epoch than the last one');
    this.hot.push(entry);
    if (this.hot.length >= this.options.hotEntries + this.options.chunkEntries) this.freeze();
  }

  /** Drop every entry up to and including `through` (they are in the state, or no longer needed). */
  compact(through: number): void {
    if (through < this.firstSeq) return;
    assert(through <= this.lastSeq, 'cannot compact beyond the end of the log');
    this.baseEpoch = this.epochAt(through) as Epoch;
    this.firstSeq = seq(through + 1);
    if (through >= this.hotFirstSeq) {
      this.frozen = [];
      this.hot = this.hot.slice(through - this.hotFirstSeq + 1);
      this.hotFirstSeq = through + 1;
      return;
    }
    const chunkEntries = this.options.chunkEntries;
    let drop = 0;
    while (drop < this.frozen.length && (this.frozen[drop] as FrozenChunk).firstSeq + chunkEntries - 1 <= through) drop++;
    if (drop > 0) this.frozen = this.frozen.slice(drop);
  }

  /** Forget every entry: the log restarts empty at firstSeq (after a snapshot up to firstSeq − 1). */
  reset(firstSeq: Seq, baseEpoch: Epoch): void {
    assert(firstSeq >= 1, 'firstSeq starts at 1');
    this.frozen = [];
    this.hot = [];
    this.hotFirstSeq = firstSeq;
    this.firstSeq = firstSeq;
    this.baseEpoch = baseEpoch;
  }

  get startEpoch(): Epoch {
    return this.baseEpoch;
  }

  /** Remove every entry after `after`. */
  truncateAfter(after: number): void {
    assert(after >= this.firstSeq - 1, 'cannot truncate below the start of the log view');
    if (after >= this.lastSeq) return;
    if (after < this.hotFirstSeq - 1) this.thawFrom(after + 1);
    this.hot.length = after - this.hotFirstSeq + 1;
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

  /** The frozen chunk holding `at` (firstSeq <= at < hotFirstSeq) and the entry's index in it. */
  private locate(at: number): { chunk: FrozenChunk; index: number } {
    const first = this.frozen[0] as FrozenChunk;
    const offset = at - first.firstSeq;
    const chunk = this.frozen[Math.floor(offset / this.options.chunkEntries)] as FrozenChunk;
    return { chunk, index: offset % this.options.chunkEntries };
  }

  /**
   * Move the oldest hot entries into frozen chunks until at most hotEntries + chunkEntries − 1 are
   * hot, or until the next chunk would be larger than chunkBytesMax (retried at the next append).
   */
  private freeze(): void {
    const { hotEntries, chunkEntries } = this.options;
    let frozenUpTo = 0;
    while (this.hot.length - frozenUpTo >= hotEntries + chunkEntries) {
      // Sized ahead, so that large values are not copied over and over as the buffer doubles:
      // approximateEntryBytes is a little above the encoding for keys and values in ASCII.
      let estimate = 0;
      for (let i = 0; i < chunkEntries; i++) estimate += approximateEntryBytes(this.hot[frozenUpTo + i] as LogEntry);
      if (estimate > this.options.chunkBytesMax) break;
      const writer = new Writer(estimate);
      const ends = new Uint32Array(chunkEntries);
      const epochs = new Uint32Array(chunkEntries);
      for (let i = 0; i < chunkEntries; i++) {
        const entry = this.hot[frozenUpTo + i] as LogEntry;
        writeEntry(writer, entry);
        ends[i] = writer.byteLength;
        epochs[i] = entry.epoch;
      }
      // Kept as written unless much of its buffer is unused (multibyte text made it grow, or it is a
      // small chunk cut from a shared slab): then an exact copy.
      const encoded = writer.finish();
      const bytes = encoded.buffer.byteLength - encoded.length > encoded.length / 8 ? encoded.slice() : encoded;
      this.frozen.push({ firstSeq: this.hotFirstSeq + frozenUpTo, bytes, ends, epochs });
      frozenUpTo += chunkEntries;
    }
    if (frozenUpTo === 0) return;
    this.hot = this.hot.slice(frozenUpTo);
    this.hotFirstSeq += frozenUpTo;
  }

  /** Decode the chunks from the one holding `at` onwards back into hot entries. */
  private thawFrom(at: number): void {
    const keep = Math.floor((at - (this.frozen[0] as FrozenChunk).firstSeq) / this.options.chunkEntries);
    // Only the first chunk may start below firstSeq (compacted entries, not thawed).
    const from = Math.max((this.frozen[keep] as FrozenChunk).firstSeq, this.firstSeq);
    const thawed: LogEntry[] = [];
    for (let seqAt = from; seqAt < this.hotFirstSeq; seqAt++) {
      const { chunk, index } = this.locate(seqAt);
      thawed.push(decodeFrozen(chunk, index));
    }
    this.frozen = this.frozen.slice(0, keep);
    this.hot = thawed.concat(this.hot);
    this.hotFirstSeq = from;
  }
}

function decodeFrozen(chunk: FrozenChunk, index: number): LogEntry {
  const start = index === 0 ? 0 : chunk.ends[index - 1] as number;
  const reader = new Reader(chunk.bytes.subarray(start, chunk.ends[index] as number));
  const entry = readEntry(reader);
  reader.end();
  return entry;
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
