import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import fc from 'fast-check';
import { Random } from '../lib/random.ts';
import type { DiskOperation } from '../core/server.ts';
import type { LogEntry } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import type { DiskSubject } from './disk-conformance.ts';
import { diskConformance } from './disk-conformance.ts';
import type { FaultFileSystemOptions } from './fault-fs.ts';
import { FaultFileSystem, faultCounters, faultFileSystemFromEnv } from './fault-fs.ts';
import type { FileLog } from './file-log.ts';
import { openFileLog } from './file-log.ts';
import type { LogFileSystem } from './file-log-system.ts';
import { nodeFileSystem, openFlags } from './file-log-system.ts';

// ---------------------------------------------------------------- helpers

let directory = '';
const wrappers: FaultFileSystem[] = [];

beforeEach(async () => {
  directory = await mkdtemp(join(tmpdir(), 'mainstay-fault-fs-'));
});

afterEach(async () => {
  // Closes whatever a test left open.
  for (const wrapper of wrappers.splice(0)) await wrapper.simulatePowerLoss();
  await rm(directory, { recursive: true, force: true });
});

function faultFileSystem(options: FaultFileSystemOptions = {}): FaultFileSystem {
  const wrapper = new FaultFileSystem(nodeFileSystem, { controlCheckIntervalMs: 0, ...options });
  wrappers.push(wrapper);
  return wrapper;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function bytes(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Writes all of `text` at `position` through the file system, checking the count. */
async function writeText(fileSystem: LogFileSystem, fd: number, text: string, position: number): Promise<void> {
  const data = bytes(text);
  assert.equal(await fileSystem.write(fd, data, 0, data.length, position), data.length);
}

/** The file's whole content as the file system shows it: fstat's size, then reads. */
async function contentVia(fileSystem: LogFileSystem, fd: number): Promise<Uint8Array> {
  const { size } = await fileSystem.fstat(fd);
  const buffer = new Uint8Array(size);
  let offset = 0;
  while (offset < size) {
    const read = await fileSystem.read(fd, buffer, offset, size - offset, offset);
    assert.ok(read > 0, `the file ended after ${offset} of ${size} bytes`);
    offset += read;
  }
  return buffer;
}

async function textVia(fileSystem: LogFileSystem, fd: number): Promise<string> {
  return decoder.decode(await contentVia(fileSystem, fd));
}

/** The real file, read with node:fs directly: what survives the process. */
async function realText(path: string): Promise<string> {
  return readFile(path, 'utf8');
}

function errorCodeOf(error: unknown): string | undefined {
  return (error as { code?: string }).code;
}

// ---------------------------------------------------------------- the overlay (power-loss mode)

describe('FaultFileSystem: power-loss mode keeps writes in memory until a sync', () => {
  it('reads and fstat see the unsynced writes, through every descriptor; the real file does not', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    const fd = await faults.open(path, openFlags.createNew);
    await writeText(faults, fd, 'hello', 0);
    await writeText(faults, fd, ' world', 5);
    assert.equal(await textVia(faults, fd), 'hello world');
    assert.equal((await faults.fstat(fd)).size, 11);
    assert.equal((await faults.stat(path)).size, 11);
    // A second descriptor shares the file's unsynced writes, as the page cache is shared.
    const reader = await faults.open(path, openFlags.readOnly);
    assert.equal(await textVia(faults, reader), 'hello world');
    // The file exists (creation is metadata, at once) but holds nothing yet.
    assert.equal(await realText(path), '');
    assert.equal(faults.pendingBytes(), 11);
    await faults.fdatasync(fd);
    assert.equal(await realText(path), 'hello world');
    assert.equal(faults.pendingBytes(), 0);
    assert.equal(await textVia(faults, reader), 'hello world');
    await faults.close(reader);
    await faults.close(fd);
  });

  it('counts: a write of part of a buffer writes that part and returns its length; short reads at the end', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    const fd = await faults.open(path, openFlags.createNew);
    const source = bytes('..abc..');
    assert.equal(await faults.write(fd, source, 2, 3, 0), 3);
    // The write copied the bytes: the caller may reuse its buffer.
    source.fill(0x21);
    assert.equal(await textVia(faults, fd), 'abc');
    const buffer = new Uint8Array(10).fill(0x2e);
    assert.equal(await faults.read(fd, buffer, 4, 6, 1), 2, 'a read past the end returns what there is');
    assert.equal(decoder.decode(buffer), '....bc....');
    assert.equal(await faults.read(fd, buffer, 0, 4, 3), 0, 'a read at the end returns 0');
    assert.equal(await faults.read(fd, buffer, 0, 4, 100), 0);
    assert.equal(await faults.write(fd, source, 0, 0, 3), 0, 'an empty write writes nothing');
    assert.equal((await faults.fstat(fd)).size, 3);
    await assert.rejects(faults.write(fd, source, 5, 3, 0), RangeError);
    await faults.close(fd);
  });

  it('a write past the end leaves a hole of zeros, as on a real file', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    const fd = await faults.open(path, openFlags.createNew);
    await writeText(faults, fd, 'ab', 0);
    await writeText(faults, fd, 'xy', 6);
    assert.equal(await textVia(faults, fd), 'ab\0\0\0\0xy');
    await faults.fsync(fd);
    assert.equal(await realText(path), 'ab\0\0\0\0xy');
    await faults.close(fd);
  });

  it('ftruncate applies to the overlay: cut bytes read as zeros when the file grows again, and reach the real file at the sync', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    await writeFile(path, 'abcdefgh');
    const fd = await faults.open(path, openFlags.readWrite);
    await faults.ftruncate(fd, 3);
    assert.equal((await faults.fstat(fd)).size, 3);
    assert.equal(await textVia(faults, fd), 'abc');
    await writeText(faults, fd, 'xy', 5);
    assert.equal(await textVia(faults, fd), 'abc\0\0xy', 'the real file still has "fg" there; the overlay must not show it');
    await faults.ftruncate(fd, 9);
    assert.equal(await textVia(faults, fd), 'abc\0\0xy\0\0');
    assert.equal(await realText(path), 'abcdefgh');
    await faults.fsync(fd);
    assert.equal(await realText(path), 'abc\0\0xy\0\0');
    await faults.close(fd);
  });

  it('O_TRUNC at open is an unsynced change too', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    await writeFile(path, 'old content');
    const fd = await faults.open(path, openFlags.replace);
    assert.equal((await faults.fstat(fd)).size, 0);
    await writeText(faults, fd, 'new', 0);
    assert.equal((await faults.stat(path)).size, 3);
    assert.equal(await realText(path), 'old content');
    await faults.fsync(fd);
    assert.equal(await realText(path), 'new');
    await faults.close(fd);
  });

  it('matches a model of the file over random writes, truncates, reads and syncs; a power loss leaves the last synced state', async () => {
    const change = fc.oneof(
      fc.record({ kind: fc.constant('write' as const), position: fc.nat(40), data: fc.uint8Array({ minLength: 0, maxLength: 12 }) }),
      fc.record({ kind: fc.constant('truncate' as const), length: fc.nat(50) }),
      fc.record({ kind: fc.constant('sync' as const), data: fc.boolean() }),
    );
    let run = 0;
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 30 }), fc.array(change, { maxLength: 25 }), async (initial, changes) => {
      const faults = new FaultFileSystem(nodeFileSystem, { powerLoss: true });
      const path = join(directory, `model-${run++}`);
      await writeFile(path, initial);
      let model = Uint8Array.from(initial);
      let synced = Uint8Array.from(initial);
      const fd = await faults.open(path, openFlags.readWrite);
      for (const step of changes) {
        if (step.kind === 'write') {
          assert.equal(await faults.write(fd, step.data, 0, step.data.length, step.position), step.data.length);
          const end = Math.max(model.length, step.position + step.data.length);
          const next = new Uint8Array(end);
          next.set(model);
          next.set(step.data, step.position);
          model = next;
        } else if (step.kind === 'truncate') {
          await faults.ftruncate(fd, step.length);
          const next = new Uint8Array(step.length);
          next.set(model.subarray(0, step.length));
          model = next;
        } else {
          await (step.data ? faults.fdatasync(fd) : faults.fsync(fd));
          synced = Uint8Array.from(model);
          assert.deepEqual(new Uint8Array(await readFile(path)), model);
        }
        assert.deepEqual(await contentVia(faults, fd), model);
      }
      await faults.simulatePowerLoss();
      assert.deepEqual(new Uint8Array(await readFile(path)), synced);
    }), { numRuns: 60, seed: 42 });
  });

  it('only the synced file is made durable; a directory fsync flushes no file in it', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const first = join(directory, 'first');
    const second = join(directory, 'second');
    const firstFd = await faults.open(first, openFlags.createNew);
    const secondFd = await faults.open(second, openFlags.createNew);
    const directoryFd = await faults.open(directory, openFlags.directory);
    await writeText(faults, firstFd, 'one', 0);
    await writeText(faults, secondFd, 'two', 0);
    await faults.fsync(directoryFd);
    assert.equal(await realText(first), '');
    assert.equal(await realText(second), '');
    await faults.fdatasync(firstFd);
    assert.equal(await realText(first), 'one');
    assert.equal(await realText(second), '');
    await faults.simulatePowerLoss();
    assert.equal(await realText(first), 'one');
    assert.equal(await realText(second), '', 'the unsynced write was lost');
    assert.equal(faults.counters.bytesLostToPowerLoss, 3);
  });

  it('a power loss loses every unsynced write, and the dead file system refuses every call', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    const fd = await faults.open(path, openFlags.createNew);
    await writeText(faults, fd, 'durable', 0);
    await faults.fdatasync(fd);
    await writeText(faults, fd, '-lost', 7);
    assert.equal(await textVia(faults, fd), 'durable-lost');
    await faults.simulatePowerLoss();
    assert.equal(await realText(path), 'durable');
    await assert.rejects(faults.read(fd, new Uint8Array(4), 0, 4, 0), { code: 'EIO' });
    await assert.rejects(faults.write(fd, bytes('x'), 0, 1, 0), { code: 'EIO' });
    await assert.rejects(faults.fdatasync(fd), { code: 'EIO' });
    await assert.rejects(faults.open(path, openFlags.readOnly), { code: 'EIO' });
    await assert.rejects(faults.stat(path), { code: 'EIO' });
  });

  it('a closed file keeps its unsynced writes: a reopen sees them, a sync through a read-only descriptor makes them durable', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    const writer = await faults.open(path, openFlags.createNew);
    await writeText(faults, writer, 'kept', 0);
    await faults.close(writer);
    const reader = await faults.open(path, openFlags.readOnly);
    assert.equal(await textVia(faults, reader), 'kept');
    assert.equal(await realText(path), '');
    await faults.fsync(reader);
    assert.equal(await realText(path), 'kept');
    await faults.close(reader);
  });

  it('unsynced data follows its file through a rename: a rename without an fsync first leaves an empty file after a power loss', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const temporary = join(directory, 'meta.json.tmp');
    const target = join(directory, 'meta.json');
    await writeFile(target, 'old');
    const fd = await faults.open(temporary, openFlags.replace);
    await writeText(faults, fd, 'new', 0);
    await faults.close(fd);
    await faults.rename(temporary, target);
    const reader = await faults.open(target, openFlags.readOnly);
    assert.equal(await textVia(faults, reader), 'new');
    await faults.close(reader);
    assert.equal(await realText(target), '', 'the rename reached the disk, the data did not');
    await faults.simulatePowerLoss();
    assert.equal(await realText(target), '');
  });

  it('an unlinked file takes its unsynced writes along: a new file at its path starts empty', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    const fd = await faults.open(path, openFlags.createNew);
    await writeText(faults, fd, 'gone', 0);
    await faults.close(fd);
    await faults.unlink(path);
    const again = await faults.open(path, openFlags.createNew);
    assert.equal((await faults.fstat(again)).size, 0);
    await faults.fsync(again);
    assert.equal(await realText(path), '');
    await faults.close(again);
  });

  it('the LOCK file is written through, so a restart after a kill finds the dead pid and takes the lock over', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'LOCK');
    const fd = await faults.open(path, openFlags.createNewWriteOnly);
    await writeText(faults, fd, '12345\n', 0);
    await faults.close(fd);
    assert.equal(await realText(path), '12345\n');
  });
});

