// Tests of the on-disk key-value store: the shared KvStore conformance suite for MemoryKvStore and
// LmdbKvStore, then what only LmdbKvStore promises: reads see batches LMDB has not committed yet,
// close and reopen keep exactly the flushed state, a process killed with SIGKILL at a random moment
// reopens at a batch boundary whose data equals a replay of the same batches, and a failed write
// (a file size limit standing in for a full disk) fails the store loudly instead of pretending.
//
// The crash and failed-write tests run this file again as a child process: with the environment
// variable below set, it runs a writer instead of tests.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { open } from 'lmdb';

import type { KvStore, SessionRecord, SnapshotChunk, StoredValue } from '../core/kv.ts';
import { KvState, MemoryKvStore } from '../core/kv.ts';
import { Random } from '../lib/random.ts';
import type { KeyValue, LogEntry, Operation, Session, Write } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import type { KvStoreHandle } from './kv-store-conformance.ts';
import { kvStoreConformance, sortSessions } from './kv-store-conformance.ts';
import { compareKeys } from '../lib/keys.ts';
import { lmdbKeyBytesMax, openLmdbStore, writeRestoredStore } from './lmdb-store.ts';
import type { LmdbKvStore } from './lmdb-store.ts';
import type { KvSnapshot } from './snapshot.ts';

const childRoleVariable = 'MAINSTAY_LMDB_TEST_CHILD';
const thisFile = fileURLToPath(import.meta.url);
const repositoryRoot = fileURLToPath(new URL('../../', import.meta.url));

// ---------------------------------------------------------------------------------------------
// A deterministic workload: the same seed gives the same batches in the writer and in the checker.

interface WorkloadShape {
  keys: number;
  valueBytesMax: number;
}

const smallShape: WorkloadShape = { keys: 300, valueBytesMax: 48 };
/** Many keys and big values, so the file grows past a small size limit quickly. */
const largeShape: WorkloadShape = { keys: 1_000_000, valueBytesMax: 2_000 };
const sessionsMax = 5;

function* workload(seed: number, shape: WorkloadShape = smallShape): Generator<LogEntry[]> {
  const random = new Random(seed);
  const requestIds = new Map<string, number>();
  let at = 1;
  let currentEpoch = 1;
  const key = (): string => `k${random.int(0, shape.keys - 1)}`;
  const value = (): Uint8Array => Uint8Array.from({ length: random.int(0, shape.valueBytesMax) }, () => random.int(0, 255));
  const operation = (): Operation => (random.chance(0.7) ? { type: 'put', key: key(), value: value() } : { type: 'delete', key: key() });
  for (let batchIndex = 0; ; batchIndex++) {
    const entries: LogEntry[] = [];
    const size = random.int(1, 24);
    for (let i = 0; i < size; i++) {
      let write: Write;
      const kind = random.int(0, 9);
      if (batchIndex % 100 === 0 && i === 0) {
        currentEpoch++;
        write = { type: 'epochStart' };
      } else if (kind <= 4) {
        write = { type: 'put', key: key(), value: value() };
      } else if (kind === 5) {
        write = random.chance(0.5)
          ? { type: 'put', key: key(), value: value(), ifVersion: random.int(0, at) }
          : { type: 'put', key: key(), value: value(), ifAbsent: true };
      } else if (kind <= 7) {
        write = { type: 'delete', key: key() };
      } else if (kind === 8) {
        write = { type: 'delete', key: key(), ifVersion: random.int(0, at) };
      } else {
        write = {
          type: 'txn',
          compares: [{ key: key(), version: random.chance(0.5) ? 0 : random.int(0, at) }],
          success: [operation(), operation()],
          failure: [operation()],
        };
      }
      const entry: LogEntry = { epoch: epoch(currentEpoch), seq: seq(at++), write };
      if (random.chance(0.3)) {
        const clientId = `client-${random.int(0, 7)}`;
        const last = requestIds.get(clientId) ?? 0;
        const session: Session = { clientId, requestId: last > 0 && random.chance(0.1) ? last : last + 1 };
        requestIds.set(clientId, session.requestId);
        entry.session = session;
      }
      entries.push(entry);
    }
    yield entries;
  }
}

/** Everything a restarted server reads from a store. */
interface Dump {
  appliedSeq: number;
  appliedEpoch: number;
  data: { key: string; value: Uint8Array; version: number }[];
  sessions: SessionRecord[];
}

function dump(store: KvStore): Dump {
  const data = store.range('', Number.MAX_SAFE_INTEGER)
    .map((item) => ({ key: item.key, value: new Uint8Array(item.value), version: item.version }))
    .sort((a, b) => compareKeys(a.key, b.key));
  return { appliedSeq: store.appliedSeq(), appliedEpoch: store.appliedEpoch(), data, sessions: sortSessions(store.loadSessions()) };
}

/**
 * Check a reopened store against a replay: appliedSeq must be a batch boundary, no key newer than
 * it, and keys, versions, values, sessions and appliedEpoch equal to the workload applied up to it.
 */
