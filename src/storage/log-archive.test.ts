// Tests of the log archive: which segments may be archived, archiving that is idempotent and
// durable before the log deletes anything (checked on a traced file system, with a failing fsync
// and with hard links unavailable), and reading an archive back: copies of different extents from
// several servers agree, and a gap, a target beyond the archive, a damaged file, copies that
// disagree and a file whose name lies are each refused with a clear message.

import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { crc32 } from 'node:zlib';
import type { LogEntry } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import type { FileLog } from './file-log.ts';
import { openFileLog } from './file-log.ts';
import type { LogFileSystem } from './file-log-system.ts';
import { nodeFileSystem } from './file-log-system.ts';
import type { ArchiveFile, ArchiveFileSystem } from './log-archive.ts';
import {
  ArchiveError, LogArchiver, archiveFileName, compactLog, listArchive, nodeArchiveFileSystem, parseArchiveFileName, planReplay,
  readArchivedEntries, segmentsToArchive,
} from './log-archive.ts';
import { encodeRecords, segmentName } from './log-format.ts';

// ---------------------------------------------------------------- helpers

/** Entry `at`: epoch 1 up to seq 60, then 2 (so epochs change inside the log). */
function entryAt(at: number, entryEpoch = at <= 60 ? 1 : 2): LogEntry {
  return { epoch: epoch(entryEpoch), seq: seq(at), write: { type: 'put', key: `key-${at % 13}`, value: new TextEncoder().encode(`value-${at}`) }, session: { clientId: 'c', requestId: at } };
}

function entries(from: number, to: number): LogEntry[] {
  return Array.from({ length: to - from + 1 }, (_, i) => entryAt(from + i));
}

