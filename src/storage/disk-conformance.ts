// The conformance suite every disk of a server passes, the real one (FileLog) and the simulated
// one (SimDisk): the core's disk operations, run in order and reported durable in order, leave
// after a clean close and a reopen exactly what a simple model of a log and a meta file says.
// Seeded: a failure names the seed that reproduces it. Two parts are optional, for disks that
// have them: the resetLog operation (options.resetLog) and compaction (a disk with
// removeSegmentsBefore and firstSeq).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Random } from '../lib/random.ts';
import type { DiskOperation } from '../core/server.ts';
import { encodeEntry } from '../protocol/codec.ts';
import type { ServerMeta } from '../protocol/messages.ts';
import type { Epoch, LogEntry, Operation, Seq, Write } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';

/** A disk as the runtime drives it: the FileLog interface. */
export interface DiskUnderTest {
  submit(operationId: number, operation: DiskOperation): void;
  /** The operation and every one before it are durable. */
  onDurable: (operationId: number) => void;
  /** Waits for submitted work, then closes. */
  close(): Promise<void>;
  /**
   * Compaction, if the disk has it: drops entries below a seq of its choosing at most `beforeSeq`,
   * in order with the operations submitted before; `firstSeq` then says where the log starts.
   */
  removeSegmentsBefore?(beforeSeq: Seq): Promise<number>;
  readonly firstSeq?: Seq;
}

export interface RecoveredDisk {
  meta: ServerMeta;
  entries: LogEntry[];
  firstSeq?: Seq;
  baseEpoch?: Epoch;
  corruptionFound: boolean;
  tornTailCut?: boolean;
}

/** One server's disk, opened again and again over the same durable state. */
export interface DiskSubject {
  /** Opens the disk (again after a close) and runs its recovery. */
  open(): Promise<{ disk: DiskUnderTest; recovered: RecoveredDisk }>;
  /** Removes whatever the subject created. */
  destroy(): Promise<void>;
}

export interface ConformanceOptions {
  seeds?: readonly number[];
  /** Close-and-reopen cycles per seed. */
  roundsPerSeed?: number;
  /** Most operations submitted per round. */
  operationsPerRoundMax?: number;
  /** The disk implements the resetLog operation (default false). */
  resetLog?: boolean;
}

/** How long a disk may take to report submitted operations durable before the test fails. */
const reportWaitMs = 10_000;
const defaultSeeds = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/** The model: what a log and a meta file hold after the operations, applied one by one. */
class DiskModel {
  /** entries[i] has seq firstSeq + i. */
  entries: LogEntry[] = [];
  firstSeq = 1;
  /** Epoch of the entry at firstSeq − 1. */
  baseEpoch: Epoch = epoch(0);
  meta: ServerMeta = { promisedEpoch: epoch(0), incomplete: false };

  get lastSeq(): number {
    return this.firstSeq - 1 + this.entries.length;
  }

  get lastEpoch(): Epoch {
    return this.entries.at(-1)?.epoch ?? this.baseEpoch;
  }

  apply(operation: DiskOperation): void {
    switch (operation.type) {
      case 'append':
        for (const entry of operation.entries) {
          assert.equal(entry.seq, this.lastSeq + 1, 'the generator appends in order');
          this.entries.push(entry);
        }
        break;
      case 'truncate':
        assert.ok(operation.afterSeq >= this.firstSeq - 1, 'the generator truncates within the log');
        if (operation.afterSeq < this.lastSeq) this.entries.length = operation.afterSeq - this.firstSeq + 1;
        break;
      case 'meta':
        this.meta = { ...operation.meta };
        break;
      case 'resetLog':
        this.entries = [];
        this.firstSeq = operation.firstSeq;
        this.baseEpoch = operation.baseEpoch;
        break;
    }
  }