// ---------------------------------------------------------------- the control file

describe('FaultFileSystem: faults from the control file', () => {
  let control = '';
  beforeEach(() => {
    control = join(directory, 'faults');
  });

  it('fsync-eio: every sync fails with EIO as node reports it, the data is dropped, and emptying the file restores syncs', async () => {
    const faults = faultFileSystem({ powerLoss: true, controlFile: control });
    const path = join(directory, 'file');
    const fd = await faults.open(path, openFlags.createNew);
    const directoryFd = await faults.open(directory, openFlags.directory);
    await writeText(faults, fd, 'durable', 0);
    await faults.fdatasync(fd);
    await writeText(faults, fd, '+failed', 7);
    await writeFile(control, 'fsync-eio\n');
    const before = faultCounters().fsyncEio;
    await assert.rejects(faults.fdatasync(fd), (error: Error & { errno?: number; syscall?: string }) => {
      assert.equal(errorCodeOf(error), 'EIO');
      assert.equal(error.errno, -5);
      assert.equal(error.syscall, 'fdatasync');
      assert.equal(error.message, 'EIO: i/o error, fdatasync');
      return true;
    });
    await assert.rejects(faults.fsync(directoryFd), { code: 'EIO', syscall: 'fsync' });
    assert.equal(faults.counters.fsyncEio, 2);
    assert.equal(faultCounters().fsyncEio, before + 2);
    // Dropped, as Linux may drop the dirty pages of a failed fsync: not on disk, not in reads.
    assert.equal(faults.counters.bytesDroppedByFailedSync, 7);
    assert.equal(await realText(path), 'durable');
    assert.equal(await textVia(faults, fd), 'durable');
    await writeFile(control, '');
    await writeText(faults, fd, '+again', 7);
    await faults.fdatasync(fd);
    await faults.fsync(directoryFd);
    assert.equal(await realText(path), 'durable+again');
    await faults.close(directoryFd);
    await faults.close(fd);
  });

  it('fsync-eio without power-loss mode: the real sync is skipped, the call fails', async () => {
    const faults = faultFileSystem({ controlFile: control });
    const fd = await faults.open(join(directory, 'file'), openFlags.createNew);
    await writeText(faults, fd, 'x', 0);
    await writeFile(control, 'fsync-eio');
    await assert.rejects(faults.fsync(fd), { code: 'EIO', syscall: 'fsync' });
    await rm(control);
    await faults.fsync(fd);
    await faults.close(fd);
  });

  it('write-enospc: writes fail with ENOSPC and write nothing, until the word is gone', async () => {
    for (const powerLoss of [true, false]) {
      const faults = faultFileSystem({ powerLoss, controlFile: control });
      const path = join(directory, `file-${powerLoss}`);
      const fd = await faults.open(path, openFlags.createNew);
      await writeFile(control, 'write-enospc');
      await assert.rejects(faults.write(fd, bytes('abc'), 0, 3, 0), { code: 'ENOSPC', errno: -28, syscall: 'write', message: 'ENOSPC: no space left on device, write' });
      assert.equal((await faults.fstat(fd)).size, 0);
      assert.equal(faults.counters.writeEnospc, 1);
      // Syncs still work: only writes fail.
      await faults.fsync(fd);
      await writeFile(control, '');
      await writeText(faults, fd, 'abc', 0);
      await faults.fsync(fd);
      assert.equal(await realText(path), 'abc');
      await faults.close(fd);
      await rm(control);
    }
  });

  it('no control file means no faults; words may be combined; an unknown word is reported once', async () => {
    const warnings: string[] = [];
    const faults = faultFileSystem({ powerLoss: true, controlFile: control, warn: (message) => warnings.push(message) });
    const fd = await faults.open(join(directory, 'file'), openFlags.createNew);
    await writeText(faults, fd, 'a', 0);
    await faults.fsync(fd);
    await writeFile(control, 'fsync-eio, write-enospc fsync-typo');
    await assert.rejects(faults.write(fd, bytes('b'), 0, 1, 1), { code: 'ENOSPC' });
    await assert.rejects(faults.fsync(fd), { code: 'EIO' });
    await writeFile(control, 'fsync-typo');
    await faults.fsync(fd);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0] as string, /Ignored "fsync-typo"/);
    assert.equal(faults.counters.controlChanges, 2);
    await faults.close(fd);
  });

  it('reads the control file at most once per interval', async () => {
    await writeFile(control, '');
    const slow = faultFileSystem({ controlFile: control, controlCheckIntervalMs: 60_000 });
    const quick = faultFileSystem({ controlFile: control, controlCheckIntervalMs: 20 });
    const slowFd = await slow.open(join(directory, 'slow'), openFlags.createNew);
    const quickFd = await quick.open(join(directory, 'quick'), openFlags.createNew);
    await slow.fsync(slowFd);
    await quick.fsync(quickFd);
    await writeFile(control, 'fsync-eio');
    await slow.fsync(slowFd); // still the reading of a moment ago
    await new Promise((resolve) => setTimeout(resolve, 40));
    await assert.rejects(quick.fsync(quickFd), { code: 'EIO' });
    await slow.close(slowFd);
    await quick.close(quickFd);
  });
});