function assertMatchesReplay(store: LmdbKvStore, seed: number, shape: WorkloadShape = smallShape): void {
  const appliedSeq = store.appliedSeq();
  const memory = new MemoryKvStore();
  const state = new KvState(memory, { sessionsMax });
  for (const entries of workload(seed, shape)) {
    if (memory.appliedSeq() === appliedSeq) break;
    const last = entries[entries.length - 1] as LogEntry;
    assert.ok(last.seq <= appliedSeq, `appliedSeq ${appliedSeq} is inside the batch ${entries[0]?.seq}..${last.seq}: not a batch boundary`);
    state.apply(entries);
  }
  const actual = dump(store);
  for (const item of actual.data) {
    assert.ok(item.version <= appliedSeq, `${item.key} has version ${item.version}, above appliedSeq ${appliedSeq}`);
  }
  const expected = dump(memory);
  const where = `the store at appliedSeq ${appliedSeq} differs from the replay`;
  assert.equal(actual.appliedEpoch, expected.appliedEpoch, `${where}: appliedEpoch`);
  assert.deepEqual(actual.sessions, expected.sessions, `${where}: sessions`);
  const expectedData = new Map(expected.data.map((item) => [item.key, item]));
  for (const item of actual.data) assert.deepEqual(item, expectedData.get(item.key), `${where}: key ${item.key}`);
  assert.deepEqual(actual.data.map((item) => item.key), expected.data.map((item) => item.key), `${where}: keys`);
}

// ---------------------------------------------------------------------------------------------
// Child processes

if (process.env[childRoleVariable] !== undefined) await runChild(process.env[childRoleVariable], process.argv.slice(2));