  /** The disk compacted its log to start at `firstSeq`. */
  compactTo(firstSeq: number): void {
    assert.ok(firstSeq >= this.firstSeq && firstSeq <= this.lastSeq + 1, `a compaction keeps the log's end: ${firstSeq} in [${this.firstSeq}, ${this.lastSeq + 1}]`);
    if (firstSeq === this.firstSeq) return;
    this.baseEpoch = (this.entries[firstSeq - 1 - this.firstSeq] as LogEntry).epoch;
    this.entries = this.entries.slice(firstSeq - this.firstSeq);
    this.firstSeq = firstSeq;
  }
}

/** Tracks onDurable reports: in order, never ahead of submissions, and waits for them. */
class DurabilityReports {
  submitted = 0;
  reported = 0;
  private waiters: { operationId: number; resolve: () => void }[] = [];
  readonly problems: string[] = [];

  readonly onDurable = (operationId: number): void => {
    if (operationId <= this.reported) this.problems.push(`onDurable(${operationId}) after onDurable(${this.reported})`);
    if (operationId > this.submitted) this.problems.push(`onDurable(${operationId}) before it was submitted (last ${this.submitted})`);
    this.reported = Math.max(this.reported, operationId);
    this.waiters = this.waiters.filter((waiter) => {
      if (waiter.operationId > this.reported) return true;
      waiter.resolve();
      return false;
    });
  };

  /** Resolves once every submitted operation is reported durable; rejects after reportWaitMs. */
  all(): Promise<void> {
    if (this.reported >= this.submitted) return Promise.resolve();
    const operationId = this.submitted;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`Operation ${operationId} was not reported durable within ${reportWaitMs} ms`)), reportWaitMs);
      this.waiters.push({ operationId, resolve: () => { clearTimeout(timer); resolve(); } });
    });
  }
}

function randomBytes(random: Random, length: number): Uint8Array {
  const bytes = new Uint8Array(length);
  for (let i = 0; i < length; i++) bytes[i] = random.int(0, 255);
  return bytes;
}

function randomKey(random: Random): string {
  return random.pick(['a', 'b', 'key', 'user:42', 'ключ', '鍵', '']) + String(random.int(0, 99));
}

function randomWrite(random: Random): Write {
  const roll = random.int(0, 9);
  if (roll < 5) {
    // Mostly small values; now and then a large one, so small segments roll.
    const length = random.chance(0.1) ? random.int(500, 3000) : random.int(0, 120);
    const write: Write = { type: 'put', key: randomKey(random), value: randomBytes(random, length) };
    if (random.chance(0.3)) write.ifVersion = random.int(0, 1000);
    if (random.chance(0.1)) write.ifAbsent = true;
    return write;
  }
  if (roll < 7) {
    const write: Write = { type: 'delete', key: randomKey(random) };
    if (random.chance(0.3)) write.ifVersion = random.int(0, 1000);
    return write;
  }
  if (roll < 9) {
    const operation = (): Operation => (random.chance(0.5)
      ? { type: 'put', key: randomKey(random), value: randomBytes(random, random.int(0, 40)) }
      : { type: 'delete', key: randomKey(random) });
    const many = <T>(make: () => T): T[] => Array.from({ length: random.int(0, 3) }, make);
    return { type: 'txn', compares: many(() => ({ key: randomKey(random), version: random.int(0, 1000) })), success: many(operation), failure: many(operation) };
  }
  return { type: 'epochStart' };
}

