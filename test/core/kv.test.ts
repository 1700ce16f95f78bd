// Tests of the key-value state machine (SPEC.md sections 3 and 9): a model-based property test
// against a plain Map oracle, client sessions and their bounded table, determinism across batch
// splits and restarts, the seq assertions of apply, and range.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';

import { AssertionError } from '../../src/lib/assert.ts';
import type { Compare, LogEntry, Operation, Session, Write, WriteResult } from '../../src/protocol/types.ts';
import { epoch, seq } from '../../src/protocol/types.ts';
import type { ApplyOutcome, KvLimits, SessionRecord, StoredValue } from '../../src/core/kv.ts';
import { KvState, MemoryKvStore } from '../../src/core/kv.ts';

// ---------------------------------------------------------------------------------------------
// Helpers

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

function entry(at: number, write: Write, session?: Session, ep = 1): LogEntry {
  const result: LogEntry = { epoch: epoch(ep), seq: seq(at), write };
  if (session !== undefined) result.session = session;
  return result;
}

const put = (key: string, value: string, extra: { ifVersion?: number; ifAbsent?: boolean } = {}): Write =>
  ({ type: 'put', key, value: bytes(value), ...extra });
const del = (key: string, ifVersion?: number): Write =>
  (ifVersion === undefined ? { type: 'delete', key } : { type: 'delete', key, ifVersion });

