import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { LogEntry, Session, Write } from '../../src/protocol/types.ts';
import { epoch, seq } from '../../src/protocol/types.ts';
import { KvState, MemoryKvStore } from '../../src/core/kv.ts';
import type { Change } from '../../src/core/watch.ts';
import { ChangeRecorder, comparePositions } from '../../src/core/watch.ts';

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const text = (value: Uint8Array | undefined): string | undefined => value === undefined ? undefined : new TextDecoder().decode(value);

/** A state machine applying through a recorder, and the log it applies. */
class Rig {
  readonly store = new MemoryKvStore();
  readonly recorder: ChangeRecorder;
  readonly state: KvState;
  readonly log = new Map<number, LogEntry>();
  private lastSeq = 0;

  constructor(limits: { changesMax?: number; sessionsMax?: number } = {}) {
    this.recorder = new ChangeRecorder(this.store, { changesMax: limits.changesMax ?? 1_000_000 });
    this.state = new KvState(this.recorder.store, { sessionsMax: limits.sessionsMax ?? 100 });
  }

  append(write: Write, session?: Session): LogEntry {
    const entry: LogEntry = { epoch: epoch(1), seq: seq(++this.lastSeq), write };
    if (session !== undefined) entry.session = session;
    this.log.set(entry.seq, entry);
    return entry;
  }

  /** Append and apply the writes in one batch. */
  apply(...writes: Write[]): void {
    this.state.apply(writes.map((write) => this.append(write)));
  }

  changes(): Change[] {
    const result: Change[] = [];
    for (let at = this.recorder.startPosition; at < this.recorder.endPosition; at++) result.push(this.recorder.changeAt(at) as Change);
    return result;
  }
}

const put = (key: string, value: string, condition: { ifVersion?: number; ifAbsent?: boolean } = {}): Write => ({ type: 'put', key, value: bytes(value), ...condition });
const del = (key: string, ifVersion?: number): Write => (ifVersion === undefined ? { type: 'delete', key } : { type: 'delete', key, ifVersion });

function summary(changes: Change[]): string[] {
  return changes.map((change) => `${change.seq}.${change.index}${change.last ? '!' : ''} ${change.type} ${change.key}${change.type === 'put' ? `=${text(change.value)}` : ''}`);
}

