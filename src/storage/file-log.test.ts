import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { appendFile, mkdir, mkdtemp, open as fsOpen, readFile, readdir, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { MemoryKvStore } from '../core/kv.ts';
import type { DiskOperation } from '../core/server.ts';
import { ServerCore, defaultServerLimits, defaultServerTimings } from '../core/server.ts';
import type { LogEntry } from '../protocol/types.ts';
import { epoch, seq, serverId } from '../protocol/types.ts';
import { SimDisk } from '../sim/disk.ts';
import type { DiskSubject, DiskUnderTest } from './disk-conformance.ts';
import { diskConformance } from './disk-conformance.ts';
import type { FileLog, FileLogOptions, OpenedFileLog, RecoveredLog } from './file-log.ts';
import { FileLogFailedError, openFileLog, writeEmptyLogStart } from './file-log.ts';
import type { LogFileSystem } from './file-log-system.ts';
import { nodeFileSystem } from './file-log-system.ts';
import { crc32, recordEndOffset, recordHeaderBytes } from './log-format.ts';

// ---------------------------------------------------------------- helpers

async function temporaryDirectory(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'mainstay-file-log-'));
}

function entryAt(at: number, entryEpoch = 1, valueBytes = 20): LogEntry {
  const value = new Uint8Array(valueBytes);
  for (let i = 0; i < valueBytes; i++) value[i] = (at + i) & 0xff;
  return { epoch: epoch(entryEpoch), seq: seq(at), write: { type: 'put', key: `key-${at}`, value }, session: { clientId: 'client', requestId: at } };
}

function entries(from: number, to: number, entryEpoch = 1, valueBytes = 20): LogEntry[] {
  const result: LogEntry[] = [];
  for (let at = from; at <= to; at++) result.push(entryAt(at, entryEpoch, valueBytes));
  return result;
}

function seqs(list: readonly LogEntry[]): number[] {
  return list.map((entry) => entry.seq);
}

const waitLimitMs = 10_000;

/** Waits, a turn at a time, until the condition holds; fails the test after waitLimitMs. */
async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + waitLimitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Waited ${waitLimitMs} ms for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Drives a FileLog as the runtime would: numbered operations, and a wait for their durability. */
class Driver {
  nextId = 1;
  durable = 0;
  readonly reported: number[] = [];
  private waiters: { id: number; resolve: () => void }[] = [];

  constructor(readonly log: FileLog) {
    log.onDurable = (operationId) => {
      this.reported.push(operationId);
      this.durable = operationId;
      this.waiters = this.waiters.filter((waiter) => {
        if (waiter.id > operationId) return true;
        waiter.resolve();
        return false;
      });
    };
  }

  submit(operation: DiskOperation): number {
    const id = this.nextId++;
    this.log.submit(id, operation);
    return id;
  }

  /** Resolves when operation `id` (default: the last one submitted) is durable. */
  durableUpTo(id = this.nextId - 1): Promise<void> {
    if (this.durable >= id) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`Operation ${id} was not reported durable within ${waitLimitMs} ms`)), waitLimitMs);
      this.waiters.push({ id, resolve: () => { clearTimeout(timer); resolve(); } });
    });
  }

  async run(...operations: DiskOperation[]): Promise<void> {
    for (const operation of operations) this.submit(operation);
    await this.durableUpTo();
  }
}

function segmentFiles(dataDir: string): Promise<string[]> {
  return readdir(join(dataDir, 'log')).then((names) => names.sort());
}

/** A core on a recovered log, with a state that holds what the log compacted (up to its start). */
function startCore(recovered: RecoveredLog): ServerCore {
  const store = new MemoryKvStore();
  const base = recovered.firstSeq - 1;
  if (base > 0) store.commit({ keys: new Map(), sessions: new Map(), appliedSeq: seq(base), appliedEpoch: recovered.baseEpoch });
  return new ServerCore(
    { id: serverId('s1'), timings: defaultServerTimings, limits: defaultServerLimits },
    { ...recovered, bootId: 1, store },
  );
}

function ioError(code: string, syscall: string): Error {
  return Object.assign(new Error(`${code}: i/o error, ${syscall}`), { code, syscall });
}

/** The node file system, with every call recorded by name and with overrides. */
function tracedFileSystem(trace: string[], overrides: Partial<LogFileSystem> = {}): LogFileSystem {
  const traced: Record<string, unknown> = {};
  for (const name of Object.keys(nodeFileSystem) as (keyof LogFileSystem)[]) {
    const call = (overrides[name] ?? nodeFileSystem[name]) as (...args: unknown[]) => Promise<unknown>;
    traced[name] = (...args: unknown[]): Promise<unknown> => {
      trace.push(typeof args[0] === 'string' ? `${name} ${args[0]}` : name);
      return call(...args);
    };
  }
  return traced as unknown as LogFileSystem;
}

let dataDir = '';
const opened: OpenedFileLog[] = [];

async function open(options: FileLogOptions = {}): Promise<OpenedFileLog> {
  const result = await openFileLog(dataDir, options);
  opened.push(result);
  return result;
}

beforeEach(async () => {
  dataDir = await temporaryDirectory();
});

afterEach(async () => {
  for (const { log } of opened.splice(0)) await log.close().catch(() => {});
  await rm(dataDir, { recursive: true, force: true });
});

// ---------------------------------------------------------------- conformance: the real and the simulated disk

function fileLogSubject(options: FileLogOptions): () => Promise<DiskSubject> {
  return async () => {
    const directory = await temporaryDirectory();
    return {
      open: async () => {
        const { log, recovered } = await openFileLog(directory, options);
        return { disk: log, recovered };
      },
      destroy: () => rm(directory, { recursive: true, force: true }),
    };
  };
}

