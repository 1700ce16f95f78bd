import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { crc32 as zlibCrc32 } from 'node:zlib';
import fc from 'fast-check';
import { encodeEntry } from '../protocol/codec.ts';
import type { LogEntry } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import type { SegmentBytes } from './log-format.ts';
import {
  RecordEncoder, crc32, encodeRecords, parseSegmentName, recordEndOffset, recordHeaderBytes, scanLog, segmentName,
} from './log-format.ts';

function entryAt(at: number, entryEpoch = 1): LogEntry {
  const value = new Uint8Array(at % 37);
  for (let i = 0; i < value.length; i++) value[i] = (at * 7 + i) & 0xff;
  return { epoch: epoch(entryEpoch), seq: seq(at), write: { type: 'put', key: `key-${at}`, value }, session: { clientId: 'c', requestId: at } };
}

function entries(from: number, to: number, entryEpoch = 1): LogEntry[] {
  const result: LogEntry[] = [];
  for (let at = from; at <= to; at++) result.push(entryAt(at, entryEpoch));
  return result;
}

/** Records of consecutive entries and where each record starts. */
function records(list: LogEntry[]): { bytes: Uint8Array; starts: number[] } {
  const encoder = new RecordEncoder(crc32);
  for (const entry of list) encoder.add(entry);
  const { bytes, recordEnds } = encoder.finish();
  return { bytes, starts: [0, ...recordEnds.slice(0, -1)] };
}

function assertEntries(actual: LogEntry[], expected: LogEntry[]): void {
  assert.equal(actual.length, expected.length);
  for (let i = 0; i < expected.length; i++) assert.deepEqual(encodeEntry(actual[i] as LogEntry), encodeEntry(expected[i] as LogEntry));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const bytes = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    bytes.set(part, offset);
    offset += part.length;
  }
  return bytes;
}

describe('log format: CRC-32', () => {
  it('matches the standard check value', () => {
    assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
    assert.equal(crc32(new Uint8Array(0)), 0);
  });

  it('agrees with zlib, also when continued', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 40 }), (a, b) => {
      assert.equal(crc32(a), zlibCrc32(a));
      assert.equal(crc32(b, crc32(a)), zlibCrc32(concat(a, b)));
    }));
  });
});