describe('faultFileSystemFromEnv', () => {
  it('makes no wrapper unless MAINSTAY_TEST_FAULTS is set', () => {
    assert.equal(faultFileSystemFromEnv({}), undefined);
    assert.equal(faultFileSystemFromEnv({ MAINSTAY_TEST_FAULTS: '' }), undefined);
  });

  it('reads the modes and the control file', () => {
    const powerLoss = faultFileSystemFromEnv({ MAINSTAY_TEST_FAULTS: 'power-loss' });
    assert.equal(powerLoss?.powerLoss, true);
    assert.equal(powerLoss?.controlFile, undefined);
    const controlled = faultFileSystemFromEnv({ MAINSTAY_TEST_FAULTS: 'on', MAINSTAY_TEST_FAULTS_FILE: 'faults.txt' });
    assert.equal(controlled?.powerLoss, false);
    assert.equal(controlled?.controlFile, join(process.cwd(), 'faults.txt'));
    assert.equal(faultFileSystemFromEnv({ MAINSTAY_TEST_FAULTS: 'on, power-loss', MAINSTAY_TEST_FAULTS_FILE: '/tmp/f' })?.powerLoss, true);
  });

  it('refuses what would silently inject nothing: an unknown mode, a control file without the switch', () => {
    assert.throws(() => faultFileSystemFromEnv({ MAINSTAY_TEST_FAULTS: 'powerloss' }), /Unknown fault mode "powerloss"/);
    assert.throws(() => faultFileSystemFromEnv({ MAINSTAY_TEST_FAULTS_FILE: '/tmp/f' }), /MAINSTAY_TEST_FAULTS is not/);
  });
});

