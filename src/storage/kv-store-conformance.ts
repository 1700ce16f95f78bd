// The contract of KvStore (src/core/kv.ts) as one test suite that every implementation runs:
// MemoryKvStore (the simulator's) and LmdbKvStore (a real server's). Its core is a model-based test:
// random entries (puts, conditional puts, deletes, transactions, client sessions) applied through
// KvState to the store under test and, in parallel, to a plain Map oracle written here from the
// contract, with resets, event turns, flushes and reopens in between, comparing everything a
// reader can observe after every step.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import fc from 'fast-check';

import type { KvBatch, KvSnapshotReader, KvStore, SessionRecord, StoredValue } from '../core/kv.ts';
import { KvState, MemoryKvStore, snapshotItemBytes } from '../core/kv.ts';
import type { Epoch, KeyValue, LogEntry, Operation, Seq, Session, Write, WriteResult } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';

/** A store under test, as the suite drives it. */
export interface KvStoreHandle {
  /** The current store; `reopen` replaces it. */
  store: KvStore;
  close(): Promise<void>;
  /** Wait until everything committed is durable, for stores that write in the background. */
  flushed?(): Promise<void>;
  /** Flush, close and open the same store again (for stores that persist). */
  reopen?(): Promise<void>;
}

export interface KvStoreConformanceOptions {
  /** Runs of the model-based test (default 100). */
  numRuns?: number;
}