/** Every key of a store with its value and version, in key order. */
function dumpData(store: MemoryKvStore): [string, StoredValue][] {
  return [...store.data.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/** Every persisted session record, in clientId order. */
function dumpSessions(store: MemoryKvStore): SessionRecord[] {
  return [...store.sessionRecords.values()].sort((a, b) => (a.clientId < b.clientId ? -1 : 1));
}

function decode(value: Uint8Array | undefined): string | undefined {
  return value === undefined ? undefined : new TextDecoder().decode(value);
}

// ---------------------------------------------------------------------------------------------
// The oracle: a plain Map of keys and an LRU Map of sessions, written from SPEC.md, not from kv.ts.

interface OracleSession {
  clientId: string;
  requestId: number;
  result: WriteResult;
  lastSeq: number;
}

class Oracle {
  readonly data = new Map<string, StoredValue>();
  /** Insertion order = least recently applied first. */
  readonly sessions = new Map<string, OracleSession>();
  appliedSeq = 0;

  constructor(private readonly sessionsMax: number) {}

  version(key: string): number {
    return this.data.get(key)?.version ?? 0;
  }

  apply(e: LogEntry): ApplyOutcome {
    assert.equal(e.seq, this.appliedSeq + 1, 'test generator bug: oracle entries must be consecutive');
    this.appliedSeq = e.seq;
    if (e.session !== undefined) {
      const record = this.sessions.get(e.session.clientId);
      if (record !== undefined && e.session.requestId <= record.requestId) {
        return { seq: e.seq, result: record.result, duplicate: true };
      }
    }
    const result = this.decide(e);
    if (e.session !== undefined) {
      const { clientId, requestId } = e.session;
      this.sessions.delete(clientId);
      this.sessions.set(clientId, { clientId, requestId, result, lastSeq: e.seq });
      while (this.sessions.size > this.sessionsMax) {
        const [oldest] = this.sessions.keys();
        this.sessions.delete(oldest as string);
      }
    }
    return { seq: e.seq, result, duplicate: false };
  }

  private decide(e: LogEntry): WriteResult {
    const w = e.write;
    const at = e.seq;
    const ep = e.epoch;
    switch (w.type) {
      case 'epochStart':
      case 'configChange':
        return { status: 'ok', seq: at, epoch: ep, version: 0 };
      case 'put': {
        const current = this.version(w.key);
        const present = this.data.has(w.key);
        if ((w.ifAbsent === true && present) || (w.ifVersion !== undefined && w.ifVersion !== current)) {
          return { status: 'preconditionFailed', seq: at, epoch: ep, version: current };
        }
        this.data.set(w.key, { value: w.value, version: at });
        return { status: 'ok', seq: at, epoch: ep, version: at };
      }
      case 'delete': {
        const current = this.version(w.key);
        if (w.ifVersion !== undefined && w.ifVersion !== current) {
          return { status: 'preconditionFailed', seq: at, epoch: ep, version: current };
        }
        this.data.delete(w.key);
        return { status: 'ok', seq: at, epoch: ep, version: at };
      }
      case 'txn': {
        // All compares are evaluated against the state before any operation of the txn.
        const succeeded = w.compares.every((c) => this.version(c.key) === c.version);
        for (const op of succeeded ? w.success : w.failure) {
          if (op.type === 'put') this.data.set(op.key, { value: op.value, version: at });
          else this.data.delete(op.key);
        }
        return { status: 'txn', seq: at, epoch: ep, succeeded };
      }
    }
  }

  dumpData(): [string, StoredValue][] {
    return [...this.data.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  }

  dumpSessions(): SessionRecord[] {
    return [...this.sessions.values()]
      .sort((a, b) => (a.clientId < b.clientId ? -1 : 1))
      .map((s) => ({ clientId: s.clientId, requestId: s.requestId, result: s.result, lastSeq: seq(s.lastSeq) }));
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Model-based property test

const KEYS = ['a', 'b', 'c', 'a/x'] as const;
const CLIENTS = ['c0', 'c1', 'c2', 'c3'] as const;

/** How a condition's version is chosen, resolved against the oracle when the entry is built. */
type VersionChoice = 'current' | 'absent' | 'wrong' | number;
type AbstractOp = { type: 'put'; key: string; value: number } | { type: 'delete'; key: string };
type AbstractWrite =
  | { type: 'put'; key: string; value: number; ifVersion: VersionChoice | undefined; ifAbsent: boolean | undefined }
  | { type: 'delete'; key: string; ifVersion: VersionChoice | undefined }
  | { type: 'txn'; compares: { key: string; version: VersionChoice }[]; success: AbstractOp[]; failure: AbstractOp[] }
  | { type: 'epochStart' };
interface AbstractEntry {
  write: AbstractWrite;
  session: { client: number; request: 'next' | 'same' | 'older' } | undefined;
}
interface AbstractBatch {
  entries: AbstractEntry[];
  restart: boolean;
}

const keyArb = fc.constantFrom(...KEYS);
const versionChoiceArb: fc.Arbitrary<VersionChoice> = fc.oneof(
  { arbitrary: fc.constant<VersionChoice>('current'), weight: 4 },
  { arbitrary: fc.constant<VersionChoice>('absent'), weight: 2 },
  { arbitrary: fc.constant<VersionChoice>('wrong'), weight: 2 },
  { arbitrary: fc.integer({ min: 0, max: 40 }), weight: 1 },
);
const abstractOpArb: fc.Arbitrary<AbstractOp> = fc.oneof(
  fc.record({ type: fc.constant('put' as const), key: keyArb, value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ type: fc.constant('delete' as const), key: keyArb }),
);
const abstractWriteArb: fc.Arbitrary<AbstractWrite> = fc.oneof(
  { arbitrary: fc.record({
    type: fc.constant('put' as const), key: keyArb, value: fc.integer({ min: 0, max: 255 }),
    ifVersion: fc.option(versionChoiceArb, { nil: undefined, freq: 2 }),
    ifAbsent: fc.option(fc.boolean(), { nil: undefined, freq: 2 }),
  }), weight: 5 },
  { arbitrary: fc.record({
    type: fc.constant('delete' as const), key: keyArb,
    ifVersion: fc.option(versionChoiceArb, { nil: undefined, freq: 2 }),
  }), weight: 3 },
  { arbitrary: fc.record({
    type: fc.constant('txn' as const),
    compares: fc.array(fc.record({ key: keyArb, version: versionChoiceArb }), { maxLength: 3 }),
    success: fc.array(abstractOpArb, { maxLength: 3 }),
    failure: fc.array(abstractOpArb, { maxLength: 3 }),
  }), weight: 3 },
  { arbitrary: fc.constant({ type: 'epochStart' as const }), weight: 1 },
);
const abstractEntryArb: fc.Arbitrary<AbstractEntry> = fc.record({
  write: abstractWriteArb,
  session: fc.option(fc.record({
    client: fc.integer({ min: 0, max: CLIENTS.length - 1 }),
    request: fc.constantFrom('next' as const, 'next' as const, 'same' as const, 'older' as const),
  }), { nil: undefined, freq: 3 }),
});
const batchesArb: fc.Arbitrary<AbstractBatch[]> = fc.array(
  fc.record({
    entries: fc.array(abstractEntryArb, { minLength: 1, maxLength: 6 }),
    restart: fc.boolean(),
  }),
  { minLength: 1, maxLength: 15 },
);

describe('KvState model-based', () => {
  it('matches a Map oracle on random entry sequences applied in random batches', () => {
    fc.assert(
      fc.property(batchesArb, fc.integer({ min: 1, max: 3 }), (batches, sessionsMax) => {
        const limits: KvLimits = { sessionsMax };
        const store = new MemoryKvStore();
        let kv = new KvState(store, limits);
        const oracle = new Oracle(sessionsMax);
        const issued = new Map<string, number>();
        let currentEpoch = 1;
        let nextSeq = 1;

        const resolveVersion = (choice: VersionChoice, key: string): number => {
          if (choice === 'current') return oracle.version(key);
          if (choice === 'absent') return 0;
          if (choice === 'wrong') return oracle.version(key) + 1;
          return choice;
        };
        const concreteOp = (op: AbstractOp): Operation =>
          (op.type === 'put' ? { type: 'put', key: op.key, value: Uint8Array.of(op.value) } : { type: 'delete', key: op.key });
        const concreteWrite = (w: AbstractWrite): Write => {
          switch (w.type) {
            case 'put': {
              const write: Write = { type: 'put', key: w.key, value: Uint8Array.of(w.value) };
              if (w.ifVersion !== undefined) write.ifVersion = resolveVersion(w.ifVersion, w.key);
              if (w.ifAbsent !== undefined) write.ifAbsent = w.ifAbsent;
              return write;
            }
            case 'delete': {
              const write: Write = { type: 'delete', key: w.key };
              if (w.ifVersion !== undefined) write.ifVersion = resolveVersion(w.ifVersion, w.key);
              return write;
            }
            case 'txn': {
              const compares: Compare[] = w.compares.map((c) => ({ key: c.key, version: resolveVersion(c.version, c.key) }));
              return { type: 'txn', compares, success: w.success.map(concreteOp), failure: w.failure.map(concreteOp) };
            }
            case 'epochStart':
              return { type: 'epochStart' };
          }
        };
        const concreteSession = (s: AbstractEntry['session']): Session | undefined => {
          if (s === undefined) return undefined;
          const clientId = CLIENTS[s.client] as string;
          const last = issued.get(clientId) ?? 0;
          let requestId: number;
          if (s.request === 'next' || last === 0) requestId = last + 1;
          else if (s.request === 'same') requestId = last;
          else requestId = Math.max(1, last - 1);
          issued.set(clientId, Math.max(last, requestId));
          return { clientId, requestId };
        };

        for (const batch of batches) {
          if (batch.restart) kv = new KvState(store, limits);
          const entries: LogEntry[] = [];
          const expected: ApplyOutcome[] = [];
          for (const abstract of batch.entries) {
            if (abstract.write.type === 'epochStart') currentEpoch += 1;
            const e: LogEntry = { epoch: epoch(currentEpoch), seq: seq(nextSeq), write: concreteWrite(abstract.write) };
            nextSeq += 1;
            const session = abstract.write.type === 'epochStart' ? undefined : concreteSession(abstract.session);
            if (session !== undefined) e.session = session;
            entries.push(e);
            expected.push(oracle.apply(e)); // Resolved against the state before e, then applied.
          }

          const outcomes = kv.apply(entries);

          assert.deepEqual(outcomes, expected);
          assert.equal(kv.appliedSeq, oracle.appliedSeq);
          assert.equal(store.appliedSeq(), oracle.appliedSeq);
          assert.deepEqual(dumpData(store), oracle.dumpData());
          for (const key of KEYS) assert.deepEqual(kv.get(key), oracle.data.get(key), `key ${key}`);
          assert.deepEqual(
            kv.range('', 100),
            oracle.dumpData().map(([key, stored]) => ({ key, value: stored.value, version: stored.version })),
          );
          assert.deepEqual(dumpSessions(store), oracle.dumpSessions());
          for (const clientId of CLIENTS) {
            const requestId = issued.get(clientId) ?? 1;
            const record = oracle.sessions.get(clientId);
            const want = record !== undefined && record.requestId === requestId ? record.result : undefined;
            assert.deepEqual(kv.sessionResult({ clientId, requestId }), want, `sessionResult ${clientId}`);
          }
        }
      }),
      { numRuns: 400 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// 2. Sessions

describe('KvState sessions', () => {
  it('a retry of the same request changes nothing and returns the recorded result', () => {
    const store = new MemoryKvStore();
    const kv = new KvState(store, { sessionsMax: 10 });
    const s1: Session = { clientId: 'alice', requestId: 1 };

    const [first] = kv.apply([entry(1, put('x', 'one'), s1, 3)]);
    const original: WriteResult = { status: 'ok', seq: seq(1), epoch: epoch(3), version: 1 };
    assert.deepEqual(first, { seq: seq(1), result: original, duplicate: false });

    kv.apply([entry(2, put('x', 'two'), undefined, 4)]);
    // The retry arrives later, in another epoch, with a different body: it must not be applied.
    const [retry] = kv.apply([entry(3, put('x', 'three'), s1, 4)]);
    assert.deepEqual(retry, { seq: seq(3), result: original, duplicate: true });
    assert.equal(kv.appliedSeq, 3);
    assert.equal(decode(kv.get('x')?.value), 'two');
    assert.equal(kv.get('x')?.version, 2);
    assert.deepEqual(kv.sessionResult(s1), original);
    assert.deepEqual(dumpSessions(store), [{ clientId: 'alice', requestId: 1, result: original, lastSeq: seq(1) }]);
  });

  it('a retried failed condition returns the recorded failure even if it would now succeed', () => {
    const kv = new KvState(new MemoryKvStore(), { sessionsMax: 10 });
    const s: Session = { clientId: 'bob', requestId: 7 };
    kv.apply([entry(1, put('k', 'v1'))]);
    const [failed] = kv.apply([entry(2, put('k', 'mine', { ifAbsent: true }), s)]);
    const recorded: WriteResult = { status: 'preconditionFailed', seq: seq(2), epoch: epoch(1), version: 1 };
    assert.deepEqual(failed, { seq: seq(2), result: recorded, duplicate: false });
    kv.apply([entry(3, del('k'))]);
    assert.equal(kv.get('k'), undefined);
    const [retry] = kv.apply([entry(4, put('k', 'mine', { ifAbsent: true }), s)]);
    assert.deepEqual(retry, { seq: seq(4), result: recorded, duplicate: true });
    assert.equal(kv.get('k'), undefined);
  });

  it('an older request is absorbed and a newer one applies', () => {
    const store = new MemoryKvStore();
    const kv = new KvState(store, { sessionsMax: 10 });
    kv.apply([entry(1, put('x', 'r1'), { clientId: 'c', requestId: 1 })]);
    const [r2] = kv.apply([entry(2, put('x', 'r2'), { clientId: 'c', requestId: 2 })]);
    assert.deepEqual(r2, { seq: seq(2), result: { status: 'ok', seq: seq(2), epoch: epoch(1), version: 2 }, duplicate: false });

    const [older] = kv.apply([entry(3, put('x', 'stale'), { clientId: 'c', requestId: 1 })]);
    assert.equal(older?.duplicate, true);
    assert.equal(older?.seq, 3);
    assert.equal(decode(kv.get('x')?.value), 'r2');
    assert.equal(kv.get('x')?.version, 2);
    assert.equal(kv.appliedSeq, 3);
    // The record still describes request 2; request 1 has no recorded result any more.
    assert.equal(kv.sessionResult({ clientId: 'c', requestId: 1 }), undefined);
    assert.deepEqual(kv.sessionResult({ clientId: 'c', requestId: 2 }), r2?.result);
    assert.deepEqual(dumpSessions(store).map((r) => [r.clientId, r.requestId, r.lastSeq]), [['c', 2, 2]]);

    const [r3] = kv.apply([entry(4, put('x', 'r3'), { clientId: 'c', requestId: 3 })]);
    assert.deepEqual(r3, { seq: seq(4), result: { status: 'ok', seq: seq(4), epoch: epoch(1), version: 4 }, duplicate: false });
    assert.equal(decode(kv.get('x')?.value), 'r3');
    assert.deepEqual(dumpSessions(store).map((r) => [r.clientId, r.requestId, r.lastSeq]), [['c', 3, 4]]);
  });

  it('retries inside one batch are absorbed too', () => {
    const kv = new KvState(new MemoryKvStore(), { sessionsMax: 10 });
    const s: Session = { clientId: 'c', requestId: 1 };
    const outcomes = kv.apply([
      entry(1, { type: 'txn', compares: [{ key: 'n', version: 0 }], success: [{ type: 'put', key: 'n', value: bytes('1') }], failure: [] }, s),
      entry(2, { type: 'txn', compares: [{ key: 'n', version: 0 }], success: [{ type: 'put', key: 'n', value: bytes('2') }], failure: [] }, s),
    ]);
    const result: WriteResult = { status: 'txn', seq: seq(1), epoch: epoch(1), succeeded: true };
    assert.deepEqual(outcomes, [
      { seq: seq(1), result, duplicate: false },
      { seq: seq(2), result, duplicate: true },
    ]);
    assert.equal(decode(kv.get('n')?.value), '1');
    assert.equal(kv.get('n')?.version, 1);
    assert.equal(kv.appliedSeq, 2);
  });

  it('evicts the least recently applied client beyond sessionsMax, identically after a restart', () => {
    const limits: KvLimits = { sessionsMax: 3 };
    const store = new MemoryKvStore();
    const kv = new KvState(store, limits);
    // A reference instance that is never restarted, fed the same entries.
    const referenceStore = new MemoryKvStore();
    const reference = new KvState(referenceStore, limits);
    const feed = (entries: LogEntry[]): ApplyOutcome[] => {
      const outcomes = kv.apply(entries);
      assert.deepEqual(reference.apply(entries), outcomes);
      return outcomes;
    };
    feed([
      entry(1, put('k', 'A1'), { clientId: 'A', requestId: 1 }),
      entry(2, put('k', 'B1'), { clientId: 'B', requestId: 1 }),
      entry(3, put('k', 'C1'), { clientId: 'C', requestId: 1 }),
    ]);
    feed([entry(4, put('k', 'A2'), { clientId: 'A', requestId: 2 })]); // A is now the most recent.
    feed([entry(5, put('k', 'D1'), { clientId: 'D', requestId: 1 })]); // Evicts B, not A.
    const clients = (s: MemoryKvStore): [string, number, number][] =>
      dumpSessions(s).map((r) => [r.clientId, r.requestId, r.lastSeq]);
    assert.deepEqual(clients(store), [['A', 2, 4], ['C', 1, 3], ['D', 1, 5]]);
    assert.equal(kv.sessionResult({ clientId: 'B', requestId: 1 }), undefined);
    assert.deepEqual(kv.sessionResult({ clientId: 'C', requestId: 1 }), { status: 'ok', seq: seq(3), epoch: epoch(1), version: 3 });

    // Restart: a new KvState over the same store, twice, while the reference keeps running.
    const rest: LogEntry[] = [
      entry(6, put('k', 'E1'), { clientId: 'E', requestId: 1 }), // Evicts C (lastSeq 3).
      entry(7, put('k', 'D1-retry'), { clientId: 'D', requestId: 1 }), // Duplicate, absorbed.
      entry(8, put('k', 'F1'), { clientId: 'F', requestId: 1 }), // Evicts A (lastSeq 4).
    ];
    const restarted = new KvState(store, limits);
    assert.deepEqual(restarted.sessionResult({ clientId: 'D', requestId: 1 }), { status: 'ok', seq: seq(5), epoch: epoch(1), version: 5 });
    const restartedOutcomes = restarted.apply(rest.slice(0, 1));
    assert.deepEqual(clients(store), [['A', 2, 4], ['D', 1, 5], ['E', 1, 6]]);
    restartedOutcomes.push(...new KvState(store, limits).apply(rest.slice(1)));
    const referenceOutcomes = reference.apply(rest);

    assert.deepEqual(restartedOutcomes, referenceOutcomes);
    assert.deepEqual(referenceOutcomes.map((o) => o.duplicate), [false, true, false]);
    assert.deepEqual(clients(store), [['D', 1, 5], ['E', 1, 6], ['F', 1, 8]]);
    assert.deepEqual(dumpSessions(store), dumpSessions(referenceStore));
    assert.deepEqual(dumpData(store), dumpData(referenceStore));
    assert.equal(store.appliedSeq(), 8);
    assert.equal(decode(store.data.get('k')?.value), 'F1');

    // The evicted B is forgotten: its old request applies again (the documented cost of the bound).
    const [bAgain] = new KvState(store, limits).apply([entry(9, put('k', 'B1'), { clientId: 'B', requestId: 1 })]);
    assert.equal(bAgain?.duplicate, false);
    assert.deepEqual(clients(store), [['B', 1, 9], ['E', 1, 6], ['F', 1, 8]]); // D (lastSeq 5) evicted.
  });

  it('restart loads the table in recency order, not in store order', () => {
    const limits: KvLimits = { sessionsMax: 2 };
    // A store whose loadSessions returns records newest first.
    const store = new MemoryKvStore();
    const ok = (at: number): WriteResult => ({ status: 'ok', seq: seq(at), epoch: epoch(1), version: at });
    store.commit({
      keys: new Map(),
      sessions: new Map<string, SessionRecord>([
        ['new', { clientId: 'new', requestId: 1, result: ok(2), lastSeq: seq(2) }],
        ['old', { clientId: 'old', requestId: 1, result: ok(1), lastSeq: seq(1) }],
      ]),
      appliedSeq: seq(2), appliedEpoch: epoch(1),
    });
    const kv = new KvState(store, limits);
    kv.apply([entry(3, put('k', 'v'), { clientId: 'third', requestId: 1 })]);
    assert.deepEqual([...store.sessionRecords.keys()].sort(), ['new', 'third']);
  });
});

// ---------------------------------------------------------------------------------------------
// 3. Determinism

const concreteOpArb: fc.Arbitrary<Operation> = fc.oneof(
  fc.record({ type: fc.constant('put' as const), key: keyArb, value: fc.integer({ min: 0, max: 9 }).map((n) => Uint8Array.of(n)) }),
  fc.record({ type: fc.constant('delete' as const), key: keyArb }),
);
const smallVersion = fc.integer({ min: 0, max: 12 });
const concreteWriteArb: fc.Arbitrary<Write> = fc.oneof(
  fc.tuple(keyArb, fc.integer({ min: 0, max: 9 }), fc.option(smallVersion, { nil: undefined }), fc.boolean())
    .map(([key, v, ifVersion, ifAbsent]): Write => {
      const write: Write = { type: 'put', key, value: Uint8Array.of(v) };
      if (ifVersion !== undefined) write.ifVersion = ifVersion;
      if (ifAbsent) write.ifAbsent = true;
      return write;
    }),
  fc.tuple(keyArb, fc.option(smallVersion, { nil: undefined })).map(([key, ifVersion]) => del(key, ifVersion)),
  fc.record({
    type: fc.constant('txn' as const),
    compares: fc.array(fc.record({ key: keyArb, version: smallVersion }), { maxLength: 2 }),
    success: fc.array(concreteOpArb, { maxLength: 3 }),
    failure: fc.array(concreteOpArb, { maxLength: 3 }),
  }),
  fc.constant<Write>({ type: 'epochStart' }),
);
const entriesArb: fc.Arbitrary<LogEntry[]> = fc.array(
  fc.tuple(concreteWriteArb, fc.option(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 1, max: 4 })), { nil: undefined })),
  { minLength: 1, maxLength: 40 },
).map((items) => items.map(([write, s], i) =>
  entry(i + 1, write, s === undefined ? undefined : { clientId: CLIENTS[s[0]] as string, requestId: s[1] })));

function split<T>(items: readonly T[], sizes: readonly number[]): T[][] {
  const parts: T[][] = [];
  let at = 0;
  for (let i = 0; at < items.length; i++) {
    const size = sizes.length === 0 ? items.length : (sizes[i % sizes.length] as number);
    parts.push(items.slice(at, at + size));
    at += size;
  }
  return parts;
}

describe('KvState determinism', () => {
  it('ends in identical stores whatever the batch split, with or without restarts', () => {
    const sizesArb = fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 6 });
    fc.assert(
      fc.property(entriesArb, sizesArb, sizesArb, fc.integer({ min: 1, max: 3 }), (entries, sizesA, sizesB, sessionsMax) => {
        const limits: KvLimits = { sessionsMax };
        const storeA = new MemoryKvStore();
        const kvA = new KvState(storeA, limits);
        const outcomesA = split(entries, sizesA).flatMap((part) => kvA.apply(part));

        const storeB = new MemoryKvStore();
        const outcomesB: ApplyOutcome[] = [];
        for (const part of split(entries, sizesB)) {
          // Restart before every batch: a new KvState over the same store.
          outcomesB.push(...new KvState(storeB, limits).apply(part));
        }

        const storeC = new MemoryKvStore();
        const kvC = new KvState(storeC, limits);
        const outcomesC = entries.flatMap((e) => kvC.apply([e]));

        for (const [store, outcomes] of [[storeB, outcomesB], [storeC, outcomesC]] as const) {
          assert.deepEqual(outcomes, outcomesA);
          assert.deepEqual(dumpData(store), dumpData(storeA));
          assert.deepEqual(dumpSessions(store), dumpSessions(storeA));
          assert.equal(store.appliedSeq(), storeA.appliedSeq());
        }
        assert.equal(storeA.appliedSeq(), entries.length);
        assert.ok(dumpSessions(storeA).length <= sessionsMax);
      }),
      { numRuns: 300 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// 4. Assertions

describe('KvState apply assertions', () => {
  it('throws when an entry does not follow appliedSeq, and changes nothing', () => {
    const store = new MemoryKvStore();
    const kv = new KvState(store, { sessionsMax: 4 });
    assert.throws(() => kv.apply([entry(2, put('a', 'x'))]), AssertionError);
    assert.throws(() => kv.apply([entry(0, put('a', 'x'))]), AssertionError);
    assert.equal(kv.appliedSeq, 0);

    kv.apply([entry(1, put('a', '1')), entry(2, put('b', '2')), entry(3, put('c', '3'))]);
    const before = { data: dumpData(store), sessions: dumpSessions(store), applied: store.appliedSeq() };
    const bad: LogEntry[][] = [
      [entry(3, put('a', 'again'))], // Already applied.
      [entry(2, put('a', 'older'))],
      [entry(5, put('a', 'gap'))],
      [entry(4, put('a', 'ok')), entry(6, put('b', 'gap'))], // Gap in the middle of a batch.
      [entry(4, put('a', 'ok')), entry(4, put('b', 'twice'))],
      [entry(4, put('a', 'ok')), entry(5, put('b', 'ok')), entry(3, put('c', 'back'))],
    ];
    for (const entries of bad) {
      assert.throws(() => kv.apply(entries), AssertionError, `entries ${entries.map((e) => e.seq).join(',')}`);
      assert.deepEqual({ data: dumpData(store), sessions: dumpSessions(store), applied: store.appliedSeq() }, before);
      assert.equal(kv.appliedSeq, 3);
    }
    assert.deepEqual(kv.apply([]), []);
    const [next] = kv.apply([entry(4, put('a', '4'))]);
    assert.equal(next?.result.status, 'ok');
    assert.equal(kv.get('a')?.version, 4);
  });

  it('a rejected batch does not leak its session records into later applies', () => {
    const store = new MemoryKvStore();
    const kv = new KvState(store, { sessionsMax: 4 });
    const s: Session = { clientId: 'c', requestId: 1 };
    // Entry 1 is fine, entry 3 leaves a gap: the whole batch is rejected, nothing was applied.
    assert.throws(() => kv.apply([entry(1, put('k', 'v'), s), entry(3, put('z', 'gap'))]), AssertionError);
    assert.equal(kv.sessionResult(s), undefined, 'rejected request must not be recorded as applied');
    // Applying entry 1 for real must apply it, not absorb it as a retry.
    const [outcome] = kv.apply([entry(1, put('k', 'v'), s)]);
    assert.deepEqual(outcome, { seq: seq(1), result: { status: 'ok', seq: seq(1), epoch: epoch(1), version: 1 }, duplicate: false });
    assert.equal(decode(kv.get('k')?.value), 'v');
  });

  it('a rejected batch does not evict sessions from the in-memory table', () => {
    const store = new MemoryKvStore();
    const limits: KvLimits = { sessionsMax: 1 };
    const kv = new KvState(store, limits);
    const old: Session = { clientId: 'old', requestId: 1 };
    kv.apply([entry(1, put('k', 'old'), old)]);
    assert.throws(() => kv.apply([entry(2, put('k', 'new'), { clientId: 'new', requestId: 1 }), entry(4, put('z', 'gap'))]), AssertionError);
    // The state must equal a fresh load of the (unchanged) store.
    const fresh = new KvState(store, limits);
    assert.deepEqual(kv.sessionResult(old), fresh.sessionResult(old));
    const retry = entry(2, put('k', 'old-retry'), old);
    const [outcome] = kv.apply([retry]);
    assert.equal(outcome?.duplicate, true, 'retry of the recorded request must be absorbed');
    assert.equal(decode(kv.get('k')?.value), 'old');
  });
});

// ---------------------------------------------------------------------------------------------
// 5. range

describe('KvState range', () => {
  it('returns keys with the prefix in key order, with values and versions, at most limit', () => {
    const kv = new KvState(new MemoryKvStore(), { sessionsMax: 4 });
    kv.apply([
      entry(1, put('b', 'B')),
      entry(2, put('a/2', 'A2')),
      entry(3, put('a/10', 'A10')),
      entry(4, put('ab', 'AB')),
      entry(5, put('a/1', 'A1')),
      entry(6, put('a', 'A')),
      entry(7, { type: 'txn', compares: [], success: [{ type: 'put', key: 'a/3', value: bytes('A3') }, { type: 'delete', key: 'b' }], failure: [] }),
    ]);
    const view = (prefix: string, limit: number): string[] =>
      kv.range(prefix, limit).map((kv) => `${kv.key}=${decode(kv.value)}@${kv.version}`);

    assert.deepEqual(view('a/', 10), ['a/1=A1@5', 'a/10=A10@3', 'a/2=A2@2', 'a/3=A3@7']);
    assert.deepEqual(view('a/', 2), ['a/1=A1@5', 'a/10=A10@3']);
    assert.deepEqual(view('a', 100), ['a=A@6', 'a/1=A1@5', 'a/10=A10@3', 'a/2=A2@2', 'a/3=A3@7', 'ab=AB@4']);
    assert.deepEqual(view('', 3), ['a=A@6', 'a/1=A1@5', 'a/10=A10@3']);
    assert.deepEqual(view('a', 0), []);
    assert.deepEqual(view('b', 10), []); // Deleted by the txn.
    assert.deepEqual(view('zz', 10), []);
    assert.deepEqual(view('ab', 1), ['ab=AB@4']);
  });

  it('matches a sorted filter of the oracle on random stores', () => {
    const keyChars = fc.constantFrom('a', 'b', '/', 'B', '0');
    const keyStr = fc.string({ unit: keyChars, minLength: 1, maxLength: 4 });
    fc.assert(
      fc.property(
        fc.array(fc.tuple(keyStr, fc.boolean()), { minLength: 1, maxLength: 30 }),
        fc.string({ unit: keyChars, maxLength: 2 }),
        fc.integer({ min: 0, max: 12 }),
        (ops, prefix, limit) => {
          const kv = new KvState(new MemoryKvStore(), { sessionsMax: 1 });
          const model = new Map<string, number>();
          kv.apply(ops.map(([key, isPut], i) => entry(i + 1, isPut ? put(key, `v${i + 1}`) : del(key))));
          ops.forEach(([key, isPut], i) => (isPut ? model.set(key, i + 1) : model.delete(key)));
          const want = [...model.keys()].filter((k) => k.startsWith(prefix)).sort().slice(0, limit)
            .map((key) => ({ key, value: `v${model.get(key)}`, version: model.get(key) }));
          const got = kv.range(prefix, limit).map((item) => ({ key: item.key, value: decode(item.value), version: item.version }));
          assert.deepEqual(got, want);
        },
      ),
      { numRuns: 300 },
    );
  });
});
