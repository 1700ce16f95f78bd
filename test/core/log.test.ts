// Tests of the in-memory log view (src/core/log.ts): a model-based property test against a plain
// array for every layout of hot entries and frozen chunks, and what freezing saves.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { AssertionError } from '../../src/lib/assert.ts';
import { LogView, type LogViewOptions } from '../../src/core/log.ts';
import { write as writeArbitrary } from '../../src/protocol/arbitraries.test-support.ts';
import type { Epoch, LogEntry, Write } from '../../src/protocol/types.ts';
import { epoch, seq } from '../../src/protocol/types.ts';

type Step =
  | { kind: 'append'; count: number; epochStep: number; write: Write; withSession: boolean }
  | { kind: 'compact'; position: Position }
  | { kind: 'truncate'; position: Position }
  | { kind: 'reset'; gap: number };

/** A place in the log: a fraction of its length, or a few entries from its start or its end (where chunk edges are). */
type Position = { fraction: number } | { fromStart: number } | { fromEnd: number };
const position: fc.Arbitrary<Position> = fc.oneof(
  fc.record({ fraction: fc.double({ min: 0, max: 1, noNaN: true }) }),
  fc.record({ fromStart: fc.nat(8) }),
  fc.record({ fromEnd: fc.nat(8) }),
);

const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('append' as const), count: fc.integer({ min: 1, max: 12 }), epochStep: fc.integer({ min: 0, max: 2 }), write: writeArbitrary, withSession: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('compact' as const), position }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('truncate' as const), position }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reset' as const), gap: fc.integer({ min: 0, max: 5 }) }) },
);

const layout: fc.Arbitrary<LogViewOptions> = fc.record({
  hotEntries: fc.integer({ min: 0, max: 6 }),
  chunkEntries: fc.integer({ min: 1, max: 5 }),
  // Small bounds leave some chunks unfrozen (their entries stay objects).
  chunkBytesMax: fc.oneof(fc.integer({ min: 0, max: 400 }), fc.constant(64 * 1024 * 1024)),
});

/** The plain model: an array of entries from firstSeq, and the epoch below it. */
interface Model {
  entries: LogEntry[];
  firstSeq: number;
  baseEpoch: Epoch;
}

const modelLastSeq = (model: Model): number => model.firstSeq + model.entries.length - 1;

/** The seq at `place`, from firstSeq − 1 (before every entry) to lastSeq. */
function seqAt(model: Model, place: Position): number {
  const length = model.entries.length;
  const offset = 'fraction' in place ? Math.floor(place.fraction * length) : 'fromStart' in place ? Math.min(place.fromStart, length) : Math.max(0, length - place.fromEnd);
  return model.firstSeq - 1 + offset;
}
const modelEpochAt = (model: Model, at: number): Epoch | undefined =>
  (at === model.firstSeq - 1 ? model.baseEpoch : model.entries[at - model.firstSeq]?.epoch);

function checkSame(view: LogView, model: Model): void {
  const lastSeq = modelLastSeq(model);
  assert.equal(view.firstSeq, model.firstSeq, 'firstSeq');
  assert.equal(view.lastSeq, lastSeq, 'lastSeq');
  assert.equal(view.length, model.entries.length, 'length');
  assert.equal(view.startEpoch, model.baseEpoch, 'startEpoch');
  assert.equal(view.lastEpoch, modelEpochAt(model, lastSeq) ?? model.baseEpoch, 'lastEpoch');
  for (let at = model.firstSeq - 2; at <= lastSeq + 1; at++) {
    assert.equal(view.epochAt(at), modelEpochAt(model, at), `epochAt(${at})`);
    assert.deepEqual(view.entry(at), model.entries[at - model.firstSeq], `entry(${at})`);
  }
  assert.deepEqual(view.slice(model.firstSeq - 1, lastSeq + 1), model.entries, 'the whole slice');
  const middle = Math.floor((model.firstSeq + lastSeq) / 2);
  assert.deepEqual(view.slice(middle, lastSeq), model.entries.slice(middle - model.firstSeq), 'a tail slice');
  assert.deepEqual(view.slice(model.firstSeq, middle), model.entries.slice(0, middle - model.firstSeq + 1), 'a head slice');
  for (let limit = 0; limit <= (view.lastEpoch as number) + 1; limit++) {
    let end = model.firstSeq - 1;
    for (const entry of model.entries) if (entry.epoch <= limit) end = entry.seq;
    assert.equal(view.endOfEpoch(limit), end, `endOfEpoch(${limit})`);
  }
}