describe('ChangeRecorder', () => {
  it('records what each entry changed, decided against the state before it', () => {
    const rig = new Rig();
    rig.apply(put('a', '1'), put('b', '1'), { type: 'epochStart' });
    rig.apply(
      put('a', '2', { ifVersion: 1 }), // holds: a is at version 1
      put('a', '3', { ifVersion: 1 }), // fails: a is at version 4 by now
      put('b', 'x', { ifAbsent: true }), // fails
      del('zz'), // absent: no change
      del('b', 2), // holds
      { type: 'txn', compares: [{ key: 'a', version: 4 }], success: [put('c', 't') as never, { type: 'delete', key: 'a' }, { type: 'delete', key: 'nope' }], failure: [] },
      { type: 'txn', compares: [{ key: 'a', version: 4 }], success: [], failure: [{ type: 'put', key: 'f', value: bytes('failure branch') }] },
    );
    assert.deepEqual(summary(rig.changes()), [
      '1.0! put a=1', '2.0! put b=1',
      '4.0! put a=2', '8.0! delete b',
      '9.0 put c=t', '9.1! delete a',
      '10.0! put f=failure branch',
    ]);
    assert.equal(rig.recorder.throughSeq, 10);
    assert.equal(rig.recorder.fromSeq, 0);
    for (const change of rig.changes()) assert.equal(change.version, change.seq);
  });

  it('records nothing for a retried request the state machine absorbs', () => {
    const rig = new Rig();
    const session = { clientId: 'c', requestId: 7 };
    rig.state.apply([rig.append(put('k', 'v'), session)]);
    rig.state.apply([rig.append(put('k', 'v'), session), rig.append(put('k', 'w'), { clientId: 'c', requestId: 8 })]);
    assert.deepEqual(summary(rig.changes()), ['1.0! put k=v', '3.0! put k=w']);
  });

  it('finds positions, forgets what the log compacted, and keeps at most changesMax changes', () => {
    const rig = new Rig({ changesMax: 5 });
    rig.apply(put('a', '1'), put('b', '1'));
    rig.apply({ type: 'txn', compares: [], success: [put('c', '1') as never, put('d', '1') as never], failure: [] });
    assert.equal(rig.recorder.positionAfter({ seq: 0 }), 0);
    assert.equal(rig.recorder.positionAfter({ seq: 2 }), 2);
    assert.equal(rig.recorder.positionAfter({ seq: 3, index: 0 }), 3);
    assert.equal(rig.recorder.positionAfter({ seq: 3 }), 4);
    assert.equal(rig.recorder.positionAfter({ seq: 99 }), 4);
    rig.recorder.forgetThrough(1);
    assert.equal(rig.recorder.fromSeq, 1);
    assert.equal(rig.recorder.startPosition, 1);
    assert.equal(rig.recorder.changeAt(0), undefined);
    assert.equal(rig.recorder.changeAt(1)?.key, 'b');
    // Past changesMax whole seqs go: the two-change seq 3 must go together, never half of it.
    rig.apply(put('e', '1'), put('f', '1'));
    rig.apply({ type: 'txn', compares: [], success: [put('g', '1') as never, put('h', '1') as never], failure: [] });
    assert.ok(rig.recorder.endPosition - rig.recorder.startPosition <= 5);
    assert.equal(rig.recorder.fromSeq, 3);
    assert.deepEqual(summary(rig.changes()), ['4.0! put e=1', '5.0! put f=1', '6.0 put g=1', '6.1! put h=1']);
    // Forgetting beyond what was applied stops at what was applied.
    rig.recorder.forgetThrough(1000);
    assert.equal(rig.recorder.fromSeq, 6);
    assert.equal(rig.recorder.endPosition, rig.recorder.startPosition);
  });

  it('starts a new generation when the state is reset or replaced by a snapshot', () => {
    const rig = new Rig();
    rig.apply(put('a', '1'));
    const generation = rig.recorder.generation;
    rig.state.reset();
    assert.equal(rig.recorder.generation, generation + 1);
    assert.equal(rig.recorder.fromSeq, 0);
    assert.equal(rig.changes().length, 0);
    // An install: chunks at appliedSeq 0, then the position; none of it is an entry.
    rig.state.installChunk({ items: [{ key: 'x', value: bytes('1'), version: 40 }], sessions: [] });
    rig.state.finishSnapshot(seq(41), epoch(2));
    assert.equal(rig.recorder.fromSeq, 41);
    assert.equal(rig.recorder.throughSeq, 41);
    const entry: LogEntry = { epoch: epoch(2), seq: seq(42), write: put('x', '2', { ifVersion: 40 }) };
    rig.log.set(42, entry);
    rig.state.apply([entry]);
    assert.deepEqual(summary(rig.changes()), ['42.0! put x=2']);
  });

  it('orders positions with a whole seq after each of its changes', () => {
    assert.ok(comparePositions({ seq: 3, index: 9 }, { seq: 3 }) < 0);
    assert.ok(comparePositions({ seq: 3 }, { seq: 3, index: 0 }) > 0);
    assert.ok(comparePositions({ seq: 2 }, { seq: 3, index: 0 }) < 0);
    assert.equal(comparePositions({ seq: 3, index: 1 }, { seq: 3, index: 1 }), 0);
  });

  it('records the same changes however the entries are batched, and they rebuild the state (property)', () => {
    const keys = ['a', 'b', 'c'];
    const writeArbitrary: fc.Arbitrary<{ write: Write; session?: Session }> = fc.oneof(
      fc.record({ key: fc.constantFrom(...keys), value: fc.string({ maxLength: 3 }), ifVersion: fc.option(fc.nat(12), { nil: undefined }) })
        .map(({ key, value, ifVersion }) => ({ write: put(key, value, ifVersion === undefined ? {} : { ifVersion }) })),
      fc.record({ key: fc.constantFrom(...keys), ifVersion: fc.option(fc.nat(12), { nil: undefined }) }).map(({ key, ifVersion }) => ({ write: del(key, ifVersion) })),
      fc.record({
        compares: fc.array(fc.record({ key: fc.constantFrom(...keys), version: fc.nat(12) }), { maxLength: 2 }),
        success: fc.array(fc.oneof(
          fc.record({ key: fc.constantFrom(...keys), value: fc.string({ maxLength: 2 }) }).map(({ key, value }) => ({ type: 'put' as const, key, value: bytes(value) })),
          fc.constantFrom(...keys).map((key) => ({ type: 'delete' as const, key })),
        ), { maxLength: 3 }),
      }).map(({ compares, success }) => ({ write: { type: 'txn', compares, success, failure: [{ type: 'put', key: 'a', value: bytes('f') }] } as Write })),
    ).chain((item) => fc.option(fc.record({ clientId: fc.constantFrom('p', 'q'), requestId: fc.integer({ min: 1, max: 4 }) }), { nil: undefined })
      .map((session) => (session === undefined ? item : { ...item, session })));
    fc.assert(fc.property(fc.array(writeArbitrary, { maxLength: 30 }), fc.array(fc.integer({ min: 1, max: 5 }), { maxLength: 30 }), (writes, cuts) => {
      const run = (batchSizes: number[]): { changes: string[]; store: MemoryKvStore } => {
        const rig = new Rig({ sessionsMax: 1 });
        const entries = writes.map(({ write, session }) => rig.append(write, session));
        let at = 0;
        for (const size of batchSizes) {
          if (at >= entries.length) break;
          rig.state.apply(entries.slice(at, at + size));
          at += size;
        }
        if (at < entries.length) rig.state.apply(entries.slice(at));
        return { changes: summary(rig.changes()), store: rig.store };
      };
      const one = run(writes.map(() => 1));
      const batched = run(cuts);
      assert.deepEqual(batched.changes, one.changes);
      // Folding the changes gives the state, versions included.
      const rebuilt = new Map<string, string>();
      const rig = new Rig({ sessionsMax: 1 });
      const entries = writes.map(({ write, session }) => rig.append(write, session));
      if (entries.length > 0) rig.state.apply(entries);
      for (const change of rig.changes()) {
        if (change.type === 'put') rebuilt.set(change.key, `${text(change.value)}@${change.version}`);
        else {
          // A delete is reported only when a reader could see it: the key existed just before.
          assert.ok(rebuilt.has(change.key) && rebuilt.get(change.key) !== 'deleted', `seq ${change.seq} deletes ${change.key}, which did not exist`);
          rebuilt.set(change.key, 'deleted');
        }
      }
      for (const key of keys) {
        const stored = rig.store.get(key);
        const expected = stored === undefined ? undefined : `${text(stored.value)}@${stored.version}`;
        const folded = rebuilt.get(key);
        assert.equal(folded === 'deleted' ? undefined : folded, expected, `key ${key}`);
      }
    }), { numRuns: 300 });
  });
});