/** The next random operation against the model; epochs of appended entries never decrease. */
function randomOperation(random: Random, model: DiskModel, state: { epoch: number }, withResetLog: boolean): DiskOperation {
  if (withResetLog && random.chance(0.03)) {
    // A snapshot's position: usually ahead of the log, sometimes inside it or behind its start.
    const firstSeq = Math.max(1, random.chance(0.7) ? model.lastSeq + random.int(1, 300) : model.lastSeq - random.int(0, 200));
    if (random.chance(0.5)) state.epoch++;
    return { type: 'resetLog', firstSeq: seq(firstSeq), baseEpoch: epoch(firstSeq === 1 ? 0 : random.int(1, state.epoch)) };
  }
  const roll = random.float();
  if (roll < 0.7) {
    if (random.chance(0.1)) state.epoch++;
    const entries: LogEntry[] = [];
    const count = random.chance(0.2) ? random.int(20, 80) : random.int(1, 6);
    const entryEpoch = Math.max(state.epoch, model.lastEpoch);
    for (let i = 0; i < count; i++) {
      const entry: LogEntry = { epoch: epoch(entryEpoch), seq: seq(model.lastSeq + entries.length + 1), write: randomWrite(random) };
      if (random.chance(0.5)) entry.session = { clientId: `client-${random.int(0, 9)}`, requestId: random.int(1, 1_000_000) };
      entries.push(entry);
    }
    return { type: 'append', entries };
  }
  if (roll < 0.85) {
    // Mostly a cut near the end, sometimes anywhere, sometimes past the end (which changes nothing).
    const lowest = model.firstSeq - 1;
    const afterSeq = random.chance(0.7) ? Math.max(lowest, model.lastSeq - random.int(0, 10)) : random.int(lowest, model.lastSeq + 2);
    return { type: 'truncate', afterSeq: seq(afterSeq) };
  }
  if (random.chance(0.7)) state.epoch++;
  return { type: 'meta', meta: { promisedEpoch: epoch(Math.max(state.epoch, model.meta.promisedEpoch)), incomplete: random.chance(0.2) } };
}

/** Entries compare by their encoding: decoded byte arrays may be views of another class. */
function assertSameEntries(actual: readonly LogEntry[], expected: readonly LogEntry[], context: string): void {
  assert.equal(actual.length, expected.length, `${context}: ${actual.length} entries recovered, ${expected.length} expected`);
  for (let i = 0; i < expected.length; i++) {
    const a = encodeEntry(actual[i] as LogEntry);
    const b = encodeEntry(expected[i] as LogEntry);
    assert.ok(a.length === b.length && a.every((byte, at) => byte === b[at]), `${context}: entry ${i + 1} differs`);
  }
}