function emit(event: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

/** Runs a writer for the crash or failed-write test, then exits: no test of this file runs in it. */
async function runChild(role: string, args: string[]): Promise<never> {
  const [dir, seedText] = args;
  assert.ok(dir !== undefined && seedText !== undefined, 'child needs a directory and a seed');
  const seed = Number(seedText);
  const shape = role === 'failed-write' ? largeShape : smallShape;
  // No commit delay: transactions then end at many batch boundaries for a kill to land between.
  const store = await openLmdbStore(dir, { commitDelayMs: 0 });
  const state = new KvState(store, { sessionsMax });
  const startedMs = performance.now();
  let batchIndex = 0;
  try {
    for (const entries of workload(seed, shape)) {
      if ((entries[0] as LogEntry).seq <= store.appliedSeq()) {
        assert.ok((entries[entries.length - 1] as LogEntry).seq <= store.appliedSeq(), 'the store is not at a batch boundary');
        continue;
      }
      state.apply(entries);
      batchIndex++;
      if (batchIndex % 10 === 0) emit({ event: 'applied', seq: store.appliedSeq(), pending: store.pendingBatchCount });
      if (batchIndex % 40 === 0) {
        const flushing = store.appliedSeq();
        await store.flushed();
        emit({ event: 'flushed', seq: flushing });
      } else {
        await nextTurn();
      }
      // Bounded in time whatever happens to the parent.
      if (performance.now() - startedMs > 30_000) break;
    }
    emit({ event: 'finished' });
  } catch (error) {
    emit({ event: 'threw', message: String(error) });
    try {
      await store.flushed();
      emit({ event: 'flushedResolved' });
    } catch (flushError) {
      emit({ event: 'flushedRejected', message: String(flushError) });
    }
    try {
      store.commit({ keys: new Map([['after', { value: Uint8Array.of(1), version: store.appliedSeq() + 1 }]]), sessions: new Map(), appliedSeq: seq(store.appliedSeq() + 1), appliedEpoch: store.appliedEpoch() });
      emit({ event: 'commitAccepted' });
    } catch (commitError) {
      emit({ event: 'commitRefused', message: String(commitError) });
    }
  }
  try {
    await store.close();
    emit({ event: 'closed' });
  } catch (closeError) {
    emit({ event: 'closeRejected', message: String(closeError) });
  }
  process.exit(0);
}

interface Child {
  process: ChildProcess;
  /** Resolves with the first event matching `until`, or rejects when the child exits first. */
  waitFor(until: (event: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  events: Record<string, unknown>[];
  exited: Promise<void>;
}

function spawnChild(role: string, args: string[], fileSizeBlocksMax?: number): Child {
  const env: NodeJS.ProcessEnv = { ...process.env, [childRoleVariable]: role };
  delete env.NODE_TEST_CONTEXT;
  const nodeArgs = ['--import', 'tsx', thisFile, ...args];
  const options = { cwd: repositoryRoot, env, stdio: ['ignore', 'pipe', 'pipe'] as ('ignore' | 'pipe')[] };
  const child = fileSizeBlocksMax === undefined
    ? spawn(process.execPath, nodeArgs, options)
    : spawn('/bin/sh', ['-c', `ulimit -f ${fileSizeBlocksMax} && exec "$0" "$@"`, process.execPath, ...nodeArgs], options);
  const events: Record<string, unknown>[] = [];
  const waiters: { until: (event: Record<string, unknown>) => boolean; resolve: (event: Record<string, unknown>) => void; reject: (error: Error) => void }[] = [];
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (line) => {
    const event = JSON.parse(line) as Record<string, unknown>;
    events.push(event);
    for (const waiter of [...waiters]) {
      if (!waiter.until(event)) continue;
      waiters.splice(waiters.indexOf(waiter), 1);
      waiter.resolve(event);
    }
  });
  const exited = new Promise<void>((resolve) => {
    child.on('exit', () => {
      for (const waiter of waiters) waiter.reject(new Error(`The ${role} child exited first; its stderr:\n${stderr}`));
      resolve();
    });
  });
  return {
    process: child,
    events,
    exited,
    waitFor: (until) => new Promise((resolve, reject) => {
      const seen = events.find(until);
      if (seen !== undefined) resolve(seen);
      else waiters.push({ until, resolve, reject });
    }),
  };
}

// ---------------------------------------------------------------------------------------------
// Helpers

function temporaryDirectory(): string {
  return mkdtempSync(join(tmpdir(), 'mainstay-lmdb-test-'));
}

async function withDirectory(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = temporaryDirectory();
  try {
    await body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);
const stored = (text: string, version: number): StoredValue => ({ value: bytes(text), version });

async function openLmdbHandle(): Promise<KvStoreHandle> {
  const dir = temporaryDirectory();
  let store = await openLmdbStore(dir);
  const handle: KvStoreHandle = {
    store,
    flushed: () => store.flushed(),
    reopen: async () => {
      await store.close();
      store = await openLmdbStore(dir);
      handle.store = store;
    },
    close: async () => {
      try {
        await store.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
  return handle;
}

// ---------------------------------------------------------------------------------------------
// 1. The conformance suite, for both implementations

kvStoreConformance('MemoryKvStore', async () => ({ store: new MemoryKvStore(), close: async () => {} }), { numRuns: 200 });

kvStoreConformance('LmdbKvStore', openLmdbHandle, { numRuns: 100 });

// ---------------------------------------------------------------------------------------------
// 2. What only LmdbKvStore promises

describe('LmdbKvStore', () => {
  it('reads every committed batch before LMDB has committed it', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    const record: SessionRecord = { clientId: 'c', requestId: 1, result: { status: 'ok', seq: seq(2), epoch: epoch(1), version: 2 }, lastSeq: seq(2) };
    store.commit({ keys: new Map([['a', stored('1', 1)], ['b', stored('2', 2)]]), sessions: new Map([['c', record]]), appliedSeq: seq(2), appliedEpoch: epoch(1) });
    store.commit({ keys: new Map([['a', null], ['c', stored('3', 3)]]), sessions: new Map(), appliedSeq: seq(3), appliedEpoch: epoch(1) });
    const check = (): void => {
      assert.equal(store.get('a'), undefined);
      assert.deepEqual(store.get('b'), stored('2', 2));
      assert.deepEqual(store.range('', 10), [{ key: 'b', ...stored('2', 2) }, { key: 'c', ...stored('3', 3) }]);
      assert.deepEqual(store.loadSessions(), [record]);
      assert.equal(store.appliedSeq(), 3);
    };
    assert.equal(store.pendingBatchCount, 2, 'the batches are still on their way to LMDB');
    check();
    await store.flushed();
    assert.equal(store.pendingBatchCount, 0);
    check();
    await store.close();
  }));

  it('gathers the batches of commitDelayMs into one transaction, and sends them at once for flushed()', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir, { commitDelayMs: 60_000 });
    for (let at = 1; at <= 10; at++) {
      store.commit({ keys: new Map([[`k${at}`, stored(`v${at}`, at)]]), sessions: new Map(), appliedSeq: seq(at), appliedEpoch: epoch(1) });
    }
    await nextTurn();
    await nextTurn();
    assert.equal(store.pendingBatchCount, 10, 'nothing goes to LMDB before the delay');
    assert.deepEqual(store.get('k10'), stored('v10', 10));
    const started = performance.now();
    await store.flushed();
    assert.ok(performance.now() - started < 30_000, 'flushed() does not wait for the delay');
    assert.equal(store.pendingBatchCount, 0);
    await store.close();
    const reopened = await openLmdbStore(dir);
    assert.equal(reopened.appliedSeq(), 10);
    assert.deepEqual(reopened.range('k', 20).length, 10);
    await reopened.close();
  }));

  it('writes the newest state of each key and session of one transaction, in batch order around a reset', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir, { commitDelayMs: 60_000 });
    const record = (requestId: number, at: number, clientId = 'c'): SessionRecord =>
      ({ clientId, requestId, result: { status: 'ok', seq: seq(at), epoch: epoch(1), version: at }, lastSeq: seq(at) });
    const commit = (at: number, keys: [string, StoredValue | null][], sessions: [string, SessionRecord | null][]): void =>
      store.commit({ keys: new Map(keys), sessions: new Map(sessions), appliedSeq: seq(at), appliedEpoch: epoch(1) });
    // All in one queued group: before the reset (gone after it), then after it.
    commit(1, [['gone', stored('g', 1)], ['a', stored('a1', 1)]], [['old', record(1, 1, 'old')]]);
    store.reset();
    commit(1, [['a', stored('a1', 1)], ['b', stored('b1', 1)], ['d', stored('d1', 1)]], [['c', record(1, 1)]]);
    commit(2, [['a', stored('a2', 2)], ['d', null]], [['c', record(2, 2)]]);
    commit(3, [['a', stored('a3', 3)], ['b', null], ['d', stored('d3', 3)]], [['c', record(3, 3)]]);
    commit(4, [['b', stored('b4', 4)]], []);
    const expected = [{ key: 'a', ...stored('a3', 3) }, { key: 'b', ...stored('b4', 4) }, { key: 'd', ...stored('d3', 3) }];
    assert.deepEqual(store.range('', 10), expected);
    await store.flushed();
    await store.close();
    const reopened = await openLmdbStore(dir);
    assert.equal(reopened.appliedSeq(), 4);
    assert.deepEqual(reopened.range('', 10), expected);
    assert.deepEqual(reopened.loadSessions(), [record(3, 3)]);
    await reopened.close();
  }));

  it('keeps an overwritten key in the overlay until the later batch commits', () => withDirectory(async (dir) => {
    // No delay, so that transactions commit between the event turns of the test.
    const store = await openLmdbStore(dir, { commitDelayMs: 0 });
    // Every batch overwrites key x while earlier batches commit one after another; after every
    // event turn x must show the last write, including the moments when LMDB has an older
    // batch's x and the newest batch is still pending.
    let sawOlderBatchCommittedNewerPending = false;
    let at = 0;
    for (let round = 0; round < 300; round++) {
      at++;
      const keys = new Map<string, StoredValue | null>([['x', stored(`v${at}`, at)]]);
      for (let filler = 0; filler < round % 50; filler++) keys.set(`filler/${round}/${filler}`, stored('f', at));
      const before = store.pendingBatchCount;
      store.commit({ keys, sessions: new Map(), appliedSeq: seq(at), appliedEpoch: epoch(1) });
      for (let turn = 0; turn < round % 3; turn++) {
        await nextTurn();
        assert.deepEqual(store.get('x'), stored(`v${at}`, at), `round ${round}, turn ${turn}`);
        assert.deepEqual(store.range('x', 1), [{ key: 'x', ...stored(`v${at}`, at) }]);
      }
      if (before > 0 && store.pendingBatchCount > 0 && store.pendingBatchCount <= before) sawOlderBatchCommittedNewerPending = true;
    }
    assert.ok(sawOlderBatchCommittedNewerPending, 'the test never saw an older batch commit while a newer one was pending');
    await store.flushed();
    assert.deepEqual(store.get('x'), stored(`v${at}`, at));
    await store.close();
    const reopened = await openLmdbStore(dir);
    assert.deepEqual(reopened.get('x'), stored(`v${at}`, at));
    await reopened.close();
  }));

  it('hides every older key and session while a reset is on its way to LMDB', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    const record: SessionRecord = { clientId: 'c', requestId: 1, result: { status: 'ok', seq: seq(1), epoch: epoch(1), version: 1 }, lastSeq: seq(1) };
    store.commit({ keys: new Map([['old', stored('o', 1)]]), sessions: new Map([['c', record]]), appliedSeq: seq(1), appliedEpoch: epoch(1) });
    await store.flushed();
    store.reset();
    store.commit({ keys: new Map([['new', stored('n', 1)]]), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(2) });
    assert.ok(store.pendingBatchCount > 0);
    const check = (): void => {
      assert.equal(store.get('old'), undefined);
      assert.deepEqual(store.range('', 10), [{ key: 'new', ...stored('n', 1) }]);
      assert.deepEqual(store.loadSessions(), []);
      assert.equal(store.appliedEpoch(), 2);
    };
    check();
    await store.flushed();
    check();
    await store.close();
    const reopened = await openLmdbStore(dir);
    assert.deepEqual(reopened.range('', 10), [{ key: 'new', ...stored('n', 1) }]);
    assert.deepEqual(reopened.loadSessions(), []);
    await reopened.close();
  }));

  it('reopens with exactly the state it had after flushed(), and after close', () => withDirectory(async (dir) => {
    const seed = 7;
    const store = await openLmdbStore(dir);
    const state = new KvState(store, { sessionsMax });
    const batches = workload(seed);
    for (let i = 0; i < 300; i++) {
      state.apply(batches.next().value as LogEntry[]);
      if (i % 7 === 0) await nextTurn();
    }
    await store.flushed();
    const flushed = dump(store);
    await store.close();
    let reopened = await openLmdbStore(dir);
    assert.deepEqual(dump(reopened), flushed);
    assertMatchesReplay(reopened, seed);

    // More batches and no flushed(): close() itself must persist them.
    const again = new KvState(reopened, { sessionsMax });
    for (let i = 0; i < 50; i++) again.apply(batches.next().value as LogEntry[]);
    const closed = dump(reopened);
    await reopened.close();
    reopened = await openLmdbStore(dir);
    assert.deepEqual(dump(reopened), closed);
    assertMatchesReplay(reopened, seed);
    await reopened.close();
  }));

  it('reopens at a batch boundary matching a replay after SIGKILL at random moments', { timeout: 120_000 }, (t) => withDirectory(async (dir) => {
    const seed = 20240601;
    const random = new Random(seed);
    let previousSeq = 0;
    for (let round = 0; round < 4; round++) {
      const child = spawnChild('crash-writer', [dir, String(seed)]);
      // Let it write for a random while (at least one flush), then kill it mid-stream.
      const flushed = await child.waitFor((event) => event.event === 'flushed');
      const appliedEvents = random.int(1, 12);
      await child.waitFor((event) => event.event === 'applied' && child.events.filter((seen) => seen.event === 'applied').length >= appliedEvents);
      await sleep(random.int(0, 15));
      child.process.kill('SIGKILL');
      await child.exited;
      const lastFlushed = Math.max(...child.events.filter((event) => event.event === 'flushed').map((event) => event.seq as number), flushed.seq as number);
      const lastApplied = Math.max(...child.events.filter((event) => event.event === 'applied').map((event) => event.seq as number));

      const store = await openLmdbStore(dir);
      try {
        const recovered = store.appliedSeq();
        t.diagnostic(`round ${round}: child reported flushed ${lastFlushed}, applied ${lastApplied}; reopened at ${recovered}`);
        assert.ok(recovered >= lastFlushed, `flushed seq ${lastFlushed} was lost: reopened at ${recovered}`);
        assert.ok(recovered > previousSeq, 'the writer made no progress');
        assertMatchesReplay(store, seed);
        previousSeq = recovered;
      } finally {
        await store.close();
      }
    }
  }));

  it('fails loudly when LMDB cannot write (file size limit), and reopens at a batch boundary', { timeout: 120_000 }, () => withDirectory(async (dir) => {
    const seed = 99;
    // 4096 blocks of 512 bytes (1 KiB under bash) cap the data file at a few MB.
    const child = spawnChild('failed-write', [dir, String(seed)], 4096);
    await child.exited;
    const event = (name: string): Record<string, unknown> | undefined => child.events.find((seen) => seen.event === name);
    assert.equal(event('finished'), undefined, 'the writer never hit the file size limit');
    const failure = /Cannot write the key-value store at /;
    assert.match(String(event('threw')?.message), failure);
    assert.match(String(event('flushedRejected')?.message), failure);
    assert.match(String(event('commitRefused')?.message), failure);
    assert.match(String(event('closeRejected')?.message), failure);
    const lastFlushed = Math.max(0, ...child.events.filter((seen) => seen.event === 'flushed').map((seen) => seen.seq as number));
    assert.ok(lastFlushed > 0, 'nothing was flushed before the limit');

    const store = await openLmdbStore(dir);
    try {
      assert.ok(store.appliedSeq() >= lastFlushed, `flushed seq ${lastFlushed} was lost: reopened at ${store.appliedSeq()}`);
      assertMatchesReplay(store, seed, largeShape);
    } finally {
      await store.close();
    }
  }));

  it('refuses keys LMDB cannot hold, leaving no trace of the batch', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    const refuse = (key: string, message: RegExp): void => {
      assert.throws(() => store.commit({ keys: new Map([['fine', stored('v', 1)], [key, stored('v', 1)]]), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(1) }), message);
    };
    refuse('', /must not be empty/);
    refuse('lone \uD800 surrogate', /well-formed Unicode/);
    refuse('x'.repeat(lmdbKeyBytesMax + 1), /at most 1978 UTF-8 bytes/);
    assert.equal(store.get('fine'), undefined);
    assert.equal(store.appliedSeq(), 0);
    // Reading such keys finds nothing rather than failing.
    assert.equal(store.get(''), undefined);
    assert.equal(store.get('x'.repeat(lmdbKeyBytesMax + 1)), undefined);
    assert.deepEqual(store.range('x'.repeat(lmdbKeyBytesMax + 1), 10), []);
    assert.equal(store.pendingBatchCount, 0);
    // The longest key that fits round-trips.
    const longest = 'é'.repeat(lmdbKeyBytesMax / 2);
    store.commit({ keys: new Map([[longest, stored('v', 1)]]), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(1) });
    await store.close();
    const reopened = await openLmdbStore(dir);
    assert.deepEqual(reopened.range('é', 1), [{ key: longest, ...stored('v', 1) }]);
    await reopened.close();
  }));

  it('refuses a directory holding another format, and is unusable after close', () => withDirectory(async (dir) => {
    const other = open(join(dir, 'other'), { maxDbs: 3 });
    await other.openDB('meta', { encoding: 'binary', keyEncoding: 'binary', useVersions: true }).put(Buffer.from('format'), Buffer.from('something-else'), 0);
    await other.close();
    await assert.rejects(openLmdbStore(join(dir, 'other')), /its format is "something-else"/);

    const store = await openLmdbStore(join(dir, 'store'));
    await store.close();
    assert.throws(() => store.get('a'), /is closed/);
    assert.throws(() => store.commit({ keys: new Map(), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(1) }), /is closed/);
  }));
});