export function kvStoreConformance(name: string, open: () => Promise<KvStoreHandle>, options: KvStoreConformanceOptions = {}): void {
  const withStore = async (body: (handle: KvStoreHandle) => Promise<void> | void): Promise<void> => {
    const handle = await open();
    try {
      await body(handle);
    } finally {
      await handle.close();
    }
  };

  describe(`KvStore conformance: ${name}`, () => {
    it('starts empty at appliedSeq 0, epoch 0', () => withStore((handle) => {
      assertSameState(handle.store, new OracleKvStore(), 'fresh store');
    }));

    it('matches a Map oracle on random entries applied through KvState, with resets, flushes and reopens', async () => {
      await fc.assert(
        fc.asyncProperty(stepsArb, fc.integer({ min: 1, max: 3 }), async (steps, sessionsMax) => {
          await withStore((handle) => runModel(handle, steps, sessionsMax));
        }),
        { numRuns: options.numRuns ?? 100 },
      );
    });

    it('ranges return keys in key order under their prefix, at most limit of them', () => withStore((handle) => {
      const keys = ['b', 'a', 'a/2', 'a/10', 'a/1', 'ab', 'a0', 'é', 'z', 'a/'];
      handle.store.commit(batchOf(1, keys.map((key, i) => [key, stored(`v${i}`, 1)])));
      const oracle = new OracleKvStore();
      oracle.commit(batchOf(1, keys.map((key, i) => [key, stored(`v${i}`, 1)])));
      for (const prefix of ['', 'a', 'a/', 'a/1', 'b', 'c', 'é', 'ab', 'abc']) {
        for (const limit of [0, 1, 2, 3, 100]) {
          assert.deepEqual(handle.store.range(prefix, limit), oracle.range(prefix, limit), `range(${JSON.stringify(prefix)}, ${limit})`);
        }
      }
      assert.deepEqual(handle.store.range('a/', 100).map((item) => item.key), ['a/', 'a/1', 'a/10', 'a/2']);
    }));

    it('orders keys by UTF-8 bytes, also above U+FFFF', () => withStore((handle) => {
      // U+FF5E is above every surrogate as a UTF-16 code unit but below U+1F600 as a code point.
      const keys = ['k\u{1F600}', 'k\uFF5E', 'k\uE000', 'k\u00E9', 'k~'];
      handle.store.commit(batchOf(1, keys.map((key) => [key, stored('v', 1)])));
      assert.deepEqual(handle.store.range('k', 10).map((item) => item.key), ['k~', 'k\u00E9', 'k\uE000', 'k\uFF5E', 'k\u{1F600}']);
    }));

    it('commits data, sessions, appliedSeq and appliedEpoch of a batch together', () => withStore((handle) => {
      const record = sessionRecord('client-1', 1, 2);
      handle.store.commit({
        keys: new Map([['x', stored('one', 1)], ['y', stored('two', 2)]]),
        sessions: new Map([['client-1', record]]),
        appliedSeq: seq(2),
        appliedEpoch: epoch(3),
      });
      assert.deepEqual(handle.store.get('x'), stored('one', 1));
      assert.deepEqual(handle.store.loadSessions(), [record]);
      assert.equal(handle.store.appliedSeq(), 2);
      assert.equal(handle.store.appliedEpoch(), 3);
      // A later batch deletes a key and evicts the session.
      handle.store.commit({ keys: new Map([['x', null]]), sessions: new Map([['client-1', null]]), appliedSeq: seq(3), appliedEpoch: epoch(3) });
      assert.equal(handle.store.get('x'), undefined);
      assert.deepEqual(handle.store.range('', 10).map((item) => item.key), ['y']);
      assert.deepEqual(handle.store.loadSessions(), []);
    }));

    it('refuses a batch whose appliedSeq goes back', () => withStore((handle) => {
      handle.store.commit(batchOf(5, [['x', stored('v', 5)]]));
      assert.throws(() => handle.store.commit(batchOf(4, [['y', stored('w', 4)]])), /appliedSeq never goes back/);
      assert.equal(handle.store.get('y'), undefined);
      assert.equal(handle.store.appliedSeq(), 5);
    }));

    it('reset removes every key and session and returns to appliedSeq 0', () => withStore(async (handle) => {
      handle.store.commit({
        keys: new Map([['x', stored('one', 1)], ['y', stored('two', 2)]]),
        sessions: new Map([['client-1', sessionRecord('client-1', 1, 2)]]),
        appliedSeq: seq(2),
        appliedEpoch: epoch(1),
      });
      await handle.flushed?.();
      handle.store.reset();
      assertSameState(handle.store, new OracleKvStore(), 'after reset');
      handle.store.commit(batchOf(1, [['z', stored('three', 1)]]));
      assert.deepEqual(handle.store.range('', 10), [{ key: 'z', ...stored('three', 1) }]);
      if (handle.reopen !== undefined) {
        await handle.reopen();
        assert.deepEqual(handle.store.range('', 10), [{ key: 'z', ...stored('three', 1) }]);
        assert.deepEqual(handle.store.loadSessions(), []);
        assert.equal(handle.store.appliedSeq(), 1);
      }
    }));

    it('keeps committed values when the caller later mutates its arrays', () => withStore((handle) => {
      const value = bytes('original');
      handle.store.commit(batchOf(1, [['x', { value, version: 1 }]]));
      value.fill(0);
      assert.deepEqual(handle.store.get('x'), stored('original', 1));
      assert.deepEqual(handle.store.range('x', 1), [{ key: 'x', ...stored('original', 1) }]);
    }));

    it('a snapshot reader cuts keys into chunks of at most maxItems and about maxBytes, at least one key each', () => withStore(async (handle) => {
      const keys: [string, StoredValue][] = Array.from({ length: 40 }, (_, i) => [`k${String(i).padStart(2, '0')}`, stored('x'.repeat(300), 1)]);
      keys.push(['zz-large', stored('y'.repeat(5000), 1)]);
      handle.store.commit(batchOf(1, keys));
      await handle.flushed?.();
      const reader = handle.store.snapshotReader();
      const chunks: KeyValue[][] = [];
      for (let chunk = reader.next(8, 1000); chunk !== undefined; chunk = reader.next(8, 1000)) {
        if (chunk.items.length > 0) chunks.push(chunk.items);
      }
      reader.close();
      assert.deepEqual(chunks.flat().map((item) => item.key), keys.map(([key]) => key));
      for (const chunk of chunks) {
        assert.ok(chunk.length >= 1 && chunk.length <= 8, `${chunk.length} keys in a chunk`);
        // About maxBytes: what comes before a chunk's last key stays under it.
        const before = chunk.slice(0, -1).reduce((sum, item) => sum + snapshotItemBytes(item.key.length, item.value.length), 0);
        assert.ok(before < 1000, `${before} bytes before the last key of a chunk`);
      }
      // maxItems alone would make 6 chunks; about 1000 bytes hold 3 or 4 of these keys.
      assert.ok(chunks.length >= 11, `${chunks.length} chunks for 40 keys of ~320 bytes in chunks of about 1000`);
      assert.deepEqual(chunks.at(-1)?.map((item) => item.key), ['zz-large'], 'a key larger than maxBytes goes alone');
    }));

    it('stores empty values and binary values byte for byte', () => withStore(async (handle) => {
      const binary = Uint8Array.from({ length: 256 }, (_, i) => i);
      handle.store.commit(batchOf(1, [['empty', { value: new Uint8Array(0), version: 1 }], ['binary', { value: binary, version: 1 }]]));
      const check = (): void => {
        assert.deepEqual(handle.store.get('empty'), { value: new Uint8Array(0), version: 1 });
        assert.deepEqual(handle.store.get('binary'), { value: Uint8Array.from({ length: 256 }, (_, i) => i), version: 1 });
      };
      check();
      if (handle.reopen !== undefined) {
        await handle.reopen();
        check();
      }
    }));
  });
}