/** SimDisk as a DiskUnderTest: operations complete in groups on a later turn, in order. */
function simDiskSubject(): () => Promise<DiskSubject> {
  return async () => {
    const simulated = new SimDisk();
    return {
      open: async () => {
        const recovery = simulated.recover();
        let issued = 0;
        let completion: Promise<void> | undefined;
        const disk: DiskUnderTest = {
          onDurable: () => {},
          submit(operationId, operation) {
            simulated.issue(operationId, operation);
            issued = operationId;
            completion ??= new Promise<void>((resolve) => setImmediate(() => {
              completion = undefined;
              simulated.complete(issued);
              disk.onDurable(issued);
              resolve();
            }));
          },
          close: async () => {
            await completion;
          },
        };
        return { disk, recovered: recovery };
      },
      destroy: async () => {},
    };
  };
}

// Small segments, so the random operations roll, cut and delete them.
diskConformance('FileLog', fileLogSubject({ segmentBytesMax: 4096 }), { resetLog: true });
diskConformance('FileLog with one group per 1 KiB', fileLogSubject({ segmentBytesMax: 2048, groupBytesMax: 1024 }), { seeds: [21, 22, 23, 24], resetLog: true });
// SimDisk has no resetLog yet: the suite skips that part for it (see disk-conformance.ts).
diskConformance('SimDisk', simDiskSubject(), { resetLog: true });

// ---------------------------------------------------------------- FileLog

describe('FileLog: segments', () => {
  it('writes segments named by their first seq, each within segmentBytesMax, and recovers them', async () => {
    const trace: string[] = [];
    const { log, recovered } = await open({ segmentBytesMax: 1024, fileSystem: tracedFileSystem(trace) });
    assert.deepEqual(recovered, { meta: { promisedEpoch: 0, incomplete: false }, entries: [], firstSeq: 1, baseEpoch: 0, corruptionFound: false, tornTailCut: false });
    const driver = new Driver(log);
    for (let from = 1; from <= 200; from += 25) driver.submit({ type: 'append', entries: entries(from, from + 24) });
    await driver.durableUpTo();
    await log.close();
    // A full segment is synced before the next one is created, so no torn write spans two.
    const creations = trace.map((call, index) => ({ call, index })).filter(({ call }) => call.startsWith('open') && call.endsWith('.seg'));
    for (const { call, index } of creations.slice(1)) {
      assert.ok(trace.lastIndexOf('fdatasync', index) > trace.lastIndexOf('write', index), `the segment before ${call} was synced first`);
    }

    const names = await segmentFiles(dataDir);
    assert.ok(names.length > 5, `${names.length} segments`);
    assert.equal(names[0], '00000000000000000001.seg');
    for (const name of names) assert.ok((await stat(join(dataDir, 'log', name))).size <= 1024, name);

    const reopened = await open({ segmentBytesMax: 1024 });
    assert.deepEqual(seqs(reopened.recovered.entries), seqs(entries(1, 200)));
    assert.equal(reopened.log.segmentCount, names.length);
    // Each segment starts with the seq in its name.
    const starts = names.map((name) => Number(name.slice(0, 20)));
    for (let i = 1; i < starts.length; i++) assert.ok((starts[i] as number) > (starts[i - 1] as number), `segment ${i} starts after segment ${i - 1}`);
  });

  it('removeSegmentsBefore deletes whole segments below a seq, never the one appended to', async () => {
    const first = await open({ segmentBytesMax: 1024 });
    const driver = new Driver(first.log);
    await driver.run({ type: 'append', entries: entries(1, 100) });
    const names = await segmentFiles(dataDir);
    const starts = names.map((name) => Number(name.slice(0, 20)));
    const third = starts[2] as number;

    // Segments 1 and 2 hold only entries below `third`; segment 3 starts there and stays.
    assert.equal(await first.log.removeSegmentsBefore(seq(third)), 2);
    assert.deepEqual(await segmentFiles(dataDir), names.slice(2));
    assert.equal(first.log.firstSeq, third);
    // A seq inside segment 3 does not remove it.
    assert.equal(await first.log.removeSegmentsBefore(seq(third + 1)), 0);
    // Far beyond the end: everything but the current segment.
    assert.equal(await first.log.removeSegmentsBefore(seq(1_000_000)), names.length - 3);
    assert.deepEqual(await segmentFiles(dataDir), names.slice(-1));
    await driver.run({ type: 'append', entries: entries(101, 110) });
    await first.log.close();

    const reopened = await open({ segmentBytesMax: 1024 });
    assert.equal(reopened.recovered.firstSeq, starts.at(-1));
    assert.deepEqual(seqs(reopened.recovered.entries), seqs(entries(starts.at(-1) as number, 110)));
    assert.equal(reopened.recovered.corruptionFound, false);
    // The core accepts a log that starts after seq 1.
    assert.equal(startCore(reopened.recovered).firstSeq, starts.at(-1));
  });

  it('truncate cuts the segment holding the cut and deletes later ones, before later appends', async () => {
    const trace: string[] = [];
    const { log } = await open({ segmentBytesMax: 1024, fileSystem: tracedFileSystem(trace) });
    const driver = new Driver(log);
    await driver.run({ type: 'append', entries: entries(1, 60) });
    const before = await segmentFiles(dataDir);
    const secondStart = Number((before[1] as string).slice(0, 20));
    const cutAt = secondStart + 2;
    trace.length = 0;
    await driver.run(
      { type: 'truncate', afterSeq: seq(cutAt) },
      { type: 'append', entries: entries(cutAt + 1, cutAt + 5, 2) },
    );
    // Later segments were deleted and that made durable before the cut; the cut was synced
    // before the new entries were written.
    const unlinks = trace.filter((call) => call.startsWith('unlink'));
    assert.equal(unlinks.length, before.length - 2);
    const lastUnlink = trace.lastIndexOf(unlinks.at(-1) as string);
    const ftruncate = trace.indexOf('ftruncate');
    assert.ok(ftruncate > lastUnlink, 'segments are deleted before the cut');
    assert.ok(trace.slice(lastUnlink, ftruncate).includes('fsync'), 'the deletions are synced before the cut');
    assert.equal(trace[ftruncate + 1], 'fsync', 'the cut is synced at once');
    assert.ok(trace.indexOf('write', ftruncate) > ftruncate + 1, 'the next append is written after the cut is synced');
    await log.close();

    const reopened = await open({ segmentBytesMax: 1024 });
    assert.deepEqual(seqs(reopened.recovered.entries), seqs(entries(1, cutAt + 5)));
    assert.deepEqual(reopened.recovered.entries.slice(-5).map((entry) => entry.epoch), [2, 2, 2, 2, 2]);
    assert.equal(reopened.recovered.tornTailCut, false);
  });

  it('truncate to nothing keeps the first segment, empty, and the log starts there again', async () => {
    const { log } = await open({ segmentBytesMax: 1024 });
    const driver = new Driver(log);
    await driver.run({ type: 'append', entries: entries(1, 50) }, { type: 'truncate', afterSeq: seq(0) });
    assert.deepEqual(await segmentFiles(dataDir), ['00000000000000000001.seg']);
    assert.equal((await stat(join(dataDir, 'log', '00000000000000000001.seg'))).size, 0);
    await driver.run({ type: 'append', entries: entries(1, 3, 2) });
    await log.close();
    const reopened = await open();
    assert.deepEqual(seqs(reopened.recovered.entries), [1, 2, 3]);
  });

  it('refuses an append that does not continue the log, at submit', async () => {
    const { log } = await open();
    const driver = new Driver(log);
    await driver.run({ type: 'append', entries: entries(1, 3) });
    assert.throws(() => log.submit(driver.nextId++, { type: 'append', entries: entries(5, 5) }), /continue the log at seq 4/);
    assert.throws(() => log.submit(1, { type: 'truncate', afterSeq: seq(0) }), /operation ids must grow/);
  });
});