// ---------------------------------------------------------------------------------------------
// 3. Snapshots: a consistent read, and installing one

/** Every chunk of a snapshot, flattened: keys in order, then sessions. */
function readSnapshot(snapshot: KvSnapshot, maxBytes: number): { keys: KeyValue[]; sessions: SessionRecord[]; chunks: SnapshotChunk[] } {
  const chunks = [...snapshot.chunks(maxBytes)];
  const keys: KeyValue[] = [];
  const sessions: SessionRecord[] = [];
  for (const chunk of chunks) {
    assert.ok(chunk.items.length === 0 || chunk.sessions.length === 0, 'a chunk holds keys or sessions');
    keys.push(...chunk.items);
    sessions.push(...chunk.sessions);
  }
  return { keys, sessions, chunks };
}

function sessionRecord(clientId: string, at: number): SessionRecord {
  return { clientId, requestId: at, result: { status: 'ok', seq: seq(at), epoch: epoch(1), version: at }, lastSeq: seq(at) };
}

/** Commits `count` batches of random puts, deletes and sessions from seq `from`; returns the model. */
function commitRandomBatches(store: LmdbKvStore, random: Random, from: number, count: number, model: Map<string, StoredValue>, sessions: Map<string, SessionRecord>): number {
  let at = from;
  for (let batch = 0; batch < count; batch++, at++) {
    const keys = new Map<string, StoredValue | null>();
    for (let i = random.int(1, 20); i > 0; i--) {
      const key = `k${random.int(0, 499)}${random.chance(0.1) ? '\u00E9\u{1F600}' : ''}`;
      const value = random.chance(0.2) ? null : { value: Uint8Array.from({ length: random.int(0, 300) }, () => random.int(0, 255)), version: at };
      keys.set(key, value);
      if (value === null) model.delete(key);
      else model.set(key, value);
    }
    const batchSessions = new Map<string, SessionRecord | null>();
    if (random.chance(0.3)) {
      const record = sessionRecord(`client-${random.int(0, 30)}`, at);
      batchSessions.set(record.clientId, record);
      sessions.set(record.clientId, record);
    }
    store.commit({ keys, sessions: batchSessions, appliedSeq: seq(at), appliedEpoch: epoch(1 + Math.floor(at / 50)) });
  }
  return at - 1;
}