// ---------------------------------------------------------------------------------------------
// The oracle: the KvStore contract over plain Maps, ordering keys by their UTF-8 bytes.

export class OracleKvStore implements KvStore {
  private readonly data = new Map<string, StoredValue>();
  private readonly sessions = new Map<string, SessionRecord>();
  private applied: Seq = seq(0);
  private appliedAtEpoch: Epoch = epoch(0);

  get(key: string): StoredValue | undefined {
    const found = this.data.get(key);
    return found === undefined ? undefined : { value: found.value.slice(), version: found.version };
  }

  range(prefix: string, limit: number): KeyValue[] {
    const encoder = new TextEncoder();
    return [...this.data.keys()]
      .filter((key) => key.startsWith(prefix))
      .sort((a, b) => Buffer.compare(encoder.encode(a), encoder.encode(b)))
      .slice(0, Math.max(0, limit))
      .map((key) => ({ key, ...(this.get(key) as StoredValue) }));
  }

  appliedSeq(): Seq {
    return this.applied;
  }

  appliedEpoch(): Epoch {
    return this.appliedAtEpoch;
  }

  loadSessions(): SessionRecord[] {
    return [...this.sessions.values()];
  }

  commit(batch: KvBatch): void {
    assert.ok(batch.appliedSeq >= this.applied, 'appliedSeq never goes back');
    for (const [key, change] of batch.keys) {
      if (change === null) this.data.delete(key);
      else this.data.set(key, { value: change.value.slice(), version: change.version });
    }
    for (const [clientId, record] of batch.sessions) {
      if (record === null) this.sessions.delete(clientId);
      else this.sessions.set(clientId, record);
    }
    this.applied = batch.appliedSeq;
    this.appliedAtEpoch = batch.appliedEpoch;
  }

  reset(): void {
    this.data.clear();
    this.sessions.clear();
    this.applied = seq(0);
    this.appliedAtEpoch = epoch(0);
  }
  snapshotSeq(): Seq {
    return this.appliedSeq();
  }

  snapshotReader(): KvSnapshotReader {
    const memory = new MemoryKvStore();
    memory.commit({ keys: new Map(this.range('', Number.MAX_SAFE_INTEGER).map((item) => [item.key, { value: item.value, version: item.version }])),
      sessions: new Map(this.loadSessions().map((record) => [record.clientId, record])), appliedSeq: this.appliedSeq(), appliedEpoch: this.appliedEpoch() });
    return memory.snapshotReader();
  }

}

// ---------------------------------------------------------------------------------------------
// Comparing what readers observe

/** Keys whose prefixes and orders matter: nested, shared prefixes, non-ASCII, above U+FFFF. */
const KEYS = ['a', 'a/1', 'a/10', 'a/2', 'ab', 'b', 'é', 'ü/x', 'k\u{1F600}', 'k\u00E9'] as const;
const PREFIXES = ['', 'a', 'a/', 'a/1', 'b', 'k', 'é', 'zz'] as const;
const LIMITS = [0, 1, 3, 100] as const;
const CLIENTS = ['c0', 'c1', 'клиент', 'c\u{1F600}'] as const;

/** Every observation a reader can make, compared between the store under test and the oracle. */
export function assertSameState(store: KvStore, oracle: KvStore, where: string): void {
  assert.equal(store.appliedSeq(), oracle.appliedSeq(), `${where}: appliedSeq`);
  assert.equal(store.appliedEpoch(), oracle.appliedEpoch(), `${where}: appliedEpoch`);
  for (const key of KEYS) assert.deepEqual(store.get(key), oracle.get(key), `${where}: get(${key})`);
  for (const prefix of PREFIXES) {
    for (const limit of LIMITS) {
      assert.deepEqual(store.range(prefix, limit), oracle.range(prefix, limit), `${where}: range(${JSON.stringify(prefix)}, ${limit})`);
    }
  }
  assert.deepEqual(sortSessions(store.loadSessions()), sortSessions(oracle.loadSessions()), `${where}: sessions`);
  for (const item of store.range('', Number.MAX_SAFE_INTEGER)) {
    assert.ok(item.version <= store.appliedSeq(), `${where}: ${item.key} has version ${item.version} above appliedSeq ${store.appliedSeq()}`);
  }
}