describe('FileLog: log start (compaction and resetLog)', () => {
  /** Entries 1..100 over small segments, in epochs that change every 10 entries. */
  async function writeEpochs(log: FileLog): Promise<Driver> {
    const driver = new Driver(log);
    for (let from = 1; from <= 100; from += 10) driver.submit({ type: 'append', entries: entries(from, from + 9, Math.ceil(from / 10)) });
    await driver.durableUpTo();
    return driver;
  }

  function logStartFile(): Promise<unknown> {
    return readFile(join(dataDir, 'log-start.json'), 'utf8').then((text) => JSON.parse(text) as unknown);
  }

  /** The index in `trace` of the call that put log-start.json in place (the nth one). */
  function logStartRename(trace: string[], nth = 1): number {
    let seen = 0;
    return trace.findIndex((call) => call.startsWith('rename') && call.endsWith('log-start.json.tmp') && ++seen === nth);
  }

  it('removeSegmentsBefore records the new start and the epoch before it durably, before deleting', async () => {
    const trace: string[] = [];
    const { log } = await open({ segmentBytesMax: 1024, fileSystem: tracedFileSystem(trace) });
    await writeEpochs(log);
    const names = await segmentFiles(dataDir);
    const third = Number((names[2] as string).slice(0, 20));
    trace.length = 0;
    assert.equal(await log.removeSegmentsBefore(seq(third)), 2);
    assert.equal(log.firstSeq, third);
    assert.equal(log.baseEpoch, Math.ceil((third - 1) / 10));
    assert.deepEqual(await logStartFile(), { firstSeq: third, baseEpoch: Math.ceil((third - 1) / 10) });
    // The start record: temporary file synced, renamed, directory synced; only then the unlinks.
    const rename = logStartRename(trace);
    assert.ok(rename > 0, 'log-start.json was written');
    assert.equal(trace[rename + 1], 'fsync', 'the data directory is synced after the rename');
    const firstUnlink = trace.findIndex((call) => call.startsWith('unlink') && call.endsWith('.seg'));
    assert.ok(firstUnlink > rename + 1, 'segments are deleted after the start record is durable');
    assert.equal(trace.at(-1), 'fsync', 'the deletions are synced before the removal resolves');
    await log.close();

    const reopened = await open({ segmentBytesMax: 1024 });
    assert.equal(reopened.recovered.firstSeq, third);
    assert.equal(reopened.recovered.baseEpoch, Math.ceil((third - 1) / 10));
    assert.deepEqual(seqs(reopened.recovered.entries), seqs(entries(third, 100)));
    const core = startCore(reopened.recovered);
    assert.equal(core.firstSeq, third);
    assert.equal(core.lastSeq, 100);
  });

  it('a crash after the start record and before the deletions: the next open deletes what is below the start', async () => {
    const fileSystem = { ...nodeFileSystem };
    const { log } = await open({ segmentBytesMax: 1024, fileSystem });
    await writeEpochs(log);
    const names = await segmentFiles(dataDir);
    const fourth = Number((names[3] as string).slice(0, 20));
    const errors: Error[] = [];
    log.onError = (error) => errors.push(error);
    // The first unlink "crashes" the process: nothing after the start record reaches the disk.
    fileSystem.unlink = async () => { throw ioError('EIO', 'unlink'); };
    await assert.rejects(log.removeSegmentsBefore(seq(fourth)), { code: 'EIO' });
    assert.equal(errors.length, 1);
    fileSystem.unlink = nodeFileSystem.unlink;
    await log.close();
    assert.deepEqual(await segmentFiles(dataDir), names, 'every segment is still there');
    assert.deepEqual(await logStartFile(), { firstSeq: fourth, baseEpoch: Math.ceil((fourth - 1) / 10) });

    const reopened = await open({ segmentBytesMax: 1024 });
    assert.match(reopened.warnings.join('\n'), /Deleted 3 segments below the log start/);
    assert.deepEqual(await segmentFiles(dataDir), names.slice(3));
    assert.equal(reopened.recovered.firstSeq, fourth);
    assert.equal(reopened.recovered.baseEpoch, Math.ceil((fourth - 1) / 10));
    assert.deepEqual(seqs(reopened.recovered.entries), seqs(entries(fourth, 100)));
    assert.equal(reopened.recovered.corruptionFound, false);
  });

  it('a crash before the start record is in place keeps the old start and every entry', async () => {
    const fileSystem = { ...nodeFileSystem };
    const { log } = await open({ segmentBytesMax: 1024, fileSystem });
    await writeEpochs(log);
    log.onError = () => {};
    fileSystem.rename = async () => { throw ioError('EIO', 'rename'); };
    await assert.rejects(log.removeSegmentsBefore(seq(50)), { code: 'EIO' });
    fileSystem.rename = nodeFileSystem.rename;
    await log.close();
    const reopened = await open({ segmentBytesMax: 1024 });
    assert.equal(reopened.recovered.firstSeq, 1);
    assert.equal(reopened.recovered.baseEpoch, 0);
    assert.equal(reopened.recovered.entries.length, 100);
  });

  it('resetLog drops every segment, durably and in order, and appends continue at firstSeq', async () => {
    const trace: string[] = [];
    const { log } = await open({ segmentBytesMax: 1024, fileSystem: tracedFileSystem(trace) });
    const driver = await writeEpochs(log);
    const segmentCount = (await segmentFiles(dataDir)).length;
    trace.length = 0;
    // A snapshot at seq 60, inside the old log: old entries 60..100 must not survive as the new log.
    await driver.run(
      { type: 'append', entries: entries(101, 102, 10) },
      { type: 'resetLog', firstSeq: seq(61), baseEpoch: epoch(7) },
    );
    assert.equal(log.firstSeq, 61);
    assert.equal(log.lastSeq, 60);
    assert.deepEqual(await segmentFiles(dataDir), []);
    assert.deepEqual(await logStartFile(), { firstSeq: 61, baseEpoch: 7 });
    // The appends before it are synced; then the intent record, the deletions (synced), the final record.
    const intent = logStartRename(trace, 1);
    const final = logStartRename(trace, 2);
    assert.ok(trace.indexOf('fdatasync') < intent, 'the earlier append is durable before the reset starts');
    const unlinks = trace.map((call, index) => ({ call, index })).filter(({ call }) => call.startsWith('unlink') && call.endsWith('.seg'));
    assert.equal(unlinks.length, segmentCount);
    assert.ok(unlinks.every(({ index }) => index > intent + 1 && index < final), 'segments go after the intent and before the final record');
    assert.ok(trace.slice((unlinks.at(-1) as { index: number }).index, final).includes('fsync'), 'the deletions are synced before the final record');

    await driver.run({ type: 'append', entries: entries(61, 63, 8) });
    assert.deepEqual(await segmentFiles(dataDir), ['00000000000000000061.seg']);
    assert.throws(() => log.submit(driver.nextId++, { type: 'truncate', afterSeq: seq(59) }), /the log starts at 61/);
    await driver.run({ type: 'truncate', afterSeq: seq(62) });
    await log.close();

    const reopened = await open({ segmentBytesMax: 1024 });
    assert.equal(reopened.recovered.firstSeq, 61);
    assert.equal(reopened.recovered.baseEpoch, 7);
    assert.deepEqual(seqs(reopened.recovered.entries), [61, 62]);
    const core = startCore(reopened.recovered);
    assert.equal(core.firstSeq, 61);
    assert.equal(core.lastSeq, 62);
  });

  it('a crash in the middle of a reset: the next open finishes it, and old segments never pass for the new log', async () => {
    const fileSystem = { ...nodeFileSystem };
    const { log } = await open({ segmentBytesMax: 1024, fileSystem });
    const driver = await writeEpochs(log);
    const errors: Error[] = [];
    log.onError = (error) => errors.push(error);
    let unlinks = 0;
    fileSystem.unlink = async (path) => {
      if (++unlinks === 3) throw ioError('EIO', 'unlink');
      return nodeFileSystem.unlink(path);
    };
    // Old segments at and after seq 50 remain: their seqs would fit right after the new start.
    const reset = driver.submit({ type: 'resetLog', firstSeq: seq(50), baseEpoch: epoch(5) });
    await waitFor(() => errors.length > 0, 'onError');
    assert.equal(driver.durable, reset - 1, 'the reset was not reported durable');
    fileSystem.unlink = nodeFileSystem.unlink;
    await log.close();
    assert.ok((await segmentFiles(dataDir)).length > 0, 'some old segments are left');
    assert.deepEqual(await logStartFile(), { firstSeq: 50, baseEpoch: 5, resetting: true });

    const reopened = await open({ segmentBytesMax: 1024 });
    assert.match(reopened.warnings.join('\n'), /Finished resetting the log to start at seq 50/);
    assert.deepEqual(await segmentFiles(dataDir), []);
    assert.deepEqual(await logStartFile(), { firstSeq: 50, baseEpoch: 5 });
    assert.equal(reopened.recovered.firstSeq, 50);
    assert.equal(reopened.recovered.baseEpoch, 5);
    assert.deepEqual(reopened.recovered.entries, []);
    assert.equal(reopened.recovered.corruptionFound, false);
    await new Driver(reopened.log).run({ type: 'append', entries: entries(50, 52, 6) });
    await reopened.log.close();
    assert.deepEqual(seqs((await open()).recovered.entries), [50, 51, 52]);
  });

  it('refuses a damaged log-start.json, and treats a log that starts above its start record as corrupt', async () => {
    const { log } = await open();
    await new Driver(log).run({ type: 'resetLog', firstSeq: seq(10), baseEpoch: epoch(2) }, { type: 'append', entries: entries(10, 20, 3) });
    await log.close();
    await writeFile(join(dataDir, 'log-start.json.tmp'), '{"firstSeq":');
    assert.equal((await open()).recovered.firstSeq, 10, 'a leftover temporary file is ignored');
    await (opened.pop() as OpenedFileLog).log.close();

    const good = await readFile(join(dataDir, 'log-start.json'), 'utf8');
    await writeFile(join(dataDir, 'log-start.json'), '{"firstSeq":0,"baseEpoch":1}');
    await assert.rejects(openFileLog(dataDir), /Cannot parse .*log-start\.json: firstSeq is not a positive integer/);
    await writeFile(join(dataDir, 'log-start.json'), '[1]');
    await assert.rejects(openFileLog(dataDir), /Cannot parse .*log-start\.json: it is not an object/);

    // The start says 5, the only segment starts at 10: entries 5..9 are missing.
    await writeFile(join(dataDir, 'log-start.json'), good.replace('10', '5'));
    const damaged = await open();
    assert.equal(damaged.recovered.corruptionFound, true);
    assert.deepEqual(damaged.recovered.entries, []);
    assert.equal(damaged.recovered.firstSeq, 5);
    assert.deepEqual(damaged.recovered.meta, { promisedEpoch: 0, incomplete: true });
    assert.deepEqual(await segmentFiles(dataDir), []);
  });

  it('writeEmptyLogStart prepares a data directory whose empty log starts after a snapshot', async () => {
    await writeEmptyLogStart(dataDir, { firstSeq: seq(501), baseEpoch: epoch(4) }, { promisedEpoch: epoch(4), incomplete: false });
    const { log, recovered } = await open();
    assert.deepEqual(recovered, { meta: { promisedEpoch: 4, incomplete: false }, entries: [], firstSeq: 501, baseEpoch: 4, corruptionFound: false, tornTailCut: false });
    await new Driver(log).run({ type: 'append', entries: entries(501, 502, 5) });
    await log.close();
    await assert.rejects(writeEmptyLogStart(dataDir, { firstSeq: seq(1), baseEpoch: epoch(0) }, { promisedEpoch: epoch(0), incomplete: false }), /already has log segments/);
  });
});