function assertRecovered(recovered: RecoveredDisk, model: DiskModel, context: string): void {
  assert.equal(recovered.corruptionFound, false, `${context}: no corruption after a clean close`);
  assert.notEqual(recovered.tornTailCut, true, `${context}: no torn tail after a clean close`);
  assert.equal(recovered.firstSeq ?? 1, model.firstSeq, `${context}: the log starts at seq ${model.firstSeq}`);
  assert.equal(recovered.baseEpoch ?? 0, model.baseEpoch, `${context}: the base epoch`);
  assert.deepEqual(recovered.meta, model.meta, `${context}: meta`);
  assertSameEntries(recovered.entries, model.entries, context);
}

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export function diskConformance(name: string, factory: () => Promise<DiskSubject>, options: ConformanceOptions = {}): void {
  const seeds = options.seeds ?? defaultSeeds;
  const roundsPerSeed = options.roundsPerSeed ?? 4;
  const operationsPerRoundMax = options.operationsPerRoundMax ?? 40;

  describe(`disk conformance: ${name}`, () => {
    it('a new disk recovers an empty log and the initial meta', async () => {
      const subject = await factory();
      try {
        const { disk, recovered } = await subject.open();
        assertRecovered(recovered, new DiskModel(), 'new disk');
        await disk.close();
      } finally {
        await subject.destroy();
      }
    });

    it('appends, truncates to nothing, and appends again', async () => {
      const subject = await factory();
      try {
        const model = new DiskModel();
        const reports = new DurabilityReports();
        const { disk } = await subject.open();
        disk.onDurable = reports.onDurable;
        const operations: DiskOperation[] = [
          { type: 'append', entries: [1, 2, 3].map((at) => ({ epoch: epoch(1), seq: seq(at), write: { type: 'epochStart' } })) },
          { type: 'truncate', afterSeq: seq(5) },
          { type: 'truncate', afterSeq: seq(0) },
          { type: 'append', entries: [{ epoch: epoch(2), seq: seq(1), write: { type: 'delete', key: 'k' } }] },
          { type: 'meta', meta: { promisedEpoch: epoch(2), incomplete: true } },
        ];
        for (const operation of operations) {
          disk.submit(++reports.submitted, operation);
          model.apply(operation);
        }
        await reports.all();
        await disk.close();
        assert.deepEqual(reports.problems, []);
        const reopened = await subject.open();
        assertRecovered(reopened.recovered, model, 'after truncating to nothing');
        await reopened.disk.close();
      } finally {
        await subject.destroy();
      }
    });

    it('resetLog drops the log and appends continue at its firstSeq', { skip: options.resetLog !== true && 'the disk has no resetLog yet' }, async () => {
      const subject = await factory();
      try {
        const model = new DiskModel();
        const reports = new DurabilityReports();
        const { disk } = await subject.open();
        disk.onDurable = reports.onDurable;
        const operations: DiskOperation[] = [
          { type: 'append', entries: [1, 2, 3, 4, 5].map((at) => ({ epoch: epoch(1), seq: seq(at), write: { type: 'epochStart' } })) },
          // Behind the log's end: the old entries 3..5 must not come back.
          { type: 'resetLog', firstSeq: seq(3), baseEpoch: epoch(1) },
          { type: 'append', entries: [{ epoch: epoch(2), seq: seq(3), write: { type: 'delete', key: 'k' } }] },
          { type: 'resetLog', firstSeq: seq(1000), baseEpoch: epoch(4) },
          { type: 'append', entries: [1000, 1001].map((at) => ({ epoch: epoch(5), seq: seq(at), write: { type: 'epochStart' } })) },
          { type: 'truncate', afterSeq: seq(999) },
          { type: 'append', entries: [{ epoch: epoch(6), seq: seq(1000), write: { type: 'epochStart' } }] },
        ];
        for (const operation of operations) {
          disk.submit(++reports.submitted, operation);
          model.apply(operation);
        }
        await reports.all();
        await disk.close();
        assert.deepEqual(reports.problems, []);
        const reopened = await subject.open();
        assertRecovered(reopened.recovered, model, 'after resets');
        assert.equal(reopened.recovered.firstSeq, 1000);
        await reopened.disk.close();
      } finally {
        await subject.destroy();
      }
    });

    for (const seed of seeds) {
      it(`random appends, truncates and meta writes survive close and reopen (seed ${seed})`, async () => {
        const random = new Random(seed);
        const subject = await factory();
        const model = new DiskModel();
        const state = { epoch: 1 };
        try {
          let { disk, recovered } = await subject.open();
          for (let round = 1; round <= roundsPerSeed; round++) {
            const context = `seed ${seed}, round ${round}`;
            assertRecovered(recovered, model, context);
            const reports = new DurabilityReports();
            disk.onDurable = reports.onDurable;
            const count = random.int(1, operationsPerRoundMax);
            for (let i = 0; i < count; i++) {
              if (disk.removeSegmentsBefore !== undefined && random.chance(0.05)) {
                await disk.removeSegmentsBefore(seq(random.int(model.firstSeq, model.lastSeq + 2)));
                model.compactTo(disk.firstSeq as Seq);
              }
              const operation = randomOperation(random, model, state, options.resetLog === true);
              disk.submit(++reports.submitted, operation);
              model.apply(operation);
              // Now and then let the disk work, so operations group in different ways.
              if (random.chance(0.2)) await nextTurn();
              if (random.chance(0.05)) await reports.all();
            }
            await reports.all();
            assert.deepEqual(reports.problems, [], context);
            assert.equal(reports.reported, reports.submitted, context);
            await disk.close();
            ({ disk, recovered } = await subject.open());
          }
          assertRecovered(recovered, model, `seed ${seed}, at the end`);
          await disk.close();
        } finally {
          await subject.destroy();
        }
      });
    }
  });
}
