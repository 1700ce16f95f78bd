// The on-disk format of the log and its recovery scan. Pure: it turns entries into record bytes
// and segment bytes back into entries, and decides where a damaged log must be cut; the file log
// (file-log.ts) does the reading, writing and syncing.
//
// A segment file holds records back to back, then possibly zeros: space the writer filled ahead of
// its records (preallocation), so that a sync of new records need not also record a larger file.
// The records end where the rest of the file is all zeros; no record starts with a zero length.
// A record is, little-endian:
//
//   offset  size  field
//        0     4  payloadLength  bytes of the payload
//        4     4  checksum       CRC-32 (IEEE, as zlib) of bytes 8 .. 20 + payloadLength
//        8     4  epoch
//       12     8  seq            53-bit integer, low word first
//       20     n  payload        the entry, encoded with encodeEntry (it repeats epoch and seq)
//
// The checksum does not cover payloadLength itself: a wrong length makes the checksum cover the
// wrong bytes, so it fails all the same.

import { assert } from '../lib/assert.ts';
import { CodecError, Writer, decodeEntry, writeEntry } from '../protocol/codec.ts';
import type { Epoch, LogEntry, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';

/** A CRC-32 function with zlib's signature: `checksum(bytes, previous)` continues `previous`. */
export type Checksum = (bytes: Uint8Array, previous?: number) => number;

export const recordHeaderBytes = 20;
/** The smallest payload encodeEntry produces (an epochStart entry without a session). */
export const recordPayloadBytesMin = 14;
/** Largest payload of one record; an entry above it is refused when written and is damage when read. */
export const recordPayloadBytesMax = 64 * 1024 * 1024;
/** The largest seq the format holds (the high word of a u53). */
const seqHighWordMax = 0x1fffff;

// ---------------------------------------------------------------- CRC-32

/** Eight 256-entry tables for CRC-32 by slicing-by-8 (polynomial 0xEDB88320, as zlib). */
const crcTables = buildCrcTables();

function buildCrcTables(): Uint32Array {
  const tables = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    tables[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    for (let t = 1; t < 8; t++) {
      const previous = tables[(t - 1) * 256 + n] as number;
      tables[t * 256 + n] = ((previous >>> 8) ^ (tables[previous & 0xff] as number)) >>> 0;
    }
  }
  return tables;
}

/** CRC-32 in pure TypeScript; gives the same values as node:zlib's crc32 (which is faster). */
export function crc32(bytes: Uint8Array, previous = 0): number {
  const t = crcTables;
  let crc = (previous ^ 0xffffffff) >>> 0;
  let i = 0;
  const length = bytes.length;
  for (; length - i >= 8; i += 8) {
    const low = (crc ^ ((bytes[i] as number) | ((bytes[i + 1] as number) << 8) | ((bytes[i + 2] as number) << 16) | ((bytes[i + 3] as number) << 24))) >>> 0;
    crc = (t[1792 + (low & 0xff)] as number) ^ (t[1536 + ((low >>> 8) & 0xff)] as number)
      ^ (t[1280 + ((low >>> 16) & 0xff)] as number) ^ (t[1024 + (low >>> 24)] as number)
      ^ (t[768 + (bytes[i + 4] as number)] as number) ^ (t[512 + (bytes[i + 5] as number)] as number)
      ^ (t[256 + (bytes[i + 6] as number)] as number) ^ (t[bytes[i + 7] as number] as number);
  }
  for (; i < length; i++) crc = (t[(crc ^ (bytes[i] as number)) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------- writing

/**
 * Encodes consecutive entries into one buffer of records, for one write. `recordEnds[i]` is the
 * byte offset where record i ends, so the writer can split the buffer between segments.
 */
export class RecordEncoder {
  private readonly writer = new Writer(4096);
  private readonly starts: number[] = [];
  private length = 0;
  /** Seq of the first record; later records follow it without gaps. */
  firstSeq: Seq | undefined;
  lastSeq: Seq | undefined;

  constructor(private readonly checksum: Checksum) {}

  get recordCount(): number {
    return this.starts.length;
  }

  get byteLength(): number {
    return this.length;
  }

  add(entry: LogEntry): void {
    if (this.lastSeq !== undefined) assert(entry.seq === this.lastSeq + 1, `records must be consecutive: ${entry.seq} after ${this.lastSeq}`);
    this.firstSeq ??= entry.seq;
    this.lastSeq = entry.seq;
    this.starts.push(this.length);
    // The length and checksum are patched in by finish(), once the payload is written.
    this.writer.u32(0).u32(0).u32(entry.epoch).u53(entry.seq);
    writeEntry(this.writer, entry);
    const end = this.writer.finish().length;
    const payloadLength = end - this.length - recordHeaderBytes;
    assert(payloadLength <= recordPayloadBytesMax, `an entry of ${payloadLength} bytes exceeds recordPayloadBytesMax (${recordPayloadBytesMax})`);
    this.length = end;
  }

  /** The records, and where each one ends. The encoder must not be used afterwards. */
  finish(): { bytes: Uint8Array; recordEnds: number[] } {
    const bytes = this.writer.finish();
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const recordEnds: number[] = new Array<number>(this.starts.length);
    for (let i = 0; i < this.starts.length; i++) {
      const start = this.starts[i] as number;
      const end = i + 1 < this.starts.length ? this.starts[i + 1] as number : bytes.length;
      view.setUint32(start, end - start - recordHeaderBytes, true);
      view.setUint32(start + 4, this.checksum(bytes.subarray(start + 8, end)), true);
      recordEnds[i] = end;
    }
    return { bytes, recordEnds };
  }
}

/** The records of `entries` (consecutive seqs) as one buffer. */
export function encodeRecords(entries: readonly LogEntry[], checksum: Checksum): Uint8Array {
  const encoder = new RecordEncoder(checksum);
  for (const entry of entries) encoder.add(entry);
  return encoder.finish().bytes;
}

/** Where the record of `throughSeq` ends, walking the length fields only (the segment must be valid). */
export function recordEndOffset(bytes: Uint8Array, firstSeq: Seq, throughSeq: Seq): number {
  return recordEnd(bytes, firstSeq, throughSeq).offset;
}

/**
 * Where the record of `throughSeq` ends and its epoch (undefined when throughSeq < firstSeq),
 * walking the length fields only (the segment must be valid).
 */
export function recordEnd(bytes: Uint8Array, firstSeq: Seq, throughSeq: Seq): { offset: number; epoch: Epoch | undefined } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 0;
  let lastEpoch: Epoch | undefined;
  for (let at: number = firstSeq; at <= throughSeq; at++) {
    assert(offset + recordHeaderBytes <= bytes.length, `segment ${firstSeq} ends before the record of seq ${at}`);
    assert(readU53(view, offset + 12) === at, `segment ${firstSeq} holds another seq where seq ${at} should be`);
    lastEpoch = epoch(view.getUint32(offset + 8, true));
    offset += recordHeaderBytes + view.getUint32(offset, true);
  }
  assert(offset <= bytes.length, `segment ${firstSeq} ends inside the record of seq ${throughSeq}`);
  return { offset, epoch: lastEpoch };
}

/** The epoch field of the record that starts at `offset` (the record must be valid). */
export function recordEpochAt(bytes: Uint8Array, offset: number): Epoch {
  assert(offset + recordHeaderBytes <= bytes.length, `no record header at offset ${offset}`);
  return epoch(new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(offset + 8, true));
}

function readU53(view: DataView, offset: number): number {
  return view.getUint32(offset + 4, true) * 0x100000000 + view.getUint32(offset, true);
}

// ---------------------------------------------------------------- recovery scan

/** A segment file as the scan sees it: its name (the seq of its first record) and its bytes. */
export interface SegmentBytes {
  firstSeq: Seq;
  bytes: Uint8Array;
}

/** A segment that survives the scan, and how many of its bytes are valid records. */
export interface SegmentExtent {
  /** Index of the segment among those scanned. */
  index: number;
  firstSeq: Seq;
  /** Seq of its last valid record; firstSeq − 1 if it holds none. */
  lastSeq: Seq;
  /** Epoch of its last valid record; if it holds none, of the record before it (or the log's base epoch, or 0). */
  lastEpoch: Epoch;
  /** Bytes of valid records. */
  validBytes: number;
  /** Everything after the valid records is zeros (preallocated space): the file need not be cut. */
  zeroTail: boolean;
}

/**
 * Where the log starts when it does not start at seq 1 with nothing before it: after a compaction
 * or a snapshot, the entries below firstSeq are gone and the one at firstSeq − 1 had baseEpoch.
 */
export interface LogStart {
  firstSeq: Seq;
  baseEpoch: Epoch;
}

/** Where and why the scan stopped before the end of the segments. */
export interface ScanFailure {
  segment: number;
  offset: number;
  /** The seq the failing record should have had. */
  seq: Seq;
  reason: string;
}

export interface ScanResult {
  /** The valid log, consecutive from firstSeq. */
  entries: LogEntry[];
  /** Seq of the first entry: the log start if one was given, else the first segment's name, or 1 with no segment. */
  firstSeq: Seq;
  /** Epoch of the last valid entry; with none, the log start's baseEpoch, or 0. */
  lastEpoch: Epoch;
  /** Segments to keep; any segment not listed (all after the cut) is to be deleted. */
  kept: SegmentExtent[];
  /** The last record was incomplete or failed its checksum, with nothing valid after it: it was cut. */
  tornTailCut: boolean;
  /** A record below the tail was damaged (or the log broke its own rules): the log was cut there. */
  corruptionFound: boolean;
  failure: ScanFailure | undefined;
  /** Bytes of valid records. */
  validBytes: number;
}

/** A damaged record that a torn write could have produced, as opposed to a broken rule. */
type FailureKind = 'torn' | 'invalid';

/**
 * The recovery scan, fed one segment at a time in seq order, so a caller can drop each segment's
 * bytes once scanned (decoded entries own their data). After the first failure it only looks for
 * a valid record further on: finding one means the failure was below the tail (corruption), not
 * a torn tail.
 *
 * Given a log start (the durable record of a compaction or a reset), the log begins at its
 * firstSeq whatever the segments are named: the caller has dropped the segments wholly below it,
 * so the first segment starts at or below it. Records of the first segment below the start are
 * checked but are not part of the log; a first segment that starts above it means entries are
 * missing, which is corruption; a first segment that never reaches the start holds nothing of the
 * log and is not kept.
 */
export class LogScanner {
  private readonly entries: LogEntry[] = [];
  private readonly kept: SegmentExtent[] = [];
  private segmentCount = 0;
  private firstSeq: Seq = seq(1);
  /** Seq the next valid record must have. */
  private nextSeq: Seq = seq(1);
  private lastEpoch: Epoch = epoch(0);
  private validBytes = 0;
  private failure: (ScanFailure & { kind: FailureKind }) | undefined;
  /** A checksum-valid record was found after a failure. */
  private validAfterFailure = false;

  constructor(private readonly checksum: Checksum, private readonly start?: LogStart) {
    if (start !== undefined) {
      assert(Number.isSafeInteger(start.firstSeq) && start.firstSeq >= 1, `a log starts at a seq, not ${start.firstSeq}`);
      this.firstSeq = start.firstSeq;
      this.nextSeq = start.firstSeq;
      this.lastEpoch = start.baseEpoch;
    }
  }

  addSegment(segment: SegmentBytes): void {
    assert(Number.isSafeInteger(segment.firstSeq) && segment.firstSeq >= 1, `a segment is named by a seq, not ${segment.firstSeq}`);
    const index = this.segmentCount++;
    if (this.failure !== undefined) {
      if (!this.validAfterFailure) this.validAfterFailure = this.findValidRecord(segment.bytes, 0);
      return;
    }
    if (index === 0 && this.start !== undefined) {
      if (segment.firstSeq > this.start.firstSeq) {
        // Not kept: the next append must create the segment named by the log start.
        this.fail(index, 0, 'invalid', `the first segment starts at seq ${segment.firstSeq}, after the log start ${this.start.firstSeq}`);
        this.validAfterFailure = this.findValidRecord(segment.bytes, 0);
        return;
      }
      this.nextSeq = segment.firstSeq;
      // Records below the start are not part of the log: their epochs are not held against it.
      if (segment.firstSeq < this.start.firstSeq) this.lastEpoch = epoch(0);
    } else if (index === 0) {
      this.firstSeq = segment.firstSeq;
      this.nextSeq = segment.firstSeq;
    } else if (segment.firstSeq !== this.nextSeq) {
      this.fail(index, 0, 'invalid', `segment ${segment.firstSeq} should start at seq ${this.nextSeq}`);
      return;
    }
    const validBytes = this.scanRecords(index, segment.bytes);
    this.validBytes += validBytes;
    // scanRecords may have set it (a narrowing from above does not know that).
    const failure = this.failure as ScanFailure | undefined;
    // A later segment cut to nothing is deleted, but the first one stays: its name keeps firstSeq.
    if (validBytes > 0 || index === 0 || failure === undefined) {
      const zeroTail = failure === undefined || allZero(segment.bytes, validBytes);
      this.kept.push({ index, firstSeq: segment.firstSeq, lastSeq: seq(this.nextSeq - 1), lastEpoch: this.lastEpoch, validBytes, zeroTail });
    }
    if (failure !== undefined) this.validAfterFailure = this.findValidRecord(segment.bytes, failure.offset + 1);
  }

  finish(): ScanResult {
    const failure = this.failure;
    const corruptionFound = failure !== undefined && (failure.kind === 'invalid' || this.validAfterFailure);
    // A first segment below the log start that holds no entry of the log is left over: dropping it
    // lets the next append create the segment named by the start.
    if (this.start !== undefined && this.entries.length === 0 && this.kept[0]?.firstSeq !== this.start.firstSeq) this.kept.length = 0;
    return {
      entries: this.entries,
      firstSeq: this.firstSeq,
      lastEpoch: this.entries.at(-1)?.epoch ?? this.start?.baseEpoch ?? epoch(0),
      kept: this.kept,
      tornTailCut: failure !== undefined && !corruptionFound,
      corruptionFound,
      failure: failure === undefined ? undefined : { segment: failure.segment, offset: failure.offset, seq: failure.seq, reason: failure.reason },
      validBytes: this.validBytes,
    };
  }

  /** Scans the records of one segment; returns how many bytes are valid. */
  private scanRecords(index: number, bytes: Uint8Array): number {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const checksum = this.checksum;
    const entries = this.entries;
    let offset = 0;
    while (offset < bytes.length) {
      // Preallocated space after the last record: the segment's records end here.
      if (bytes[offset] === 0 && allZero(bytes, offset)) return offset;
      if (bytes.length - offset < recordHeaderBytes) return this.fail(index, offset, 'torn', 'the record header is incomplete');
      const payloadLength = view.getUint32(offset, true);
      if (payloadLength < recordPayloadBytesMin || payloadLength > recordPayloadBytesMax) {
        return this.fail(index, offset, 'torn', `the record length ${payloadLength} is out of range`);
      }
      const end = offset + recordHeaderBytes + payloadLength;
      if (end > bytes.length) return this.fail(index, offset, 'torn', 'the record is incomplete');
      if (checksum(bytes.subarray(offset + 8, end)) !== view.getUint32(offset + 4, true)) {
        return this.fail(index, offset, 'torn', 'the record fails its checksum');
      }
      const recordEpoch = view.getUint32(offset + 8, true);
      const recordSeq = readU53(view, offset + 12);
      if (recordSeq !== this.nextSeq) return this.fail(index, offset, 'invalid', `the record has seq ${recordSeq}`);
      if (this.start !== undefined && recordSeq === this.start.firstSeq && recordEpoch < this.start.baseEpoch) {
        return this.fail(index, offset, 'invalid', `the record's epoch ${recordEpoch} is below the log's base epoch ${this.start.baseEpoch}`);
      }
      if (recordEpoch < this.lastEpoch) return this.fail(index, offset, 'invalid', `the record's epoch ${recordEpoch} is below the previous ${this.lastEpoch}`);
      let entry: LogEntry;
      try {
        entry = decodeEntry(bytes.subarray(offset + recordHeaderBytes, end));
      } catch (error) {
        if (!(error instanceof CodecError)) throw error;
        return this.fail(index, offset, 'invalid', `the payload does not decode: ${error.message}`);
      }
      if (entry.seq !== recordSeq || entry.epoch !== recordEpoch) {
        return this.fail(index, offset, 'invalid', 'the payload disagrees with the record header');
      }
      if (this.start === undefined || recordSeq >= this.start.firstSeq) entries.push(entry);
      this.nextSeq = seq(recordSeq + 1);
      this.lastEpoch = epoch(recordEpoch);
      offset = end;
    }
    return offset;
  }

  private fail(segment: number, offset: number, kind: FailureKind, reason: string): number {
    this.failure = { segment, offset, kind, seq: this.nextSeq, reason };
    return offset;
  }

  /**
   * Is there a checksum-valid record at or after `from`, belonging after the failure (seq at
   * least the failing one, epoch not lower)? Tried at every byte offset: a damaged length gives
   * no way to find the next record boundary. The cheap header tests keep this linear in practice.
   */
  private findValidRecord(bytes: Uint8Array, from: number): boolean {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let offset = from; offset + recordHeaderBytes + recordPayloadBytesMin <= bytes.length; offset++) {
      const payloadLength = view.getUint32(offset, true);
      if (payloadLength < recordPayloadBytesMin || payloadLength > recordPayloadBytesMax) continue;
      const end = offset + recordHeaderBytes + payloadLength;
      if (end > bytes.length) continue;
      if (view.getUint32(offset + 16, true) > seqHighWordMax) continue;
      if (readU53(view, offset + 12) < this.nextSeq || view.getUint32(offset + 8, true) < this.lastEpoch) continue;
      if (this.checksum(bytes.subarray(offset + 8, end)) === view.getUint32(offset + 4, true)) return true;
    }
    return false;
  }
}

/** Whether every byte of `bytes` from `from` on is zero. */
export function allZero(bytes: Uint8Array, from: number): boolean {
  for (let i = from; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** The recovery scan over all segments in seq order (see LogScanner). */
export function scanLog(segments: readonly SegmentBytes[], checksum: Checksum, start?: LogStart): ScanResult {
  const scanner = new LogScanner(checksum, start);
  for (const segment of segments) scanner.addSegment(segment);
  return scanner.finish();
}

// ---------------------------------------------------------------- names

const segmentNameDigits = 20;
const segmentNamePattern = /^(\d{20})\.seg$/;

/** `00000000000000000001.seg` for the segment whose first record has seq 1. */
export function segmentName(firstSeq: Seq): string {
  assert(Number.isSafeInteger(firstSeq) && firstSeq >= 1, `a segment is named by a seq, not ${firstSeq}`);
  return `${String(firstSeq).padStart(segmentNameDigits, '0')}.seg`;
}

/** The first seq a segment file name stands for, or undefined if it is not a segment's name. */
export function parseSegmentName(name: string): Seq | undefined {
  const match = segmentNamePattern.exec(name);
  if (match === null) return undefined;
  const value = Number(match[1]);
  return Number.isSafeInteger(value) && value >= 1 ? seq(value) : undefined;
}