export function sortSessions(records: SessionRecord[]): SessionRecord[] {
  return [...records].sort((a, b) => (a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0));
}

// ---------------------------------------------------------------------------------------------
// The model-based test

/** How a condition's version is chosen, resolved against the oracle when the entry is built. */
type VersionChoice = 'current' | 'absent' | 'wrong';
type AbstractOperation = { type: 'put'; key: string; value: number[] } | { type: 'delete'; key: string };
type AbstractWrite =
  | { type: 'put'; key: string; value: number[]; ifVersion: VersionChoice | undefined; ifAbsent: boolean | undefined }
  | { type: 'delete'; key: string; ifVersion: VersionChoice | undefined }
  | { type: 'txn'; compares: { key: string; version: VersionChoice }[]; success: AbstractOperation[]; failure: AbstractOperation[] }
  | { type: 'epochStart' };
interface AbstractEntry {
  write: AbstractWrite;
  session: { client: number; request: 'next' | 'same' | 'older' } | undefined;
}
type Step =
  | { type: 'apply'; entries: AbstractEntry[] }
  | { type: 'reset' }
  /** Let background writes progress: some batches land on disk, others are still pending. */
  | { type: 'turn'; turns: number }
  | { type: 'flush' }
  | { type: 'reopen' };

const keyArb = fc.constantFrom(...KEYS);
const valueArb = fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 4 });
const versionChoiceArb = fc.constantFrom<VersionChoice>('current', 'current', 'absent', 'wrong');
const operationArb: fc.Arbitrary<AbstractOperation> = fc.oneof(
  fc.record({ type: fc.constant('put' as const), key: keyArb, value: valueArb }),
  fc.record({ type: fc.constant('delete' as const), key: keyArb }),
);
const writeArb: fc.Arbitrary<AbstractWrite> = fc.oneof(
  { arbitrary: fc.record({
    type: fc.constant('put' as const), key: keyArb, value: valueArb,
    ifVersion: fc.option(versionChoiceArb, { nil: undefined, freq: 3 }),
    ifAbsent: fc.option(fc.boolean(), { nil: undefined, freq: 3 }),
  }), weight: 6 },
  { arbitrary: fc.record({
    type: fc.constant('delete' as const), key: keyArb,
    ifVersion: fc.option(versionChoiceArb, { nil: undefined, freq: 3 }),
  }), weight: 3 },
  { arbitrary: fc.record({
    type: fc.constant('txn' as const),
    compares: fc.array(fc.record({ key: keyArb, version: versionChoiceArb }), { maxLength: 2 }),
    success: fc.array(operationArb, { maxLength: 3 }),
    failure: fc.array(operationArb, { maxLength: 3 }),
  }), weight: 3 },
  { arbitrary: fc.constant({ type: 'epochStart' as const }), weight: 1 },
);
const entryArb: fc.Arbitrary<AbstractEntry> = fc.record({
  write: writeArb,
  session: fc.option(fc.record({
    client: fc.integer({ min: 0, max: CLIENTS.length - 1 }),
    request: fc.constantFrom('next' as const, 'next' as const, 'same' as const, 'older' as const),
  }), { nil: undefined, freq: 2 }),
});
const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { arbitrary: fc.record({ type: fc.constant('apply' as const), entries: fc.array(entryArb, { minLength: 1, maxLength: 8 }) }), weight: 12 },
  { arbitrary: fc.constant({ type: 'reset' as const }), weight: 1 },
  { arbitrary: fc.record({ type: fc.constant('turn' as const), turns: fc.integer({ min: 1, max: 3 }) }), weight: 4 },
  { arbitrary: fc.constant({ type: 'flush' as const }), weight: 1 },
  { arbitrary: fc.constant({ type: 'reopen' as const }), weight: 1 },
);
const stepsArb = fc.array(stepArb, { minLength: 1, maxLength: 25 });