let root = '';
beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'mainstay-log-archive-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** A file log in `dataDir` holding entries 1..lastSeq, in segments of about `segmentBytesMax`. */
async function writtenLog(dataDir: string, lastSeq: number, segmentBytesMax = 1024, fileSystem?: LogFileSystem): Promise<FileLog> {
  const { log } = await openFileLog(dataDir, { segmentBytesMax, ...(fileSystem === undefined ? {} : { fileSystem }) });
  let durable = 0;
  log.onDurable = (id) => {
    durable = id;
  };
  log.submit(1, { type: 'append', entries: entries(1, lastSeq) });
  const deadline = Date.now() + 10_000;
  while (durable < 1) {
    assert.ok(Date.now() < deadline, 'the append became durable');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return log;
}

async function segmentStarts(dataDir: string): Promise<number[]> {
  return (await readdir(join(dataDir, 'log'))).sort().map((name) => Number(name.slice(0, 20)));
}

/** Calls of a file system, as "name path" (the path an fd was opened with, for fd calls). */
function traced<T extends LogFileSystem>(base: T, trace: string[], label: string, overrides: Partial<ArchiveFileSystem> = {}): T {
  const paths = new Map<number, string>();
  const wrapped: Record<string, unknown> = {};
  for (const name of Object.keys(base) as (keyof T & string)[]) {
    const call = ((overrides as Record<string, unknown>)[name] ?? base[name]) as (...args: unknown[]) => Promise<unknown>;
    wrapped[name] = async (...args: unknown[]): Promise<unknown> => {
      const subject = typeof args[0] === 'number' ? paths.get(args[0]) ?? `fd ${args[0]}` : String(args[0]);
      trace.push(`${label} ${name} ${subject}${name === 'link' || name === 'rename' ? ` ${String(args[1])}` : ''}`);
      const result = await call.apply(base, args);
      if (name === 'open') paths.set(result as number, String(args[0]));
      return result;
    };
  }
  return wrapped as T;
}

function ioError(code: string, syscall: string): Error {
  return Object.assign(new Error(`${code}: ${syscall} failed`), { code, syscall });
}

async function collect(files: readonly ArchiveFile[], fromSeq: number, toSeq: number, baseEpoch = 0): Promise<LogEntry[]> {
  const result: LogEntry[] = [];
  for await (const batch of readArchivedEntries(files, seq(fromSeq), seq(toSeq), { checksum: crc32, baseEpoch: epoch(baseEpoch), batchEntriesMax: 7 })) {
    assert.ok(batch.length >= 1 && batch.length <= 7);
    result.push(...batch);
  }
  return result;
}

// ---------------------------------------------------------------- pure parts

describe('log archive: names, segments and plans', () => {
  it('names a file by its first and last seq, and reads the name back', () => {
    const name = archiveFileName({ firstSeq: seq(101), lastSeq: seq(200) });
    assert.equal(name, '00000000000000000101-00000000000000000200.seg');
    assert.deepEqual(parseArchiveFileName(name), { firstSeq: 101, lastSeq: 200 });
    for (const other of ['00000000000000000101.seg', `${name}.tmp`, '00000000000000000200-00000000000000000101.seg', '00000000000000000000-00000000000000000001.seg']) {
      assert.equal(parseArchiveFileName(other), undefined, other);
    }
    assert.throws(() => archiveFileName({ firstSeq: seq(5), lastSeq: seq(4) }), /at least one entry/);
  });

  it('archives only segments followed by one that starts at or below throughSeq', () => {
    const names = [segmentName(seq(81)), segmentName(seq(1)), 'LOCK', segmentName(seq(41)), segmentName(seq(121))];
    assert.deepEqual(segmentsToArchive(names, seq(40)), []);
    assert.deepEqual(segmentsToArchive(names, seq(41)), [{ name: segmentName(seq(1)), firstSeq: 1, lastSeq: 40 }]);
    // Seq 80 ends the second segment, but the third starts above 80: a truncation after 80 could
    // still delete the third and reopen the second, so the second is not closed for good yet.
    assert.deepEqual(segmentsToArchive(names, seq(80)).map((segment) => segment.lastSeq), [40]);
    assert.deepEqual(segmentsToArchive(names, seq(81)).map((segment) => segment.lastSeq), [40, 80]);
    // The last segment (the one appended to) never is.
    assert.deepEqual(segmentsToArchive(names, seq(1_000)).map((segment) => segment.firstSeq), [1, 41, 81]);
  });

  it('plans a replay from the names: overlapping copies cover, a gap or a far target is refused', () => {
    const file = (path: string, firstSeq: number, lastSeq: number): ArchiveFile => ({ path, firstSeq: seq(firstSeq), lastSeq: seq(lastSeq) });
    const files = [file('s1/a', 1, 40), file('s1/b', 41, 80), file('s2/a', 1, 55), file('s2/b', 56, 120), file('s1/c', 121, 150)];
    assert.deepEqual(planReplay(files, seq(50), seq(130)).map((f) => f.path), ['s2/a', 's1/b', 's2/b', 's1/c']);
    assert.deepEqual(planReplay(files, seq(150), seq(150)).map((f) => f.path), ['s1/c']);
    assert.throws(() => planReplay(files, seq(50), seq(151)), (error: unknown) =>
      error instanceof ArchiveError && error.code === 'beyond' && error.message === 'the archive reaches seq 150');
    const gapped = files.filter((f) => f.path !== 's2/b');
    assert.throws(() => planReplay(gapped, seq(50), seq(130)), (error: unknown) =>
      error instanceof ArchiveError && error.code === 'missing' && error.message === 'the archive holds seqs 1..150; seq 81 is missing (it can restore up to seq 80)');
    // Up to the gap is fine.
    assert.deepEqual(planReplay(gapped, seq(50), seq(80)).map((f) => f.path), ['s2/a', 's1/b']);
    // An archive that starts after the backup.
    assert.throws(() => planReplay(files.filter((f) => f.firstSeq > 1), seq(30), seq(60)), /the archive holds seqs 41\.\.150; seq 30 is missing$/);
    assert.throws(() => planReplay([], seq(1), seq(2)), /holds no log segments/);
  });
});

// ---------------------------------------------------------------- archiving

describe('log archive: archiving before compaction', () => {
  it('archives closed segments durably, then the log deletes exactly those; archiving again is idempotent', async () => {
    const dataDir = join(root, 'data');
    const log = await writtenLog(dataDir, 100);
    const starts = await segmentStarts(dataDir);
    assert.ok(starts.length >= 5, `${starts.length} segments`);
    const archiver = await LogArchiver.open(join(root, 'archive'), 's1');
    const throughSeq = seq((starts[2] as number) + 3);

    // An archiving pass that stops before the deletion (a crash), then one that finds it done.
    const first = await archiver.archiveSegments(join(dataDir, 'log'), throughSeq);
    assert.deepEqual(first.archived.map((segment) => [segment.firstSeq, segment.lastSeq]), [[starts[0], (starts[1] as number) - 1], [starts[1], (starts[2] as number) - 1]]);
    assert.equal(first.linking, true);
    const archivedNames = (await readdir(archiver.directory)).sort();
    for (const name of archivedNames) assert.equal((await stat(join(archiver.directory, name))).nlink, 2, `${name} is a hard link to the segment`);
    const before = await Promise.all(archivedNames.map((name) => readFile(join(archiver.directory, name))));
    const again = await archiver.archiveSegments(join(dataDir, 'log'), throughSeq);
    assert.deepEqual(again.archived, []);
    assert.deepEqual(again.present.map((segment) => segment.firstSeq), [starts[0], starts[1]]);
    assert.deepEqual((await readdir(archiver.directory)).sort(), archivedNames);
    assert.deepEqual(await Promise.all(archivedNames.map((name) => readFile(join(archiver.directory, name)))), before);

    // The compaction: archived already, so only the deletion is left, of exactly those two.
    const compacted = await compactLog(log, archiver, throughSeq);
    assert.equal(compacted.removed, 2);
    assert.deepEqual(await segmentStarts(dataDir), starts.slice(2));
    assert.equal(log.firstSeq, starts[2]);
    assert.deepEqual(await compactLog(log, archiver, throughSeq), { removed: 0, archive: { archived: [], present: [], vanished: [], linking: true } });
    // Byte for byte the segments they were, and they read back as the log's entries.
    assert.deepEqual(archivedNames, [archiveFileName({ firstSeq: seq(starts[0] as number), lastSeq: seq((starts[1] as number) - 1) }),
      archiveFileName({ firstSeq: seq(starts[1] as number), lastSeq: seq((starts[2] as number) - 1) })]);
    assert.deepEqual(await collect(await listArchive(join(root, 'archive')), 1, (starts[2] as number) - 1), entries(1, (starts[2] as number) - 1));

    // Without an archiver, a compaction deletes everything wholly below throughSeq + 1.
    assert.equal((await compactLog(log, undefined, seq((starts[4] as number) - 1))).removed, 2);
    await log.close();
  });

  it('refuses a different file under the same name, and the log then keeps its segments', async () => {
    const dataDir = join(root, 'data');
    const log = await writtenLog(dataDir, 100);
    const starts = await segmentStarts(dataDir);
    const archiver = await LogArchiver.open(join(root, 'archive'), 's1');
    const name = archiveFileName({ firstSeq: seq(1), lastSeq: seq((starts[1] as number) - 1) });
    await writeFile(join(archiver.directory, name), 'something else');
    await assert.rejects(compactLog(log, archiver, seq(starts[3] as number)), (error: unknown) =>
      error instanceof ArchiveError && error.code === 'conflict' && /already exists with different bytes/.test(error.message));
    assert.deepEqual(await segmentStarts(dataDir), starts, 'nothing was deleted');
    await log.close();
  });

  it('every archived file and the archive folder are synced before the log deletes a segment', async () => {
    const trace: string[] = [];
    const dataDir = join(root, 'data');
    const log = await writtenLog(dataDir, 100, 1024, traced(nodeFileSystem, trace, 'log'));
    const starts = await segmentStarts(dataDir);
    const archiver = await LogArchiver.open(join(root, 'archive'), 's1', traced(nodeArchiveFileSystem, trace, 'archive'));
    trace.length = 0;
    const { removed, archive } = await compactLog(log, archiver, seq(starts[3] as number));
    assert.equal(removed, 3);
    assert.equal(archive?.archived.length, 3);
    const unlinks = trace.flatMap((call, index) => (call.startsWith('log unlink') && call.endsWith('.seg') ? [index] : []));
    assert.equal(unlinks.length, 3);
    const firstUnlink = unlinks[0] as number;
    for (const segment of archive?.archived ?? []) {
      const target = join(archiver.directory, archiveFileName(segment));
      const linked = trace.indexOf(`archive link ${join(dataDir, 'log', segment.name)} ${target}`);
      const synced = trace.indexOf(`archive fsync ${target}`);
      assert.ok(linked >= 0 && synced > linked, `${segment.name} is linked, then synced`);
      assert.ok(synced < firstUnlink, `${segment.name} is durable in the archive before any deletion`);
    }
    const directorySynced = trace.lastIndexOf(`archive fsync ${archiver.directory}`);
    assert.ok(directorySynced > trace.findLastIndex((call) => call.startsWith('archive link')), 'the folder is synced after the last link');
    assert.ok(directorySynced < firstUnlink, 'and before any deletion');
    await log.close();
  });

  it('an archive fsync that fails stops the compaction before anything is deleted', async () => {
    const trace: string[] = [];
    const dataDir = join(root, 'data');
    const log = await writtenLog(dataDir, 100, 1024, traced(nodeFileSystem, trace, 'log'));
    const starts = await segmentStarts(dataDir);
    let fsyncs = 0;
    let failAt = Infinity;
    const failing = traced(nodeArchiveFileSystem, trace, 'archive', {
      fsync: async (fd) => {
        if (++fsyncs === failAt) throw ioError('EIO', 'fsync');
        return nodeFileSystem.fsync(fd);
      },
    });
    const archiver = await LogArchiver.open(join(root, 'archive'), 's1', nodeArchiveFileSystem);
    const failingArchiver = await LogArchiver.open(join(root, 'archive'), 's1', failing);
    // The second archived file's sync fails.
    fsyncs = 0;
    failAt = 2;
    trace.length = 0;
    await assert.rejects(compactLog(log, failingArchiver, seq(starts[3] as number)), { code: 'EIO' });
    assert.equal(trace.filter((call) => call.startsWith('log unlink')).length, 0, 'no segment was deleted');
    assert.deepEqual(await segmentStarts(dataDir), starts);
    // The next compaction (the disk works again) archives them all and deletes them.
    const { removed, archive } = await compactLog(log, archiver, seq(starts[3] as number));
    assert.equal(removed, 3);
    assert.equal((archive?.archived.length ?? 0) + (archive?.present.length ?? 0), 3);
    await log.close();
  });

  it('copies when hard links are not possible: written aside, synced, renamed, then the folder synced', async () => {
    const trace: string[] = [];
    const dataDir = join(root, 'data');
    const log = await writtenLog(dataDir, 100, 1024, traced(nodeFileSystem, trace, 'log'));
    const starts = await segmentStarts(dataDir);
    const noLinks = traced(nodeArchiveFileSystem, trace, 'archive', { link: async () => { throw ioError('EXDEV', 'link'); } });
    const archiver = await LogArchiver.open(join(root, 'archive'), 's1', noLinks);
    trace.length = 0;
    const { removed, archive } = await compactLog(log, archiver, seq(starts[2] as number));
    assert.equal(removed, 2);
    assert.equal(archive?.linking, false);
    assert.equal(trace.filter((call) => call.startsWith('archive link')).length, 1, 'one failed link is enough to switch to copies');
    const firstUnlink = trace.findIndex((call) => call.startsWith('log unlink'));
    for (const segment of archive?.archived ?? []) {
      const target = join(archiver.directory, archiveFileName(segment));
      const synced = trace.indexOf(`archive fsync ${target}.tmp`);
      const renamed = trace.indexOf(`archive rename ${target}.tmp ${target}`);
      assert.ok(synced >= 0 && renamed > synced && renamed < firstUnlink, `${segment.name}: copy synced, renamed, before any deletion`);
      assert.equal((await stat(target)).nlink, 1, 'a copy, not a link');
    }
    assert.ok(trace.lastIndexOf(`archive fsync ${archiver.directory}`) < firstUnlink);
    assert.deepEqual(await collect(await listArchive(join(root, 'archive')), 1, (starts[2] as number) - 1), entries(1, (starts[2] as number) - 1));
    await log.close();
  });
});

// ---------------------------------------------------------------- reading back

describe('log archive: reading it back', () => {
  /** Two servers' archives of entries 1..150, segmented differently; returns the archive root. */
  async function twoServers(): Promise<string> {
    const archiveRoot = join(root, 'archive');
    for (const [id, segmentBytesMax] of [['s1', 1024], ['s2', 2500]] as const) {
      const dataDir = join(root, id);
      const log = await writtenLog(dataDir, 150, segmentBytesMax);
      await compactLog(log, await LogArchiver.open(archiveRoot, id), seq(150));
      await log.close();
    }
    return archiveRoot;
  }

  it('reads any run of seqs from copies of different extents, which agree', async () => {
    const archiveRoot = await twoServers();
    const files = await listArchive(archiveRoot);
    assert.ok(files.some((file) => file.path.includes('/s1/')) && files.some((file) => file.path.includes('/s2/')));
    const highest = Math.max(...files.map((file) => file.lastSeq));
    assert.ok(highest >= 100, `the archive reaches seq ${highest}`);
    assert.deepEqual(await collect(planReplay(files, seq(1), seq(highest)), 1, highest), entries(1, highest));
    assert.deepEqual(await collect(planReplay(files, seq(37), seq(99)), 37, 99), entries(37, 99));
    // With either server's folder alone too.
    assert.deepEqual(await collect(planReplay(await listArchive(join(archiveRoot, 's2')), seq(10), seq(90)), 10, 90), entries(10, 90));
  });

  it('refuses copies that disagree, damaged files, names that lie, and epochs that go down', async () => {
    const archiveRoot = await twoServers();
    const files = await listArchive(archiveRoot);

    // A third "server" with a different entry at seq 50.
    await mkdir(join(archiveRoot, 'other'));
    const forged = join(archiveRoot, 'other', archiveFileName({ firstSeq: seq(50), lastSeq: seq(50) }));
    await writeFile(forged, encodeRecords([{ ...entryAt(50), write: { type: 'delete', key: 'key-11' } }], crc32));
    const withForged = await listArchive(archiveRoot);
    await assert.rejects(collect(planReplay(withForged, seq(40), seq(60)), 40, 60), (error: unknown) => {
      assert.ok(error instanceof ArchiveError && error.code === 'conflict', String(error));
      assert.match(error.message, /^the archive disagrees with itself at seq 50: .* holds an entry of epoch 1, .* a different one of epoch 1\./);
      assert.ok(error.message.includes(forged), 'the message names the odd file');
      return true;
    });
    // The same entry, forged identically, is just another copy.
    await writeFile(forged, encodeRecords([entryAt(50)], crc32));
    assert.deepEqual(await collect(planReplay(await listArchive(archiveRoot), seq(40), seq(60)), 40, 60), entries(40, 60));
    await rm(join(archiveRoot, 'other'), { recursive: true });

    // A flipped bit.
    const victim = files.find((file) => file.firstSeq <= 70 && file.lastSeq >= 70 && file.path.includes('/s1/')) as ArchiveFile;
    const good = await readFile(victim.path);
    const bad = Buffer.from(good);
    bad[bad.length - 5] = (bad[bad.length - 5] as number) ^ 0x10;
    await writeFile(victim.path, bad);
    await assert.rejects(collect(planReplay(files, seq(60), seq(victim.lastSeq)), 60, victim.lastSeq),
      new RegExp(`^ArchiveError: ${victim.path.replace(/[.]/g, '\\.')} is damaged at seq ${victim.lastSeq}: the record fails its checksum`));
    await writeFile(victim.path, good);

    // A name that claims more than the file holds.
    const liar = join(archiveRoot, 's1', archiveFileName({ firstSeq: victim.firstSeq, lastSeq: seq(victim.lastSeq + 1) }));
    await rename(victim.path, liar);
    await assert.rejects(collect(planReplay(await listArchive(archiveRoot), seq(victim.firstSeq), seq(victim.lastSeq)), victim.firstSeq, victim.lastSeq),
      /is damaged at seq \d+: the file ends at seq \d+, but its name says it holds seqs up to \d+/);
    await rename(liar, victim.path);

    // Entries of epoch 1 after a backup at epoch 2 are not its history.
    await assert.rejects(collect(planReplay(files, seq(20), seq(30)), 20, 30, 2), (error: unknown) =>
      error instanceof ArchiveError && error.code === 'epoch' && /seq 20 has epoch 1, below the epoch 2 of seq 19 \(the backup's\)/.test(error.message));
    // A file gone between the plan and the reading.
    const plan = planReplay(files, seq(1), seq(40));
    await rm(join(archiveRoot, 's1'), { recursive: true });
    await rm(join(archiveRoot, 's2'), { recursive: true });
    await assert.rejects(collect(plan, 1, 40), /Cannot read .*no such file/);
  });
});