// ---------------------------------------------------------------- the file log on the wrapper

function entryAt(at: number, valueBytes = 20): LogEntry {
  const value = new Uint8Array(valueBytes);
  for (let i = 0; i < valueBytes; i++) value[i] = (at + i) & 0xff;
  return { epoch: epoch(1), seq: seq(at), write: { type: 'put', key: `key-${at}`, value }, session: { clientId: 'client', requestId: at } };
}

function entries(from: number, to: number): LogEntry[] {
  const result: LogEntry[] = [];
  for (let at = from; at <= to; at++) result.push(entryAt(at));
  return result;
}

function seqsOf(list: readonly LogEntry[]): number[] {
  return list.map((entry) => entry.seq);
}

/** An entry as comparable text (the recovery scan decodes values as Buffers). */
function describeEntry(entry: LogEntry): string {
  return JSON.stringify({ ...entry, write: { ...entry.write, value: 'value' in entry.write ? Buffer.from(entry.write.value as Uint8Array).toString('hex') : undefined } });
}

function range(from: number, to: number): number[] {
  const result: number[] = [];
  for (let at = from; at <= to; at++) result.push(at);
  return result;
}

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Waited 10 s for ${what}`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Drives a FileLog as the runtime does, and remembers the last seq of every append. */
class Driver {
  nextId = 1;
  durable = 0;
  readonly reported: number[] = [];
  readonly errors: Error[] = [];
  /** The log's last seq once operation `id` has run. */
  private readonly lastSeqAfter = new Map<number, number>();
  private lastSeq: number;

  constructor(readonly log: FileLog, lastSeq = 0) {
    this.lastSeq = lastSeq;
    this.lastSeqAfter.set(0, lastSeq);
    log.onDurable = (operationId) => {
      this.reported.push(operationId);
      this.durable = operationId;
    };
    log.onError = (error) => this.errors.push(error);
  }

  append(count: number): number {
    const id = this.nextId++;
    const operation: DiskOperation = { type: 'append', entries: entries(this.lastSeq + 1, this.lastSeq + count) };
    this.lastSeq += count;
    this.lastSeqAfter.set(id, this.lastSeq);
    this.log.submit(id, operation);
    return id;
  }

  async appendDurably(count: number): Promise<void> {
    const id = this.append(count);
    await waitFor(() => this.durable >= id || this.errors.length > 0, `operation ${id} to be durable`);
    assert.deepEqual(this.errors, []);
  }

  /** The last seq reported durable. */
  get durableSeq(): number {
    return this.lastSeqAfter.get(this.durable) as number;
  }

  get submittedSeq(): number {
    return this.lastSeq;
  }
}

/** What a restarted process finds: the LOCK of the dead one (our own pid here) is removed, the log reopened on node:fs. */
async function restartOnNodeFileSystem(log: FileLog): Promise<LogEntry[]> {
  await log.close().catch(() => {});
  await rm(join(directory, 'LOCK'), { force: true });
  const reopened = await openFileLog(directory);
  await reopened.log.close();
  return reopened.recovered.entries;
}

describe('FileLog on the fault file system', () => {
  /**
   * Appends durably, then holds the next group's fdatasync (its records are written) and cuts the
   * power. Returns the entries a restart finds and the last seq reported durable.
   */
  async function powerLossWithAGroupWritten(faults: FaultFileSystem): Promise<{ recovered: number[]; durableSeq: number; submittedSeq: number }> {
    let holding = false;
    const held: (() => void)[] = [];
    const fileSystem: LogFileSystem = {
      ...faults,
      fdatasync: async (fd) => {
        if (holding) await new Promise<void>((resolve) => held.push(resolve));
        return faults.fdatasync(fd);
      },
    };
    const { log } = await openFileLog(directory, { fileSystem, segmentBytesMax: 1024 });
    const driver = new Driver(log);
    for (let round = 0; round < 12; round++) await driver.appendDurably(1 + (round % 7));
    assert.ok(log.segmentCount >= 2, 'the appends rolled segments');
    holding = true;
    driver.append(6);
    driver.append(3);
    await waitFor(() => held.length > 0, 'the held fdatasync');
    await faults.simulatePowerLoss();
    for (const release of held) release();
    await waitFor(() => driver.errors.length > 0, 'onError');
    assert.equal(errorCodeOf(driver.errors[0]), 'EIO');
    const recovered = seqsOf(await restartOnNodeFileSystem(log));
    return { recovered, durableSeq: driver.durableSeq, submittedSeq: driver.submittedSeq };
  }

  it('power loss: a restart finds exactly the entries reported durable', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const { recovered, durableSeq, submittedSeq } = await powerLossWithAGroupWritten(faults);
    assert.ok(submittedSeq > durableSeq);
    assert.ok(faults.counters.bytesLostToPowerLoss > 0, 'the held group was written, then lost');
    assert.deepEqual(recovered, range(1, durableSeq));
  });

  it('(the check above can fail) without power-loss mode the written group survives the same "power loss"', async () => {
    const faults = faultFileSystem({ powerLoss: false });
    const { recovered, durableSeq } = await powerLossWithAGroupWritten(faults);
    assert.ok(recovered.length > durableSeq, `${recovered.length} entries recovered, ${durableSeq} durable`);
  });

  it('power loss at random moments: a restart finds a prefix of what was submitted, holding every entry reported durable', async () => {
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const random = new Random(seed);
      await rm(directory, { recursive: true, force: true });
      const faults = faultFileSystem({ powerLoss: true });
      const { log } = await openFileLog(directory, { fileSystem: faults, segmentBytesMax: 2048 });
      const driver = new Driver(log);
      const turns = random.int(1, 60);
      for (let turn = 0; turn < turns; turn++) {
        for (let count = random.int(0, 3); count > 0; count--) driver.append(random.int(1, 12));
        await new Promise((resolve) => (random.chance(0.5) ? setImmediate(resolve) : setTimeout(resolve, random.int(0, 2))));
      }
      await faults.simulatePowerLoss();
      const durableSeq = driver.durableSeq;
      const recovered = await restartOnNodeFileSystem(log);
      const recoveredSeqs = seqsOf(recovered);
      assert.deepEqual(recoveredSeqs, range(1, recovered.length), `seed ${seed}: a prefix`);
      assert.ok(recovered.length >= durableSeq, `seed ${seed}: ${recovered.length} entries recovered, ${durableSeq} reported durable`);
      assert.ok(recovered.length <= driver.submittedSeq, `seed ${seed}: nothing that was not submitted`);
      assert.deepEqual(recovered.map(describeEntry), entries(1, recovered.length).map(describeEntry), `seed ${seed}: the entries as written`);
    }
  });

  it('fsync-eio from the control file: onError, the failed group is never reported durable nor found after a restart', async () => {
    const control = join(directory, 'faults');
    const dataDir = join(directory, 'data');
    const faults = faultFileSystem({ powerLoss: true, controlFile: control });
    const { log } = await openFileLog(dataDir, { fileSystem: faults });
    const driver = new Driver(log);
    await driver.appendDurably(5);
    await driver.appendDurably(5);
    const reported = [...driver.reported];
    await writeFile(control, 'fsync-eio');
    driver.append(4);
    driver.append(2);
    await waitFor(() => driver.errors.length > 0, 'onError');
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(driver.errors.length, 1);
    assert.equal(errorCodeOf(driver.errors[0]), 'EIO');
    assert.equal((driver.errors[0] as Error & { syscall?: string }).syscall, 'fdatasync');
    assert.deepEqual(driver.reported, reported);
    assert.equal(log.failed, driver.errors[0]);
    assert.ok(faults.counters.bytesDroppedByFailedSync > 0);
    // The server would stop here; it closes the log (releasing the lock needs no sync) and restarts.
    await log.close();
    await writeFile(control, '');
    const { log: reopened, recovered } = await openFileLog(dataDir, { fileSystem: faults });
    assert.deepEqual(seqsOf(recovered.entries), range(1, 10));
    // With the word gone the wrapper syncs again: the restarted server goes on.
    const again = new Driver(reopened, 10);
    await again.appendDurably(2);
    await reopened.close();
    const plain = await openFileLog(dataDir);
    await plain.log.close();
    assert.deepEqual(seqsOf(plain.recovered.entries), range(1, 12));
  });

  it('write-enospc from the control file: onError with ENOSPC, nothing reported', async () => {
    const control = join(directory, 'faults');
    const faults = faultFileSystem({ powerLoss: true, controlFile: control });
    const { log } = await openFileLog(join(directory, 'data'), { fileSystem: faults });
    const driver = new Driver(log);
    await driver.appendDurably(3);
    await writeFile(control, 'write-enospc');
    driver.append(3);
    await waitFor(() => driver.errors.length > 0, 'onError');
    assert.equal(errorCodeOf(driver.errors[0]), 'ENOSPC');
    assert.deepEqual(driver.reported, [1]);
    await log.close();
  });
});

// The whole conformance suite of the disk, with each reopen on a fresh wrapper (a new process):
// the wrapper changes nothing a clean shutdown can see.
diskConformance('FileLog on FaultFileSystem in power-loss mode', async (): Promise<DiskSubject> => {
  const dataDir = await mkdtemp(join(tmpdir(), 'mainstay-fault-fs-conformance-'));
  return {
    open: async () => {
      const { log, recovered } = await openFileLog(dataDir, { segmentBytesMax: 4096, fileSystem: new FaultFileSystem(nodeFileSystem, { powerLoss: true }) });
      return { disk: log, recovered };
    },
    destroy: () => rm(dataDir, { recursive: true, force: true }),
  };
}, { seeds: [31, 32, 33], resetLog: true });

describe('FaultFileSystem: the real descriptors', () => {
  it('a power loss closes them', async () => {
    const faults = faultFileSystem({ powerLoss: true });
    const path = join(directory, 'file');
    const fd = await faults.open(path, openFlags.createNew);
    await faults.simulatePowerLoss();
    await assert.rejects(nodeFileSystem.fstat(fd), { code: 'EBADF' });
    assert.equal((await stat(path)).size, 0);
  });
});