describe('LogView', () => {
  it('reads, appends, compacts, truncates and resets like a plain array, in every layout of hot and frozen entries', () => {
    fc.assert(fc.property(layout, fc.array(step, { maxLength: 40 }), (options, steps) => {
      const model: Model = { entries: [], firstSeq: 1, baseEpoch: epoch(0) };
      const view = new LogView([], seq(1), epoch(0), options);
      let currentEpoch = 1;
      for (const action of steps) {
        const lastSeq = modelLastSeq(model);
        switch (action.kind) {
          case 'append': {
            currentEpoch += action.epochStep;
            // Plain objects, as the codec decodes them (the arbitrary may build null-prototype ones).
            const write = structuredClone(action.write);
            for (let i = 0; i < action.count; i++) {
              const entry: LogEntry = action.withSession
                ? { epoch: epoch(currentEpoch), seq: seq(modelLastSeq(model) + 1), write, session: { clientId: 'c', requestId: i + 1 } }
                : { epoch: epoch(currentEpoch), seq: seq(modelLastSeq(model) + 1), write };
              model.entries.push(entry);
              view.append(entry);
            }
            break;
          }
          case 'compact': {
            const through = seqAt(model, action.position);
            if (through < model.firstSeq) break;
            model.baseEpoch = modelEpochAt(model, through) as Epoch;
            model.entries = model.entries.slice(through - model.firstSeq + 1);
            model.firstSeq = through + 1;
            view.compact(through);
            // Compaction lets go of every chunk it emptied: what stays below firstSeq is part of one chunk.
            assert.ok(view.heldEntries - view.length < options.chunkEntries, `${view.heldEntries} entries held for ${view.length}`);
            break;
          }
          case 'truncate': {
            const after = seqAt(model, action.position);
            model.entries.length = after - model.firstSeq + 1;
            view.truncateAfter(after);
            currentEpoch = Math.max(currentEpoch, view.lastEpoch);
            break;
          }
          case 'reset': {
            const firstSeq = lastSeq + 1 + action.gap;
            model.entries = [];
            model.firstSeq = firstSeq;
            model.baseEpoch = epoch(currentEpoch);
            view.reset(seq(firstSeq), epoch(currentEpoch));
            break;
          }
        }
        checkSame(view, model);
      }
    }), { numRuns: 400 });
  });

  it('starts from recovered entries, freezing all but the newest', () => {
    const entries: LogEntry[] = Array.from({ length: 50 }, (_, i) => ({ epoch: epoch(1 + Math.floor(i / 20)), seq: seq(101 + i), write: { type: 'delete', key: `k${i}` } }));
    const view = new LogView(entries.slice(), seq(101), epoch(1), { hotEntries: 4, chunkEntries: 8, chunkBytesMax: 1 << 20 });
    checkSame(view, { entries, firstSeq: 101, baseEpoch: epoch(1) });
  });

  it('thaws a truncated chunk without the compacted entries it shares', () => {
    const view = new LogView([], seq(1), epoch(0), { hotEntries: 1, chunkEntries: 4, chunkBytesMax: 1 << 20 });
    const entries: LogEntry[] = Array.from({ length: 12 }, (_, i) => ({ epoch: epoch(1), seq: seq(i + 1), write: { type: 'delete', key: `k${i + 1}` } }));
    for (const entry of entries) view.append(entry);
    view.compact(2);
    view.truncateAfter(3);
    checkSame(view, { entries: entries.slice(2, 3), firstSeq: 3, baseEpoch: epoch(1) });
    view.append({ epoch: epoch(2), seq: seq(4), write: { type: 'delete', key: 'again' } });
    assert.equal(view.entry(2), undefined);
    assert.equal(view.length, 2);
  });

  it('leaves entries too large for a chunk as objects, and freezes again after them', () => {
    const view = new LogView([], seq(1), epoch(0), { hotEntries: 0, chunkEntries: 2, chunkBytesMax: 1000 });
    const large: LogEntry = { epoch: epoch(1), seq: seq(1), write: { type: 'put', key: 'big', value: new Uint8Array(2000) } };
    view.append(large);
    view.append({ epoch: epoch(1), seq: seq(2), write: { type: 'delete', key: 'a' } });
    const small: LogEntry = { epoch: epoch(1), seq: seq(3), write: { type: 'delete', key: 'b' } };
    view.append(small);
    assert.equal(view.entry(1), large, 'the large entry is still the appended object');
    view.compact(2);
    view.append({ epoch: epoch(1), seq: seq(4), write: { type: 'delete', key: 'c' } });
    const third = view.entry(3);
    assert.notEqual(third, small, 'frozen once the large entry was compacted');
    assert.deepEqual(third, small);
    assert.equal(view.heldEntries, 2);
  });

  it('holds retained entries in a few buffers, not an object graph per entry', () => {
    // Frozen entries are decoded on demand: each read builds new objects equal to what was appended.
    const appended: LogEntry = { epoch: epoch(1), seq: seq(1), write: { type: 'put', key: 'a', value: new Uint8Array([1, 2, 3]) }, session: { clientId: 'c', requestId: 1 } };
    const view = new LogView([], seq(1), epoch(0), { hotEntries: 1, chunkEntries: 2, chunkBytesMax: 1 << 20 });
    view.append(appended);
    assert.equal(view.entry(1), appended, 'a hot entry is the appended object');
    view.append({ epoch: epoch(1), seq: seq(2), write: { type: 'delete', key: 'b' } });
    view.append({ epoch: epoch(2), seq: seq(3), write: { type: 'delete', key: 'c' } });
    const frozen = view.entry(1);
    assert.notEqual(frozen, appended, 'a frozen entry is decoded');
    assert.deepEqual(frozen, appended);
  });

  it('still refuses an append that does not continue the log, hot or frozen', () => {
    const view = new LogView([], seq(1), epoch(0), { hotEntries: 0, chunkEntries: 1, chunkBytesMax: 1 << 20 });
    view.append({ epoch: epoch(2), seq: seq(1), write: { type: 'epochStart' } });
    assert.throws(() => view.append({ epoch: epoch(2), seq: seq(3), write: { type: 'epochStart' } }), AssertionError);
    assert.throws(() => view.append({ epoch: epoch(1), seq: seq(2), write: { type: 'epochStart' } }), AssertionError);
  });
});