async function runModel(handle: KvStoreHandle, steps: Step[], sessionsMax: number): Promise<void> {
  const limits = { sessionsMax };
  const oracle = new OracleKvStore();
  let state = new KvState(handle.store, limits);
  let oracleState = new KvState(oracle, limits);
  /** Highest requestId issued per client, so sessions ask for next, same or older requests. */
  const issued = new Map<string, number>();
  let currentEpoch = 1;

  const resolveVersion = (choice: VersionChoice, key: string): number => {
    const current = oracle.get(key)?.version ?? 0;
    if (choice === 'current') return current;
    if (choice === 'absent') return 0;
    return current + 1;
  };
  const operation = (abstract: AbstractOperation): Operation =>
    (abstract.type === 'put' ? { type: 'put', key: abstract.key, value: Uint8Array.from(abstract.value) } : { type: 'delete', key: abstract.key });
  const write = (abstract: AbstractWrite): Write => {
    switch (abstract.type) {
      case 'put': {
        const result: Write = { type: 'put', key: abstract.key, value: Uint8Array.from(abstract.value) };
        if (abstract.ifVersion !== undefined) result.ifVersion = resolveVersion(abstract.ifVersion, abstract.key);
        if (abstract.ifAbsent !== undefined) result.ifAbsent = abstract.ifAbsent;
        return result;
      }
      case 'delete': {
        const result: Write = { type: 'delete', key: abstract.key };
        if (abstract.ifVersion !== undefined) result.ifVersion = resolveVersion(abstract.ifVersion, abstract.key);
        return result;
      }
      case 'txn':
        return {
          type: 'txn',
          compares: abstract.compares.map((compare) => ({ key: compare.key, version: resolveVersion(compare.version, compare.key) })),
          success: abstract.success.map(operation),
          failure: abstract.failure.map(operation),
        };
      case 'epochStart':
        return { type: 'epochStart' };
    }
  };
  const session = (abstract: AbstractEntry['session']): Session | undefined => {
    if (abstract === undefined) return undefined;
    const clientId = CLIENTS[abstract.client] as string;
    const last = issued.get(clientId) ?? 0;
    const requestId = abstract.request === 'next' || last === 0 ? last + 1 : abstract.request === 'same' ? last : Math.max(1, last - 1);
    issued.set(clientId, Math.max(last, requestId));
    return { clientId, requestId };
  };

  for (const [index, step] of steps.entries()) {
    const where = `step ${index} (${step.type})`;
    switch (step.type) {
      case 'apply': {
        const entries: LogEntry[] = [];
        for (const abstract of step.entries) {
          if (abstract.write.type === 'epochStart') currentEpoch++;
          const entry: LogEntry = { epoch: epoch(currentEpoch), seq: seq(oracle.appliedSeq() + 1 + entries.length), write: write(abstract.write) };
          const entrySession = session(abstract.session);
          if (entrySession !== undefined) entry.session = entrySession;
          entries.push(entry);
        }
        const expected = oracleState.apply(entries);
        assert.deepEqual(state.apply(entries), expected, `${where}: outcomes`);
        break;
      }
      case 'reset':
        state.reset();
        oracleState.reset();
        break;
      case 'turn':
        for (let turn = 0; turn < step.turns; turn++) await nextTurn();
        break;
      case 'flush':
        await handle.flushed?.();
        break;
      case 'reopen':
        if (handle.reopen === undefined) break;
        await handle.reopen();
        // A restarted server builds its KvState from the store; the oracle's restarts the same way.
        state = new KvState(handle.store, limits);
        oracleState = new KvState(oracle, limits);
        break;
    }
    assertSameState(handle.store, oracle, where);
  }
}

// ---------------------------------------------------------------------------------------------
// Small builders

function bytes(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

function stored(text: string, version: number): StoredValue {
  return { value: bytes(text), version };
}

function batchOf(at: number, keys: [string, StoredValue | null][]): KvBatch {
  return { keys: new Map(keys), sessions: new Map(), appliedSeq: seq(at), appliedEpoch: epoch(1) };
}

function sessionRecord(clientId: string, requestId: number, at: number): SessionRecord {
  const result: WriteResult = { status: 'ok', seq: seq(at), epoch: epoch(1), version: at };
  return { clientId, requestId, result, lastSeq: seq(at) };
}