describe('FileLog: meta', () => {
  it('replaces meta.json atomically, in order with the log operations', async () => {
    const trace: string[] = [];
    const { log } = await open({ fileSystem: tracedFileSystem(trace) });
    const driver = new Driver(log);
    trace.length = 0;
    await driver.run(
      { type: 'append', entries: entries(1, 2) },
      { type: 'meta', meta: { promisedEpoch: epoch(3), incomplete: false } },
      { type: 'append', entries: entries(3, 4, 3) },
    );
    assert.deepEqual(JSON.parse(await readFile(join(dataDir, 'meta.json'), 'utf8')), { promisedEpoch: 3, incomplete: false });
    const names = trace.map((call) => call.split(' ')[0]);
    const metaOpen = trace.findIndex((call) => call.startsWith('open') && call.endsWith('meta.json.tmp'));
    // The appends before it are synced first; then write, fsync, rename, fsync the directory.
    assert.ok(names.indexOf('write') < names.indexOf('fdatasync'), 'the first append is written, then synced');
    assert.ok(names.indexOf('fdatasync') < metaOpen, 'the append is synced before meta.json.tmp is opened');
    assert.deepEqual(names.slice(metaOpen, metaOpen + 6), ['open', 'write', 'fsync', 'close', 'rename', 'fsync']);
    assert.ok(names.indexOf('write', metaOpen + 6) > metaOpen, 'the append after the meta is written after it');
    await log.close();
    assert.deepEqual((await open()).recovered.meta, { promisedEpoch: 3, incomplete: false });
  });

  it('ignores a leftover meta.json.tmp and refuses to start from a damaged meta.json', async () => {
    const { log } = await open();
    await new Driver(log).run({ type: 'meta', meta: { promisedEpoch: epoch(5), incomplete: true } });
    await log.close();
    await writeFile(join(dataDir, 'meta.json.tmp'), '{"promisedEpoch":9,');
    const reopened = await open();
    assert.deepEqual(reopened.recovered.meta, { promisedEpoch: 5, incomplete: true });
    await reopened.log.close();

    await writeFile(join(dataDir, 'meta.json'), '{"promisedEpoch":');
    await assert.rejects(openFileLog(dataDir), /Cannot parse .*meta\.json: it is not JSON/);
    await writeFile(join(dataDir, 'meta.json'), '{"promisedEpoch":-1,"incomplete":false}');
    await assert.rejects(openFileLog(dataDir), /promisedEpoch is not a non-negative integer/);
    // A failed open leaves the directory unlocked.
    await writeFile(join(dataDir, 'meta.json'), '{"promisedEpoch":5,"incomplete":true}');
    await (await open()).log.close();
  });
});