function sortedModel(model: Map<string, StoredValue>): KeyValue[] {
  return [...model].sort(([a], [b]) => compareKeys(a, b)).map(([key, value]) => ({ key, value: value.value, version: value.version }));
}

describe('LmdbKvStore: snapshots', () => {
  it('a snapshot is the committed state at its seq, however the store changes while it is read', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    const random = new Random(7);
    const model = new Map<string, StoredValue>();
    const sessions = new Map<string, SessionRecord>();
    const lastSeq = commitRandomBatches(store, random, 1, 200, model, sessions);
    await store.flushed();
    const expectedKeys = sortedModel(model);
    const expectedSessions = [...sessions.values()].sort((a, b) => compareKeys(a.clientId, b.clientId));

    const snapshot = store.openSnapshot();
    assert.equal(snapshot.seq, lastSeq);
    assert.equal(snapshot.epoch, 1 + Math.floor(lastSeq / 50));
    assert.equal(snapshot.keyCount, expectedKeys.length);
    assert.equal(snapshot.sessionCount, expectedSessions.length);
    // More writes, committed and flushed, between the opening and the reading, and between chunks.
    commitRandomBatches(store, random, lastSeq + 1, 100, new Map(model), new Map(sessions));
    await store.flushed();
    const chunks = snapshot.chunks(2000);
    const first = chunks.next();
    commitRandomBatches(store, random, lastSeq + 101, 100, new Map(model), new Map(sessions));
    await store.flushed();
    const rest = [...chunks];
    const read = { keys: [] as KeyValue[], sessions: [] as SessionRecord[] };
    for (const chunk of [first.value as SnapshotChunk, ...rest]) {
      read.keys.push(...chunk.items);
      read.sessions.push(...chunk.sessions);
    }
    assert.deepEqual(read.keys, expectedKeys);
    assert.deepEqual(read.sessions, expectedSessions);
    assert.ok(rest.length > 5, `${rest.length + 1} chunks of about 2000 bytes`);

    // Every call starts over; a chunk holds at least one item; keys come before sessions.
    const again = readSnapshot(snapshot, 1);
    assert.deepEqual(again.keys, expectedKeys);
    assert.equal(again.chunks.length, expectedKeys.length + expectedSessions.length);
    assert.ok(again.chunks.findIndex((chunk) => chunk.sessions.length > 0) > again.chunks.findLastIndex((chunk) => chunk.items.length > 0));
    // The core's reader: next(maxItems, maxBytes) keeps its place, keys first, then sessions.
    const pulled: SnapshotChunk[] = [];
    for (let chunk = snapshot.next(7, Infinity); chunk !== undefined; chunk = snapshot.next(7, Infinity)) pulled.push(chunk);
    assert.ok(pulled.every((chunk) => chunk.items.length + chunk.sessions.length <= 7 && (chunk.items.length === 0 || chunk.sessions.length === 0)));
    assert.deepEqual(pulled.flatMap((chunk) => chunk.items), expectedKeys);
    assert.deepEqual(pulled.flatMap((chunk) => chunk.sessions), expectedSessions);
    assert.equal(snapshot.next(7, Infinity), undefined);
    snapshot.close();
    snapshot.close();
    assert.throws(() => snapshot.chunks(10).next(), /The snapshot is closed/);
    assert.equal(store.openSnapshot().seq, lastSeq + 200, 'a new snapshot sees the later batches');
    await store.close();
  }));

  it('batches still on their way to LMDB are not part of a snapshot', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    store.commit({ keys: new Map([['a', stored('1', 1)]]), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(1) });
    await store.flushed();
    store.commit({ keys: new Map([['a', stored('2', 2)], ['b', stored('2', 2)]]), sessions: new Map(), appliedSeq: seq(2), appliedEpoch: epoch(1) });
    assert.equal(store.pendingBatchCount, 1);
    const snapshot = store.openSnapshot();
    assert.equal(snapshot.seq, 1);
    assert.deepEqual(readSnapshot(snapshot, 100).keys, [{ key: 'a', ...stored('1', 1) }]);
    // Closing the store closes the snapshots still open.
    await store.close();
    assert.throws(() => snapshot.chunks(10).next(), /The snapshot is closed/);
  }));

  it('openSnapshotOfApplied holds every batch committed before the call, overlay included', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    store.commit({ keys: new Map([['a', stored('1', 1)]]), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(1) });
    await store.flushed();
    // Many batches at once, as a busy server applies them: LMDB trails them when the call is made.
    for (let at = 2; at <= 200; at++) {
      store.commit({ keys: new Map([[`k${at % 17}`, stored(String(at), at)]]), sessions: new Map(), appliedSeq: seq(at), appliedEpoch: epoch(2) });
    }
    assert.ok(store.pendingBatchCount > 0, 'some batches are still in the overlay');
    const trailing = store.openSnapshot();
    assert.ok(trailing.seq < 200, `LMDB's last transaction trails the applied state (seq ${trailing.seq}): without the wait a backup would miss writes`);
    // snapshotSeq is a floor for where such a snapshot stands (the core compacts its log no further).
    assert.ok(store.snapshotSeq() <= trailing.seq, `snapshotSeq ${store.snapshotSeq()} is above the snapshot's seq ${trailing.seq}`);
    trailing.close();
    const snapshot = await store.openSnapshotOfApplied();
    assert.equal(snapshot.seq, 200);
    assert.equal(store.snapshotSeq(), 200);
    assert.equal(snapshot.epoch, 2);
    const expected = new Map<string, StoredValue>([['a', stored('1', 1)]]);
    for (let at = 2; at <= 200; at++) expected.set(`k${at % 17}`, stored(String(at), at));
    assert.deepEqual(readSnapshot(snapshot, 1000).keys, sortedModel(expected));
    snapshot.close();
    await store.close();
  }));

  it('installSnapshot and writeRestoredStore recreate the state exactly, durably', () => withDirectory(async (dir) => {
    const source = await openLmdbStore(join(dir, 'source'));
    const model = new Map<string, StoredValue>();
    const sessions = new Map<string, SessionRecord>();
    const lastSeq = commitRandomBatches(source, new Random(11), 1, 300, model, sessions);
    await source.flushed();
    const snapshot = source.openSnapshot();
    const counts = await writeRestoredStore(join(dir, 'restored'), snapshot.chunks(3000), snapshot);
    assert.deepEqual(counts, { keys: snapshot.keyCount, sessions: snapshot.sessionCount });
    snapshot.close();

    const restored = await openLmdbStore(join(dir, 'restored'));
    assert.equal(restored.installInterrupted, false);
    assert.equal(restored.appliedSeq(), lastSeq);
    assert.equal(restored.appliedEpoch(), source.appliedEpoch());
    assert.deepEqual(restored.range('', 100_000), sortedModel(model));
    assert.deepEqual(sortSessions(restored.loadSessions()), sortSessions([...sessions.values()]));
    // The restored store goes on taking batches.
    restored.commit({ keys: new Map([['after', stored('x', lastSeq + 1)]]), sessions: new Map(), appliedSeq: seq(lastSeq + 1), appliedEpoch: epoch(9) });
    await restored.close();
    await assert.rejects(writeRestoredStore(join(dir, 'restored'), [], { seq: seq(1), epoch: epoch(1) }), /already holds a key-value store with data/);

    // Installing over a store that has data replaces all of it.
    const live = source;
    await live.installSnapshot([{ items: [{ key: 'only', value: bytes('one'), version: 3 }], sessions: [] }], { seq: seq(5), epoch: epoch(2) });
    assert.deepEqual(live.range('', 10), [{ key: 'only', value: bytes('one'), version: 3 }]);
    assert.deepEqual(live.loadSessions(), []);
    assert.equal(live.appliedSeq(), 5);
    await live.close();
    const reopened = await openLmdbStore(join(dir, 'source'));
    assert.deepEqual(reopened.range('', 10), [{ key: 'only', value: bytes('one'), version: 3 }]);
    assert.equal(reopened.appliedEpoch(), 2);
    await reopened.close();
  }));

  it('refuses reads and commits during an install, and a failed install leaves the store empty at seq 0', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    store.commit({ keys: new Map([['old', stored('o', 1)]]), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(1) });
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => { release = resolve; });
    async function* slow(): AsyncGenerator<SnapshotChunk> {
      yield { items: [{ key: 'a', value: bytes('1'), version: 1 }], sessions: [] };
      await gate;
      yield { items: [{ key: 'b', value: bytes('2'), version: 2 }], sessions: [sessionRecord('c', 2)] };
    }
    const install = store.installSnapshot(slow(), { seq: seq(2), epoch: epoch(1) });
    await nextTurn();
    assert.throws(() => store.get('a'), /installing a snapshot/);
    assert.throws(() => store.openSnapshot(), /installing a snapshot/);
    assert.throws(() => store.commit({ keys: new Map(), sessions: new Map(), appliedSeq: seq(3), appliedEpoch: epoch(1) }), /installing a snapshot/);
    release();
    await install;
    assert.deepEqual(store.range('', 10).map((item) => item.key), ['a', 'b']);

    // Keys out of order: refused, and the store is left empty before the first entry.
    assert.deepEqual(store.loadSessions(), [sessionRecord('c', 2)]);
    await assert.rejects(store.installSnapshot([
      { items: [{ key: 'b', value: bytes('1'), version: 1 }, { key: 'a', value: bytes('2'), version: 1 }], sessions: [] },
    ], { seq: seq(2), epoch: epoch(1) }), /strictly increasing order/);
    assert.deepEqual(store.range('', 10), []);
    assert.equal(store.appliedSeq(), 0);
    async function* broken(): AsyncGenerator<SnapshotChunk> {
      yield { items: [{ key: 'a', value: bytes('1'), version: 1 }], sessions: [] };
      throw new Error('The connection was cut');
    }
    await assert.rejects(store.installSnapshot(broken(), { seq: seq(2), epoch: epoch(1) }), /connection was cut/);
    assert.deepEqual(store.range('', 10), []);
    await store.close();
    const reopened = await openLmdbStore(dir);
    assert.equal(reopened.installInterrupted, false);
    assert.equal(reopened.appliedSeq(), 0);
    assert.deepEqual(reopened.range('', 10), []);
    await reopened.close();
  }));

  it('an install cut short by a crash is noticed at the next open, which empties the store', () => withDirectory(async (dir) => {
    const store = await openLmdbStore(dir);
    store.commit({ keys: new Map([['a', stored('1', 1)]]), sessions: new Map([['c', sessionRecord('c', 1)]]), appliedSeq: seq(1), appliedEpoch: epoch(1) });
    await store.close();
    // What a crash in the middle of an install leaves: the mark, and some of the snapshot's keys.
    const raw = open(dir, { maxDbs: 3 });
    const meta = raw.openDB<Buffer, Buffer>('meta', { encoding: 'binary', keyEncoding: 'binary', useVersions: true });
    const version = meta.getEntry(Buffer.from('applied'))?.version as number;
    await raw.transaction(() => {
      void meta.put(Buffer.from('installing'), Buffer.from('1'), version + 1);
      void meta.put(Buffer.from('applied'), Buffer.alloc(16), version + 1);
    });
    await raw.close();
    const reopened = await openLmdbStore(dir);
    assert.equal(reopened.installInterrupted, true);
    assert.equal(reopened.appliedSeq(), 0);
    assert.deepEqual(reopened.range('', 10), []);
    assert.deepEqual(reopened.loadSessions(), []);
    reopened.commit({ keys: new Map([['b', stored('2', 1)]]), sessions: new Map(), appliedSeq: seq(1), appliedEpoch: epoch(1) });
    await reopened.close();
    const again = await openLmdbStore(dir);
    assert.equal(again.installInterrupted, false);
    assert.deepEqual(again.range('', 10).map((item) => item.key), ['b']);
    await again.close();
  }));
});

describe('compareKeys', () => {
  it('orders strings as their UTF-8 bytes', () => {
    const encoder = new TextEncoder();
    const character = fc.oneof(
      fc.constantFrom('a', '~', '\u00E9', '\uE000', '\uFF5E', '\uFFFF', '\u{10000}', '\u{1F600}', '\u{10FFFF}'),
      fc.string({ unit: 'grapheme', maxLength: 1 }),
    );
    const key = fc.array(character, { maxLength: 6 }).map((parts) => parts.join(''));
    fc.assert(fc.property(key, key, (a, b) => {
      assert.equal(Math.sign(compareKeys(a, b)), Math.sign(Buffer.compare(encoder.encode(a), encoder.encode(b))));
    }), { numRuns: 2000 });
  });
});