describe('log format: records and the recovery scan', () => {
  it('reads back what it wrote, in one segment or split at record boundaries', () => {
    const list = entries(1, 50);
    const { bytes, starts } = records(list);
    const whole = scanLog([{ firstSeq: seq(1), bytes }], crc32);
    assertEntries(whole.entries, list);
    assert.equal(whole.tornTailCut, false);
    assert.equal(whole.corruptionFound, false);
    assert.deepEqual(whole.kept, [{ index: 0, firstSeq: 1, lastSeq: 50, lastEpoch: 1, validBytes: bytes.length, zeroTail: true }]);

    const cut1 = starts[20] as number;
    const cut2 = starts[35] as number;
    const split: SegmentBytes[] = [
      { firstSeq: seq(1), bytes: bytes.subarray(0, cut1) },
      { firstSeq: seq(21), bytes: bytes.subarray(cut1, cut2) },
      { firstSeq: seq(36), bytes: bytes.subarray(cut2) },
      { firstSeq: seq(51), bytes: new Uint8Array(0) },
    ];
    const scanned = scanLog(split, crc32);
    assertEntries(scanned.entries, list);
    assert.equal(scanned.kept.length, 4);
    assert.equal(scanned.failure, undefined);
  });

  it('checksums the header fields and the payload; the payload is encodeEntry', () => {
    const entry = entryAt(7, 3);
    const bytes = encodeRecords([entry], zlibCrc32);
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const payload = encodeEntry(entry);
    assert.equal(view.getUint32(0, true), payload.length);
    assert.equal(view.getUint32(4, true), zlibCrc32(bytes.subarray(8)));
    assert.equal(view.getUint32(8, true), 3);
    assert.equal(view.getUint32(12, true), 7);
    assert.deepEqual(bytes.subarray(recordHeaderBytes), payload);
  });

  it('an empty log starts at seq 1; a log starts at its first segment', () => {
    assert.equal(scanLog([], crc32).firstSeq, 1);
    const scanned = scanLog([{ firstSeq: seq(101), bytes: encodeRecords(entries(101, 105), crc32) }], crc32);
    assert.equal(scanned.firstSeq, 101);
    assert.equal(scanned.entries.length, 5);
  });

  it('cuts a last record torn at any byte as a torn tail', () => {
    const list = entries(1, 8);
    const { bytes, starts } = records(list);
    const lastStart = starts.at(-1) as number;
    for (let cut = lastStart + 1; cut < bytes.length; cut++) {
      const scanned = scanLog([{ firstSeq: seq(1), bytes: bytes.subarray(0, cut) }], crc32);
      assert.equal(scanned.tornTailCut, true, `cut at ${cut}`);
      assert.equal(scanned.corruptionFound, false, `cut at ${cut}`);
      assert.equal(scanned.entries.length, 7);
      assert.equal(scanned.kept[0]?.validBytes, lastStart);
    }
  });

  it('cuts garbage after the last record as a torn tail, also garbage after or before preallocated zeros', () => {
    const { bytes } = records(entries(1, 8));
    const garbage = fc.uint8Array({ minLength: 1, maxLength: 200 }).filter((array) => array.some((byte) => byte !== 0));
    fc.assert(fc.property(garbage, fc.nat({ max: 300 }), fc.nat({ max: 300 }), (junk, zerosBefore, zerosAfter) => {
      const tail = concat(concat(new Uint8Array(zerosBefore), junk), new Uint8Array(zerosAfter));
      const scanned = scanLog([{ firstSeq: seq(1), bytes: concat(bytes, tail) }], crc32);
      assert.equal(scanned.tornTailCut, true);
      assert.equal(scanned.corruptionFound, false);
      assert.equal(scanned.entries.length, 8);
      assert.equal(scanned.kept[0]?.validBytes, bytes.length);
      assert.equal(scanned.kept[0]?.zeroTail, false, 'a torn tail is cut off the file');
    }));
  });

  it('ends the records at preallocated zeros, without calling it a tear', () => {
    const { bytes, starts } = records(entries(1, 8));
    for (const zeros of [1, 19, 20, 4096]) {
      const scanned = scanLog([{ firstSeq: seq(1), bytes: concat(bytes, new Uint8Array(zeros)) }], crc32);
      assert.equal(scanned.tornTailCut, false);
      assert.equal(scanned.failure, undefined);
      assert.equal(scanned.entries.length, 8);
      assert.deepEqual(scanned.kept, [{ index: 0, firstSeq: 1, lastSeq: 8, lastEpoch: 1, validBytes: bytes.length, zeroTail: true }]);
    }
    // The last record torn by a crash while it overwrote preallocated zeros: cut, and the file cut too.
    const lastStart = starts.at(-1) as number;
    const torn = concat(bytes.subarray(0, bytes.length - 20), new Uint8Array(1000));
    const scanned = scanLog([{ firstSeq: seq(1), bytes: torn }], crc32);
    assert.equal(scanned.tornTailCut, true);
    assert.equal(scanned.entries.length, 7);
    assert.deepEqual(scanned.kept[0], { index: 0, firstSeq: 1, lastSeq: 7, lastEpoch: 1, validBytes: lastStart, zeroTail: false });
    // An empty, preallocated segment after a full one holds nothing, cleanly.
    const two = scanLog([{ firstSeq: seq(1), bytes }, { firstSeq: seq(9), bytes: new Uint8Array(4096) }], crc32);
    assert.equal(two.failure, undefined);
    assert.deepEqual(two.kept.map((extent) => [extent.firstSeq, extent.lastSeq, extent.validBytes, extent.zeroTail]), [[1, 8, bytes.length, true], [9, 8, 0, true]]);
  });

  it('reports a flipped bit in any record below the last as corruption and cuts there', () => {
    const list = entries(1, 12);
    const { bytes, starts } = records(list);
    fc.assert(fc.property(fc.nat({ max: (starts.at(-1) as number) * 8 - 1 }), (bit) => {
      const damaged = bytes.slice();
      const byte = bit >> 3;
      damaged[byte] = (damaged[byte] as number) ^ (1 << (bit & 7));
      const record = starts.findLastIndex((start) => start <= byte);
      const scanned = scanLog([{ firstSeq: seq(1), bytes: damaged }], crc32);
      assert.equal(scanned.corruptionFound, true, `bit ${bit}`);
      assert.equal(scanned.tornTailCut, false);
      assert.equal(scanned.entries.length, record);
      assert.equal(scanned.failure?.seq, record + 1);
      assert.equal(scanned.kept[0]?.validBytes, starts[record]);
    }), { numRuns: 300 });
  });

  it('cannot tell a flipped bit in the very last record from a torn write', () => {
    const { bytes, starts } = records(entries(1, 5));
    const damaged = bytes.slice();
    const at = (starts.at(-1) as number) + recordHeaderBytes + 3;
    damaged[at] = (damaged[at] as number) ^ 0x10;
    const scanned = scanLog([{ firstSeq: seq(1), bytes: damaged }], crc32);
    assert.equal(scanned.tornTailCut, true);
    assert.equal(scanned.corruptionFound, false);
    assert.equal(scanned.entries.length, 4);
  });

  it('a damaged record at the end of a segment is corruption when a later segment has records', () => {
    const { bytes, starts } = records(entries(1, 10));
    const cut = starts[6] as number;
    const first = bytes.slice(0, cut);
    first[cut - 3] = (first[cut - 3] as number) ^ 1;
    const later = scanLog([{ firstSeq: seq(1), bytes: first }, { firstSeq: seq(7), bytes: bytes.subarray(cut) }], crc32);
    assert.equal(later.corruptionFound, true);
    assert.equal(later.entries.length, 5);
    assert.deepEqual(later.kept.map((extent) => extent.index), [0]);
    // With the later segment empty, nothing valid follows: a torn tail, and the empty segment goes.
    const empty = scanLog([{ firstSeq: seq(1), bytes: first }, { firstSeq: seq(7), bytes: new Uint8Array(0) }], crc32);
    assert.equal(empty.tornTailCut, true);
    assert.equal(empty.corruptionFound, false);
    assert.deepEqual(empty.kept.map((extent) => extent.index), [0]);
  });

  it('treats broken rules as corruption: seq gaps, a decreasing epoch, a misnamed segment, an undecodable payload', () => {
    const gap = scanLog([{ firstSeq: seq(1), bytes: concat(encodeRecords(entries(1, 3), crc32), encodeRecords(entries(5, 6), crc32)) }], crc32);
    assert.equal(gap.corruptionFound, true);
    assert.equal(gap.entries.length, 3);

    const epochs = scanLog([{ firstSeq: seq(1), bytes: concat(encodeRecords(entries(1, 3, 2), crc32), encodeRecords(entries(4, 4, 1), crc32)) }], crc32);
    assert.equal(epochs.corruptionFound, true);
    assert.equal(epochs.entries.length, 3);

    const misnamed = scanLog([
      { firstSeq: seq(1), bytes: encodeRecords(entries(1, 3), crc32) },
      { firstSeq: seq(5), bytes: encodeRecords(entries(5, 6), crc32) },
    ], crc32);
    assert.equal(misnamed.corruptionFound, true);
    assert.equal(misnamed.entries.length, 3);
    assert.deepEqual(misnamed.kept.map((extent) => extent.index), [0]);

    const wrongName = scanLog([{ firstSeq: seq(2), bytes: encodeRecords(entries(1, 3), crc32) }], crc32);
    assert.equal(wrongName.corruptionFound, true);
    assert.equal(wrongName.entries.length, 0);
    assert.deepEqual(wrongName.kept, [{ index: 0, firstSeq: 2, lastSeq: 1, lastEpoch: 0, validBytes: 0, zeroTail: false }]);

    // A payload that does not decode, under a valid checksum (a bug, not a torn write).
    const record = encodeRecords(entries(1, 1), crc32).slice();
    record[recordHeaderBytes + 12] = 99; // the write's tag
    new DataView(record.buffer).setUint32(4, crc32(record.subarray(8)), true);
    const undecodable = scanLog([{ firstSeq: seq(1), bytes: record }], crc32);
    assert.equal(undecodable.corruptionFound, true);
    assert.match(undecodable.failure?.reason ?? '', /does not decode/);
  });

  it('finds where a record ends by its length fields', () => {
    const { bytes, starts } = records(entries(11, 20));
    assert.equal(recordEndOffset(bytes, seq(11), seq(10)), 0);
    assert.equal(recordEndOffset(bytes, seq(11), seq(15)), starts[5]);
    assert.equal(recordEndOffset(bytes, seq(11), seq(20)), bytes.length);
    assert.throws(() => recordEndOffset(bytes, seq(11), seq(21)));
  });

  it('with a log start: the log begins there, records below it are not part of it, a gap is corruption', () => {
    const start = { firstSeq: seq(21), baseEpoch: epoch(2) };
    // The usual case: the first segment is named by the start.
    const usual = scanLog([{ firstSeq: seq(21), bytes: encodeRecords(entries(21, 30, 3), crc32) }], crc32, start);
    assert.equal(usual.firstSeq, 21);
    assert.equal(usual.entries.length, 10);
    assert.equal(usual.corruptionFound, false);
    assert.deepEqual(usual.kept, [{ index: 0, firstSeq: 21, lastSeq: 30, lastEpoch: 3, validBytes: usual.validBytes, zeroTail: true }]);
    // An empty log at the start has the base epoch as its last epoch.
    const empty = scanLog([], crc32, start);
    assert.equal(empty.firstSeq, 21);
    assert.equal(empty.lastEpoch, 2);

    // A first segment that starts below the start: its records below it are checked but dropped.
    const straddle = scanLog([{ firstSeq: seq(11), bytes: encodeRecords([...entries(11, 20, 1), ...entries(21, 25, 2)], crc32) }], crc32, start);
    assert.equal(straddle.corruptionFound, false);
    assert.deepEqual(straddle.entries.map((entry) => entry.seq), [21, 22, 23, 24, 25]);
    assert.equal(straddle.kept.length, 1);
    // One that never reaches the start holds nothing of the log: it is not kept.
    const below = scanLog([{ firstSeq: seq(11), bytes: encodeRecords(entries(11, 19, 1), crc32) }], crc32, start);
    assert.deepEqual(below.entries, []);
    assert.deepEqual(below.kept, []);
    assert.equal(below.corruptionFound, false);

    // A first segment that starts above the start: entries are missing.
    const gap = scanLog([{ firstSeq: seq(25), bytes: encodeRecords(entries(25, 30, 3), crc32) }], crc32, start);
    assert.equal(gap.corruptionFound, true);
    assert.deepEqual(gap.entries, []);
    assert.deepEqual(gap.kept, []);
    assert.match(gap.failure?.reason ?? '', /after the log start 21/);

    // The entry at the start may not have an epoch below the base epoch.
    const lowEpoch = scanLog([{ firstSeq: seq(21), bytes: encodeRecords(entries(21, 22, 1), crc32) }], crc32, start);
    assert.equal(lowEpoch.corruptionFound, true);
    assert.match(lowEpoch.failure?.reason ?? '', /below the log's base epoch 2/);
  });

  it('names segments by their first seq', () => {
    assert.equal(segmentName(seq(1)), '00000000000000000001.seg');
    assert.equal(parseSegmentName('00000000000000381640.seg'), 381640);
    assert.equal(parseSegmentName('00000000000000000000.seg'), undefined);
    assert.equal(parseSegmentName('1.seg'), undefined);
    assert.equal(parseSegmentName('00000000000000000001.seg.tmp'), undefined);
  });
});