describe('FileLog: recovery', () => {
  async function writeLog(count: number): Promise<string> {
    const { log } = await open();
    await new Driver(log).run({ type: 'meta', meta: { promisedEpoch: epoch(1), incomplete: false } }, { type: 'append', entries: entries(1, count) });
    await log.close();
    return join(dataDir, 'log', '00000000000000000001.seg');
  }

  // `end`: where the records end (the file goes on with preallocated zeros).
  const overwrite = async (segment: string, at: number, bytes: Uint8Array): Promise<void> => {
    const file = await fsOpen(segment, 'r+');
    try {
      await file.write(bytes, 0, bytes.length, at);
    } finally {
      await file.close();
    }
  };
  for (const [damage, make] of [
    ['cut in the middle of the last record', (segment: string, end: number) => truncate(segment, end - 7)],
    ['the end of the last record left as zeros', (segment: string, end: number) => overwrite(segment, end - 20, new Uint8Array(20))],
    ['garbage after the records, over the zeros', (segment: string, end: number) => overwrite(segment, end, Buffer.from('not a record, just bytes a crash left behind'))],
    ['garbage appended after the zeros', (segment: string) => appendFile(segment, Buffer.from('garbage'))],
  ] as const) {
    it(`cuts a torn tail (${damage}) and the server rejoins with the entries before it`, async () => {
      const segment = await writeLog(20);
      const written = await readFile(segment);
      const lastStart = recordEndOffset(written, seq(1), seq(19));
      const end = recordEndOffset(written, seq(1), seq(20));
      assert.ok(written.length > end, 'the segment has preallocated space after its records');
      await make(segment, end);
      const { log, recovered, warnings } = await open();
      const kept = damage.includes('last record') ? 19 : 20;
      assert.equal(recovered.tornTailCut, true);
      assert.equal(recovered.corruptionFound, false);
      assert.deepEqual(seqs(recovered.entries), seqs(entries(1, kept)));
      assert.deepEqual(recovered.meta, { promisedEpoch: 1, incomplete: false });
      assert.match(warnings.join('\n'), /Cut a torn record at the end of the log at seq/);
      assert.equal((await stat(segment)).size, kept === 19 ? lastStart : recordEndOffset(await readFile(segment), seq(1), seq(20)));
      // The server starts complete and can take the next entry from its main.
      const core = startCore(recovered);
      assert.equal(core.isIncomplete, false);
      assert.equal(core.lastSeq, kept);
      await new Driver(log).run({ type: 'append', entries: entries(kept + 1, kept + 1) });
      await log.close();
      const again = await open();
      assert.equal(again.recovered.tornTailCut, false);
      assert.equal(again.recovered.entries.length, kept + 1);
    });
  }

  it('preallocates zeros ahead of the records, keeps them across a restart, and writes over them', async () => {
    const segment = await writeLog(20);
    const preallocated = (await stat(segment)).size;
    const end20 = recordEndOffset(await readFile(segment), seq(1), seq(20));
    assert.ok(preallocated >= end20 + 1024 * 1024, `${preallocated} bytes for ${end20} of records`);
    const { log, recovered, warnings } = await open();
    assert.equal(recovered.tornTailCut, false);
    assert.deepEqual(warnings, []);
    assert.equal(recovered.entries.length, 20);
    assert.equal((await stat(segment)).size, preallocated, 'the zeros stay for the next records');
    await new Driver(log).run({ type: 'append', entries: entries(21, 25) });
    assert.equal((await stat(segment)).size, preallocated, 'the records went into the preallocated space');
    await log.close();
    const again = await open();
    assert.deepEqual(seqs(again.recovered.entries), seqs(entries(1, 25)));
    await again.log.close();
    // Without preallocation the file holds the records only.
    await rm(dataDir, { recursive: true, force: true });
    const plain = await open({ preallocateBytes: 0 });
    await new Driver(plain.log).run({ type: 'append', entries: entries(1, 20) });
    assert.equal((await stat(segment)).size, end20);
    await plain.log.close();
  });

  it('a rolled segment loses its preallocated zeros; the newest keeps them', async () => {
    const { log } = await open({ segmentBytesMax: 8 * 1024, preallocateBytes: 4 * 1024 });
    const driver = new Driver(log);
    for (let first = 1; first <= 600; first += 50) await driver.run({ type: 'append', entries: entries(first, first + 49) });
    await log.close();
    const names = (await readdir(join(dataDir, 'log'))).sort();
    assert.ok(names.length >= 2, 'the appends rolled segments');
    for (const [index, name] of names.entries()) {
      const bytes = await readFile(join(dataDir, 'log', name));
      const zeros = bytes.length - (bytes.findLastIndex((byte) => byte !== 0) + 1);
      if (index < names.length - 1) assert.ok(zeros < 16, `${name}: ${zeros} trailing zero bytes in a rolled segment`);
      else assert.ok(zeros > 1024, `${name}: the newest segment keeps its preallocated space`);
    }
    const { recovered } = await open({ segmentBytesMax: 8 * 1024, preallocateBytes: 4 * 1024 });
    assert.deepEqual(seqs(recovered.entries), seqs(entries(1, 600)));
  });

  it('a flipped bit below the tail: marks the server incomplete durably, then cuts the log there', async () => {
    const segment = await writeLog(30);
    const bytes = await readFile(segment);
    const tenth = recordEndOffset(bytes, seq(1), seq(9));
    bytes[tenth + recordHeaderBytes + 5] = (bytes[tenth + recordHeaderBytes + 5] as number) ^ 0x04;
    await writeFile(segment, bytes);

    const trace: string[] = [];
    const { log, recovered, warnings } = await open({ fileSystem: tracedFileSystem(trace) });
    assert.equal(recovered.corruptionFound, true);
    assert.equal(recovered.tornTailCut, false);
    assert.deepEqual(seqs(recovered.entries), seqs(entries(1, 9)));
    assert.deepEqual(recovered.meta, { promisedEpoch: 1, incomplete: true });
    assert.match(warnings.join('\n'), /damaged below its tail at seq 10 .*marked this server incomplete/);
    // meta.json was replaced (and its directory synced) before the segment was cut.
    const rename = trace.findIndex((call) => call.startsWith('rename'));
    assert.ok(rename >= 0, 'meta.json was replaced at open');
    assert.equal(trace[rename + 1], 'fsync');
    assert.ok(trace.indexOf('ftruncate') > rename + 1, 'the log is cut after meta.json is durable');
    assert.deepEqual(JSON.parse(await readFile(join(dataDir, 'meta.json'), 'utf8')), { promisedEpoch: 1, incomplete: true });
    assert.equal((await stat(segment)).size, tenth);
    assert.equal(startCore(recovered).isIncomplete, true);
    await log.close();

    // The scan finds nothing wrong any more, but the server is still incomplete.
    const again = await open();
    assert.equal(again.recovered.corruptionFound, false);
    assert.equal(again.recovered.tornTailCut, false);
    assert.deepEqual(again.recovered.meta, { promisedEpoch: 1, incomplete: true });
    assert.equal(again.recovered.entries.length, 9);
    assert.equal(startCore(again.recovered).isIncomplete, true);
  });

  it('a damaged record in an earlier segment deletes the later segments', async () => {
    const { log } = await open({ segmentBytesMax: 1024 });
    await new Driver(log).run({ type: 'append', entries: entries(1, 100) });
    await log.close();
    const names = await segmentFiles(dataDir);
    const second = join(dataDir, 'log', names[1] as string);
    const bytes = await readFile(second);
    bytes[30] = (bytes[30] as number) ^ 0x80;
    await writeFile(second, bytes);
    const { recovered } = await open({ segmentBytesMax: 1024 });
    assert.equal(recovered.corruptionFound, true);
    assert.equal(recovered.entries.length, Number((names[1] as string).slice(0, 20)) - 1);
    // The damaged segment had no valid record left, so it went too.
    assert.deepEqual(await segmentFiles(dataDir), names.slice(0, 1));
  });

  it('ignores files in the log directory that are not segments, with a warning', async () => {
    await mkdir(join(dataDir, 'log'), { recursive: true });
    await writeFile(join(dataDir, 'log', 'notes.txt'), 'hello');
    const { warnings } = await open();
    assert.match(warnings.join('\n'), /Ignored .*notes\.txt: not a segment file/);
  });
});

describe('FileLog: lock', () => {
  it('a second open in the same process fails and names the pid', async () => {
    const first = await open();
    await assert.rejects(openFileLog(dataDir), (error: Error) => {
      assert.match(error.message, new RegExp(`in use by this process \\(pid ${process.pid}\\)`));
      return true;
    });
    await first.log.close();
    await (await open()).log.close();
  });

  it('an open fails while another process holds the directory, and takes the lock over once it died', async () => {
    const fileLogUrl = new URL('./file-log.ts', import.meta.url).href;
    const projectRoot = fileURLToPath(new URL('../..', import.meta.url));
    const script = `const { openFileLog } = await import(${JSON.stringify(fileLogUrl)});
      await openFileLog(${JSON.stringify(dataDir)});
      process.stdout.write('locked\\n');
      setInterval(() => {}, 1000);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: projectRoot, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const [output] = await once(child.stdout, 'data') as [Buffer];
      assert.equal(output.toString().trim(), 'locked');
      const pid = child.pid as number;
      await assert.rejects(openFileLog(dataDir), (error: Error & { ownerPid?: number }) => {
        assert.match(error.message, new RegExp(`is in use by process ${pid}:`));
        assert.equal(error.ownerPid, pid);
        return true;
      });
      child.kill('SIGKILL');
      await once(child, 'exit');
      assert.equal((await readFile(join(dataDir, 'LOCK'), 'utf8')).trim(), String(pid));
      const { warnings } = await open();
      assert.match(warnings.join('\n'), new RegExp(`Took over the stale lock .*process ${pid}, which held it, is no longer running`));
      assert.equal((await readFile(join(dataDir, 'LOCK'), 'utf8')).trim(), String(process.pid));
    } finally {
      child.kill('SIGKILL');
    }
  });

  it('a LOCK without a pid is someone starting, unless it is old', async () => {
    await writeFile(join(dataDir, 'LOCK'), '');
    await assert.rejects(openFileLog(dataDir), /being locked by another process/);
    const old = new Date(Date.now() - 60_000);
    await utimes(join(dataDir, 'LOCK'), old, old);
    const { warnings, log } = await open();
    assert.match(warnings.join('\n'), /held no pid/);
    await log.close();
    await assert.rejects(readFile(join(dataDir, 'LOCK')), { code: 'ENOENT' });
  });
});

describe('FileLog: group commit and durability reports', () => {
  it('10,000 single-entry appends submitted at once are made durable with a few fsyncs', async () => {
    const { log } = await open();
    const driver = new Driver(log);
    const fsyncsBefore = log.metrics.fsyncs;
    for (let at = 1; at <= 10_000; at++) driver.submit({ type: 'append', entries: [entryAt(at)] });
    await driver.durableUpTo();
    const fsyncs = log.metrics.fsyncs - fsyncsBefore;
    assert.ok(fsyncs <= 10, `${fsyncs} fsyncs for 10,000 operations`);
    assert.equal(log.metrics.operationsDurable, 10_000);
    assert.ok(driver.reported.length <= 10, `${driver.reported.length} reports`);
  });

  it('operations submitted while an fsync is in flight share the next one', async () => {
    let releaseSync: () => void = () => {};
    let syncsStarted = 0;
    const gate: Partial<LogFileSystem> = {
      fdatasync: async (fd) => {
        syncsStarted++;
        await new Promise<void>((resolve) => { releaseSync = resolve; });
        return nodeFileSystem.fdatasync(fd);
      },
    };
    const { log } = await open({ fileSystem: { ...nodeFileSystem, ...gate } });
    const driver = new Driver(log);
    driver.submit({ type: 'append', entries: [entryAt(1)] });
    await waitFor(() => syncsStarted === 1, 'the first fdatasync');
    // The first group's fdatasync is in flight: these 1,000 wait and then go together.
    for (let at = 2; at <= 1001; at++) driver.submit({ type: 'append', entries: [entryAt(at)] });
    releaseSync();
    await waitFor(() => syncsStarted === 2, 'the second fdatasync');
    releaseSync();
    await driver.durableUpTo();
    assert.equal(syncsStarted, 2);
    assert.deepEqual(driver.reported, [1, 1001]);
  });

  it('reports in order, never an operation before its predecessors, and only after a sync', async () => {
    const trace: string[] = [];
    let seed = 7;
    const jitter = (): Promise<void> => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return new Promise((resolve) => setTimeout(resolve, seed % 3));
    };
    const slow: Partial<LogFileSystem> = {
      fdatasync: async (fd) => { await jitter(); return nodeFileSystem.fdatasync(fd); },
      write: async (...args) => { await jitter(); return nodeFileSystem.write(...args); },
    };
    const { log } = await open({ segmentBytesMax: 4096, fileSystem: tracedFileSystem(trace, slow) });
    const problems: string[] = [];
    const reported: number[] = [];
    let submitted = 0;
    log.onDurable = (operationId) => {
      if (operationId <= (reported.at(-1) ?? 0)) problems.push(`${operationId} reported after ${reported.at(-1)}`);
      if (operationId > submitted) problems.push(`${operationId} reported before it was submitted`);
      // Since the last sync, no write, cut or rename may have happened: it would not be durable.
      const lastSync = Math.max(trace.lastIndexOf('fdatasync'), trace.lastIndexOf('fsync'));
      const lastChange = Math.max(trace.lastIndexOf('write'), trace.lastIndexOf('ftruncate'));
      if (lastChange > lastSync) problems.push(`${operationId} reported after a write that was not synced`);
      reported.push(operationId);
    };
    let last = 0;
    let epochNow = 1;
    for (let round = 0; round < 60; round++) {
      const operation: DiskOperation = round % 10 === 9
        ? { type: 'truncate', afterSeq: seq(Math.max(0, last - 3)) }
        : round % 7 === 6
          ? { type: 'meta', meta: { promisedEpoch: epoch(++epochNow), incomplete: false } }
          : { type: 'append', entries: entries(last + 1, last + 1 + (round % 5), epochNow) };
      if (operation.type === 'append') last += operation.entries.length;
      if (operation.type === 'truncate') last = Math.min(last, operation.afterSeq);
      log.submit(++submitted, operation);
      if (round % 3 === 0) await jitter();
    }
    await waitFor(() => (reported.at(-1) ?? 0) === submitted, 'every operation to be reported');
    assert.deepEqual(problems, []);
    assert.ok(reported.length < submitted, 'some operations were reported together');
    await log.close();
    assert.equal((await open()).recovered.entries.length, last);
  });
});

describe('FileLog: I/O errors', () => {
  /** A log whose file system takes the overrides once it is open (the lock and recovery work). */
  async function failingLog(overrides: Partial<LogFileSystem>): Promise<{ log: FileLog; driver: Driver; errors: Error[] }> {
    const fileSystem = { ...nodeFileSystem };
    const { log } = await open({ fileSystem });
    Object.assign(fileSystem, overrides);
    const driver = new Driver(log);
    const errors: Error[] = [];
    log.onError = (error) => errors.push(error);
    return { log, driver, errors };
  }

  it('an fdatasync that fails with EIO: onError once, nothing after it reported durable, no more operations', async () => {
    let syncs = 0;
    const { log, driver, errors } = await failingLog({
      fdatasync: async (fd) => {
        if (++syncs === 2) throw ioError('EIO', 'fdatasync');
        return nodeFileSystem.fdatasync(fd);
      },
    });
    await driver.run({ type: 'append', entries: entries(1, 5) });
    assert.equal(driver.durable, 1);
    driver.submit({ type: 'append', entries: entries(6, 10) });
    driver.submit({ type: 'append', entries: entries(11, 12) });
    await waitFor(() => errors.length > 0, 'onError');
    assert.equal(errors.length, 1);
    assert.equal((errors[0] as Error & { code?: string }).code, 'EIO');
    assert.equal(log.failed, errors[0]);
    assert.deepEqual(driver.reported, [1]);
    // Refused, not retried: a failed fsync may have dropped the dirty pages it was to write.
    assert.throws(() => driver.submit({ type: 'append', entries: entries(13, 13) }), FileLogFailedError);
    await assert.rejects(log.removeSegmentsBefore(seq(1)), FileLogFailedError);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(driver.reported, [1]);
    assert.equal(errors.length, 1);
    // Closing releases the lock: the server restarts and recovers from what is on disk.
    await log.close();
    const restarted = await open();
    assert.ok(restarted.recovered.entries.length >= 5, 'the entries reported durable survive');
  });

  it('a write that fails with ENOSPC: onError, nothing reported', async () => {
    const { driver, errors } = await failingLog({
      write: async () => { throw ioError('ENOSPC', 'write'); },
    });
    driver.submit({ type: 'append', entries: entries(1, 3) });
    await waitFor(() => errors.length > 0, 'onError');
    assert.equal((errors[0] as Error & { code?: string }).code, 'ENOSPC');
    assert.deepEqual(driver.reported, []);
  });

  it('a failed fsync of meta.json.tmp: onError, the meta operation and those after it not reported', async () => {
    let fsyncFails = false;
    const { driver, errors } = await failingLog({
      fsync: async (fd) => {
        if (fsyncFails) throw ioError('EIO', 'fsync');
        return nodeFileSystem.fsync(fd);
      },
    });
    // The segment exists (and its directory entry is synced) before fsync starts failing.
    await driver.run({ type: 'append', entries: entries(1, 3) });
    fsyncFails = true;
    driver.submit({ type: 'append', entries: entries(4, 5) });
    driver.submit({ type: 'meta', meta: { promisedEpoch: epoch(2), incomplete: false } });
    driver.submit({ type: 'append', entries: entries(6, 6) });
    await waitFor(() => errors.length > 0, 'onError');
    // The append before the meta was synced (fdatasync works) and reported; the meta was not.
    assert.deepEqual(driver.reported, [1, 2]);
    assert.equal(errors.length, 1);
  });

  it('operations and removals queued behind a failed group are rejected, never run', async () => {
    let failSync: (error: Error) => void = () => {};
    const { log, driver, errors } = await failingLog({
      fdatasync: () => new Promise((_resolve, reject) => { failSync = reject; }),
    });
    driver.submit({ type: 'append', entries: entries(1, 3) });
    await waitFor(() => log.metrics.writes > 0, 'the first write');
    // The first group's fdatasync is in flight; these wait for the next group.
    driver.submit({ type: 'append', entries: entries(4, 4) });
    const removal = log.removeSegmentsBefore(seq(2));
    const writes = log.metrics.writes;
    failSync(ioError('EIO', 'fdatasync'));
    await assert.rejects(removal, { code: 'EIO' });
    assert.equal(errors.length, 1);
    assert.equal(log.metrics.writes, writes);
    assert.deepEqual(driver.reported, []);
  });
});

describe('FileLog: checksum', () => {
  it('the pure CRC-32 and zlib write the same log', async () => {
    const { log } = await open({ checksum: crc32 });
    await new Driver(log).run({ type: 'append', entries: entries(1, 10) });
    await log.close();
    const { recovered } = await open();
    assert.equal(recovered.entries.length, 10);
    assert.equal(recovered.corruptionFound, false);
  });
});
