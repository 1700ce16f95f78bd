// The log archive: the log segments a compaction deletes, kept in a folder outside the data
// directory (`--log-archive-dir DIR`, one subfolder per server), so that a backup can be rolled
// forward to any later seq (point-in-time restore: `mainstay restore --to-seq N`). It owns which
// segments may be archived, how they are made durable before the log deletes them, and how a
// restore reads the archive back as one checked run of entries.
//
// The first half is pure (names, which segments, the restore plan, record checks, agreement
// between copies); the second half is the file-system shell.
//
// What is archived. Only segments a compaction removes, and only those followed by a segment that
// starts at or below the compaction's throughSeq: that next segment holds a committed entry, which
// no truncation ever cuts, so the segment before it is closed for good (a truncation at throughSeq
// could otherwise delete the next segment and reopen this one for appends). Every entry archived is
// therefore applied, hence committed, and complete segments only are archived: the one appended to
// never is. The log is then asked to remove exactly the segments archived (`compactLog`).
//
// Archive layout: DIR/<server id>/<first seq>-<last seq>.seg, 20 digits each, holding the segment's
// records byte for byte (log-format.ts). Naming a file by its whole range lets a restore see what
// the archive covers without reading it, and keeps two copies of different extents apart. A file
// is a hard link to the segment when DIR is on the same file system, else a copy written as
// NAME.tmp, fsynced and renamed; either way the file and its directory are fsynced before the log
// may delete the segment. Archiving a segment again finds the same bytes and only syncs them
// (idempotent); different bytes under the same name are refused.
//
// Reading it back. Every server archives the same committed entries, so the archive holds several
// copies of most seqs, split differently. A restore plans from the names (`planReplay`: which files,
// and a clear error for a gap or a target beyond the archive), then walks the seqs in order with
// every copy of each seq at hand: each file is checked whole (checksums, consecutive seqs, its name
// telling the truth) when it is first needed, and the copies of one seq must hold the same entry.

import { join } from 'node:path';
import { link as linkFile } from 'node:fs';
import { assert } from '../lib/assert.ts';
import { CodecError, decodeEntry, encodeEntry } from '../protocol/codec.ts';
import type { Epoch, LogEntry, Seq } from '../protocol/types.ts';
import { seq } from '../protocol/types.ts';
import type { LogFileSystem } from './file-log-system.ts';
import { errorCode, nodeFileSystem, openFlags, readWholeFile, writeAll } from './file-log-system.ts';
import { logDirectoryName } from './file-log.ts';
import type { Checksum } from './log-format.ts';
import { parseSegmentName, recordHeaderBytes, recordPayloadBytesMax, recordPayloadBytesMin } from './log-format.ts';

// ---------------------------------------------------------------- names (pure)

/** A run of consecutive seqs, both ends included. */
export interface SeqRange {
  firstSeq: Seq;
  lastSeq: Seq;
}

const seqDigits = 20;
const archiveNamePattern = /^(\d{20})-(\d{20})\.seg$/;

/** `00000000000000000101-00000000000000000200.seg` for a segment holding seqs 101 to 200. */
export function archiveFileName(range: SeqRange): string {
  assert(Number.isSafeInteger(range.firstSeq) && range.firstSeq >= 1, `an archived segment starts at a seq, not ${range.firstSeq}`);
  assert(Number.isSafeInteger(range.lastSeq) && range.lastSeq >= range.firstSeq, `an archived segment holds at least one entry (${range.firstSeq}..${range.lastSeq})`);
  return `${String(range.firstSeq).padStart(seqDigits, '0')}-${String(range.lastSeq).padStart(seqDigits, '0')}.seg`;
}

/** The range an archive file name stands for, or undefined if it is not an archived segment's name. */
export function parseArchiveFileName(name: string): SeqRange | undefined {
  const match = archiveNamePattern.exec(name);
  if (match === null) return undefined;
  const firstSeq = Number(match[1]);
  const lastSeq = Number(match[2]);
  if (!Number.isSafeInteger(lastSeq) || firstSeq < 1 || lastSeq < firstSeq) return undefined;
  return { firstSeq: seq(firstSeq), lastSeq: seq(lastSeq) };
}

/** A closed segment of the log directory, and the seqs it holds. */
export interface ArchivableSegment extends SeqRange {
  /** Its file name in the log directory. */
  name: string;
}

/**
 * The segments of a log directory (its file names, in any order) that a compaction through
 * `throughSeq` may archive and delete: those followed by a segment that starts at or below
 * throughSeq (see the module comment). A segment ends just before the next one starts.
 */
export function segmentsToArchive(names: readonly string[], throughSeq: Seq): ArchivableSegment[] {
  const segments: { name: string; firstSeq: Seq }[] = [];
  for (const name of names) {
    const firstSeq = parseSegmentName(name);
    if (firstSeq !== undefined) segments.push({ name, firstSeq });
  }
  segments.sort((a, b) => a.firstSeq - b.firstSeq);
  const result: ArchivableSegment[] = [];
  for (let i = 0; i + 1 < segments.length; i++) {
    const segment = segments[i] as { name: string; firstSeq: Seq };
    const next = (segments[i + 1] as { firstSeq: Seq }).firstSeq;
    if (next > throughSeq) break;
    result.push({ name: segment.name, firstSeq: segment.firstSeq, lastSeq: seq(next - 1) });
  }
  return result;
}

// ---------------------------------------------------------------- planning a restore (pure)

/** An archived segment as a restore finds it. */
export interface ArchiveFile extends SeqRange {
  /** Where it is; named in every message about it. */
  path: string;
}

export type ArchiveErrorCode = 'empty' | 'missing' | 'beyond' | 'damaged' | 'conflict' | 'epoch';

/** The archive cannot give the entries asked for; the message says why, for the operator. */
export class ArchiveError extends Error {
  override name = 'ArchiveError';

  constructor(readonly code: ArchiveErrorCode, message: string) {
    super(message);
  }
}

function byRange(a: SeqRange, b: SeqRange): number {
  return a.firstSeq - b.firstSeq || a.lastSeq - b.lastSeq;
}

/**
 * The files needed to read seqs fromSeq..toSeq (fromSeq ≤ toSeq), in order, or an ArchiveError:
 * a seq in that run that no file holds ("the archive holds seqs A..B; seq X is missing"), or a
 * target beyond every file ("the archive reaches seq B"). Decided from the names alone.
 */
export function planReplay(files: readonly ArchiveFile[], fromSeq: Seq, toSeq: Seq): ArchiveFile[] {
  assert(fromSeq >= 1 && toSeq >= fromSeq, `a replay reads at least one seq (${fromSeq}..${toSeq})`);
  if (files.length === 0) throw new ArchiveError('empty', 'the archive holds no log segments');
  const sorted = [...files].sort(byRange);
  const lowest = (sorted[0] as ArchiveFile).firstSeq;
  const highest = sorted.reduce((high, file) => Math.max(high, file.lastSeq), 0);
  let reach = fromSeq - 1;
  for (const file of sorted) {
    if (file.lastSeq <= reach) continue;
    if (file.firstSeq > reach + 1 || reach >= toSeq) break;
    reach = file.lastSeq;
  }
  if (reach < toSeq) {
    // A seq after the gap is archived: the gap is the problem, not the target.
    if (reach + 1 <= highest) {
      throw new ArchiveError('missing', `the archive holds seqs ${lowest}..${highest}; seq ${reach + 1} is missing`
        + (reach >= fromSeq ? ` (it can restore up to seq ${reach})` : ''));
    }
    throw new ArchiveError('beyond', `the archive reaches seq ${highest}`);
  }
  return sorted.filter((file) => file.lastSeq >= fromSeq && file.firstSeq <= toSeq);
}

// ---------------------------------------------------------------- checking records (pure)

/** An archived segment read and checked whole: where each of its records starts. */
export interface CheckedSegment {
  file: ArchiveFile;
  bytes: Uint8Array;
  /** offsets[i] is where the record of seq file.firstSeq + i starts; the last element is the end. */
  offsets: number[];
}

function readU53(view: DataView, offset: number): number {
  return view.getUint32(offset + 4, true) * 0x100000000 + view.getUint32(offset, true);
}

/**
 * Checks a whole archived segment: every record complete and passing its checksum, seqs
 * consecutive from the name's first seq to its last, epochs never going down. Throws an
 * ArchiveError('damaged') naming the file and the seq otherwise.
 */
export function checkArchivedSegment(file: ArchiveFile, fileBytes: Uint8Array, checksum: Checksum): CheckedSegment {
  // A plain Uint8Array (not a Buffer), so decoded values are copies and do not pin the file's bytes.
  const bytes = new Uint8Array(fileBytes.buffer, fileBytes.byteOffset, fileBytes.byteLength);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const offsets: number[] = [];
  const damaged = (at: number, reason: string): ArchiveError =>
    new ArchiveError('damaged', `${file.path} is damaged at seq ${at}: ${reason}. Remove it (other servers' copies may cover its seqs) and try again.`);
  let offset = 0;
  let expected: number = file.firstSeq;
  let previousEpoch = 0;
  while (offset < bytes.length) {
    if (bytes.length - offset < recordHeaderBytes) throw damaged(expected, 'the record header is incomplete');
    const payloadLength = view.getUint32(offset, true);
    if (payloadLength < recordPayloadBytesMin || payloadLength > recordPayloadBytesMax) throw damaged(expected, `the record length ${payloadLength} is out of range`);
    const end = offset + recordHeaderBytes + payloadLength;
    if (end > bytes.length) throw damaged(expected, 'the record is incomplete');
    if (checksum(bytes.subarray(offset + 8, end)) !== view.getUint32(offset + 4, true)) throw damaged(expected, 'the record fails its checksum');
    const recordSeq = readU53(view, offset + 12);
    if (recordSeq !== expected) throw damaged(expected, `the record has seq ${recordSeq}`);
    const recordEpoch = view.getUint32(offset + 8, true);
    if (recordEpoch < previousEpoch) throw damaged(expected, `its epoch ${recordEpoch} is below the previous record's ${previousEpoch}`);
    if (expected > file.lastSeq) throw damaged(expected, `the file goes on past seq ${file.lastSeq}, where its name says it ends`);
    previousEpoch = recordEpoch;
    offsets.push(offset);
    offset = end;
    expected++;
  }
  if (expected - 1 !== file.lastSeq) throw damaged(expected, `the file ends at seq ${expected - 1}, but its name says it holds seqs up to ${file.lastSeq}`);
  offsets.push(offset);
  return { file, bytes, offsets };
}

/** The checked bytes of the record of `at` (epoch, seq and payload: what its checksum covers). */
function recordBody(segment: CheckedSegment, at: Seq): Uint8Array {
  const index = at - segment.file.firstSeq;
  assert(index >= 0 && index + 1 < segment.offsets.length, `${segment.file.path} does not hold seq ${at}`);
  return segment.bytes.subarray((segment.offsets[index] as number) + 8, segment.offsets[index + 1] as number);
}

function decodeRecord(segment: CheckedSegment, at: Seq): LogEntry {
  const body = recordBody(segment, at);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  let entry: LogEntry;
  try {
    entry = decodeEntry(body.subarray(recordHeaderBytes - 8));
  } catch (error) {
    if (!(error instanceof CodecError)) throw error;
    throw new ArchiveError('damaged', `${segment.file.path} is damaged at seq ${at}: the entry does not decode (${error.message})`);
  }
  if (entry.seq !== at || entry.epoch !== view.getUint32(0, true)) {
    throw new ArchiveError('damaged', `${segment.file.path} is damaged at seq ${at}: the entry disagrees with its record header`);
  }
  return entry;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/**
 * The entry at `at`, from every checked segment holding it (at least one), which must agree:
 * copies that differ are an ArchiveError('conflict') naming both files.
 */
export function agreedEntry(copies: readonly CheckedSegment[], at: Seq): LogEntry {
  const first = copies[0];
  assert(first !== undefined, `no archived segment holds seq ${at}`);
  const body = recordBody(first, at);
  const entry = decodeRecord(first, at);
  let canonical: Uint8Array | undefined;
  for (const other of copies.slice(1)) {
    if (sameBytes(body, recordBody(other, at))) continue;
    // Bytes may differ for one entry only if an encoding were not canonical: compare re-encoded.
    const otherEntry = decodeRecord(other, at);
    canonical ??= encodeEntry(entry);
    if (sameBytes(canonical, encodeEntry(otherEntry))) continue;
    throw new ArchiveError('conflict', `the archive disagrees with itself at seq ${at}: ${first.file.path} holds an entry of epoch ${entry.epoch}, `
      + `${other.file.path} a different one of epoch ${otherEntry.epoch}. Archives of different clusters mixed in one folder, or a K = 0 failover `
      + 'that lost entries, can do that; remove the files that do not belong and try again.');
  }
  return entry;
}

// ---------------------------------------------------------------- archiving (the shell)

/** The file-system calls of the archive: the log's, and hard links. */
export interface ArchiveFileSystem extends LogFileSystem {
  /** Creates `newPath` as another name of `existingPath` (fails with EEXIST if it exists). */
  link(existingPath: string, newPath: string): Promise<void>;
}

export const nodeArchiveFileSystem: ArchiveFileSystem = {
  ...nodeFileSystem,
  link: (existingPath, newPath) => new Promise((resolve, reject) => linkFile(existingPath, newPath, (error) => (error === null ? resolve() : reject(error)))),
};

/** Errors of link() that mean "no hard links here", not "something is wrong": copy instead. */
const linkUnsupported = new Set(['EXDEV', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EMLINK', 'ENOSYS']);

/** Bytes copied or compared at a time. */
const copyChunkBytes = 1024 * 1024;

/** What one archiving pass did. */
export interface ArchiveOutcome {
  /** Segments newly archived (linked or copied) and durable. */
  archived: ArchivableSegment[];
  /** Segments found already archived with the same bytes (an earlier pass stopped before the deletion), synced again. */
  present: ArchivableSegment[];
  /** Segments the log deleted meanwhile (a reset to a snapshot): nothing to archive, nothing to remove. */
  vanished: ArchivableSegment[];
  /** Whether hard links are used (false once one failed for want of support: the archive is elsewhere). */
  linking: boolean;
}

/** Names that are safe as one folder name: a server id as the manager accepts it. */
const folderNamePattern = /^[A-Za-z0-9_.-]{1,64}$/;

/** Archives the segments of one server's log into <root>/<server id>/. One pass at a time. */
export class LogArchiver {
  /** False once a link failed with EXDEV and the like: copy from then on. */
  private linking = true;

  private constructor(readonly directory: string, private readonly fs: ArchiveFileSystem) {}

  /**
   * Creates <root>/<serverId>/ if needed and makes it durable. Throws if it cannot, so a server
   * configured to archive does not start without its archive.
   */
  static async open(root: string, serverId: string, fileSystem: ArchiveFileSystem = nodeArchiveFileSystem): Promise<LogArchiver> {
    if (!folderNamePattern.test(serverId) || serverId === '.' || serverId === '..') {
      throw new Error(`Cannot archive the log of server "${serverId}": its id is not usable as a folder name (letters, digits, _ . - only)`);
    }
    const directory = join(root, serverId);
    await fileSystem.mkdir(directory);
    // The folders may have just been created: their entries must survive a crash too.
    for (const folder of [join(root, '..'), root, directory]) await syncDirectory(fileSystem, folder);
    return new LogArchiver(directory, fileSystem);
  }

  /**
   * Archives, durably, every segment of `logDir` that a compaction through `throughSeq` may delete
   * (segmentsToArchive). Resolves once each archived file and the archive folder are synced; rejects
   * (archiving nothing more) on an I/O error or a different file under the same name.
   */
  async archiveSegments(logDir: string, throughSeq: Seq): Promise<ArchiveOutcome> {
    const outcome: ArchiveOutcome = { archived: [], present: [], vanished: [], linking: this.linking };
    for (const segment of segmentsToArchive(await this.fs.readdir(logDir), throughSeq)) {
      const result = await this.archiveOne(join(logDir, segment.name), segment);
      outcome[result].push(segment);
    }
    if (outcome.archived.length + outcome.present.length > 0) await syncDirectory(this.fs, this.directory);
    outcome.linking = this.linking;
    return outcome;
  }

  private async archiveOne(source: string, segment: ArchivableSegment): Promise<'archived' | 'present' | 'vanished'> {
    const target = join(this.directory, archiveFileName(segment));
    if (await exists(this.fs, target)) {
      const same = await sameContents(this.fs, source, target);
      if (same === 'vanished') return 'vanished';
      if (!same) {
        throw new ArchiveError('conflict', `Cannot archive ${source}: ${target} already exists with different bytes `
          + '(is another server archiving under the same id?); the log keeps the segment');
      }
      await syncFile(this.fs, target);
      return 'present';
    }
    if (this.linking) {
      try {
        await this.fs.link(source, target);
        // The segment's data was synced when the log closed it; this makes sure, and costs nothing then.
        await syncFile(this.fs, target);
        return 'archived';
      } catch (error) {
        const code = errorCode(error);
        if (code === 'ENOENT') return 'vanished';
        if (code === undefined || !linkUnsupported.has(code)) throw error;
        this.linking = false;
      }
    }
    return this.copy(source, target);
  }

  /** A copy written beside the target, synced, then renamed into place (so it exists only whole). */
  private async copy(source: string, target: string): Promise<'archived' | 'vanished'> {
    const temporary = `${target}.tmp`;
    let sourceFd: number;
    try {
      sourceFd = await this.fs.open(source, openFlags.readOnly);
    } catch (error) {
      if (errorCode(error) === 'ENOENT') return 'vanished';
      throw error;
    }
    try {
      const { size } = await this.fs.fstat(sourceFd);
      const targetFd = await this.fs.open(temporary, openFlags.replace, 0o644);
      try {
        const buffer = new Uint8Array(Math.min(copyChunkBytes, Math.max(size, 1)));
        for (let position = 0; position < size;) {
          const read = await this.fs.read(sourceFd, buffer, 0, Math.min(buffer.length, size - position), position);
          if (read === 0) throw new Error(`${source} ended after ${position} of ${size} bytes while it was being archived`);
          await writeAll(this.fs, targetFd, buffer, 0, read, position);
          position += read;
        }
        await this.fs.fsync(targetFd);
      } finally {
        await this.fs.close(targetFd);
      }
    } finally {
      await this.fs.close(sourceFd);
    }
    await this.fs.rename(temporary, target);
    return 'archived';
  }
}

/** The part of the file log a compaction needs (FileLog has it). */
export interface CompactableLog {
  readonly dataDir: string;
  removeSegmentsBefore(beforeSeq: Seq): Promise<number>;
}

/**
 * A compaction through `throughSeq`. Without an archiver, the log deletes every segment wholly
 * below throughSeq + 1. With one, the segments are archived first, durably, and the log then
 * deletes exactly those (none if none were archived), so no segment is deleted unarchived.
 */
export async function compactLog(log: CompactableLog, archiver: LogArchiver | undefined, throughSeq: Seq): Promise<{ removed: number; archive?: ArchiveOutcome }> {
  if (archiver === undefined) return { removed: await log.removeSegmentsBefore(seq(throughSeq + 1)) };
  const archive = await archiver.archiveSegments(join(log.dataDir, logDirectoryName), throughSeq);
  const kept = [...archive.archived, ...archive.present];
  if (kept.length === 0) return { removed: 0, archive };
  // The log removes the segments whose successor starts at or below this: the ones just archived.
  const beforeSeq = seq(kept.reduce((high, segment) => Math.max(high, segment.lastSeq), 0) + 1);
  assert(beforeSeq <= throughSeq, 'only segments followed by a committed entry are archived');
  return { removed: await log.removeSegmentsBefore(beforeSeq), archive };
}

async function syncDirectory(fileSystem: LogFileSystem, directory: string): Promise<void> {
  const fd = await fileSystem.open(directory, openFlags.directory);
  try {
    await fileSystem.fsync(fd);
  } finally {
    await fileSystem.close(fd);
  }
}

async function syncFile(fileSystem: LogFileSystem, path: string): Promise<void> {
  const fd = await fileSystem.open(path, openFlags.readOnly);
  try {
    await fileSystem.fsync(fd);
  } finally {
    await fileSystem.close(fd);
  }
}

async function exists(fileSystem: LogFileSystem, path: string): Promise<boolean> {
  try {
    await fileSystem.stat(path);
    return true;
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return false;
    throw error;
  }
}

/** Whether two files hold the same bytes; 'vanished' if the first no longer exists. */
async function sameContents(fileSystem: LogFileSystem, path: string, otherPath: string): Promise<boolean | 'vanished'> {
  let fd: number;
  try {
    fd = await fileSystem.open(path, openFlags.readOnly);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return 'vanished';
    throw error;
  }
  try {
    const otherFd = await fileSystem.open(otherPath, openFlags.readOnly);
    try {
      const [{ size }, other] = [await fileSystem.fstat(fd), await fileSystem.fstat(otherFd)];
      if (size !== other.size) return false;
      const a = new Uint8Array(Math.min(copyChunkBytes, Math.max(size, 1)));
      const b = new Uint8Array(a.length);
      for (let position = 0; position < size;) {
        const length = Math.min(a.length, size - position);
        const [readA, readB] = [await readAt(fileSystem, fd, a, length, position), await readAt(fileSystem, otherFd, b, length, position)];
        if (!readA || !readB || !sameBytes(a.subarray(0, length), b.subarray(0, length))) return false;
        position += length;
      }
      return true;
    } finally {
      await fileSystem.close(otherFd);
    }
  } finally {
    await fileSystem.close(fd);
  }
}

/** Fills buffer[0, length) from `position`; false if the file ends first. */
async function readAt(fileSystem: LogFileSystem, fd: number, buffer: Uint8Array, length: number, position: number): Promise<boolean> {
  for (let offset = 0; offset < length;) {
    const read = await fileSystem.read(fd, buffer, offset, length - offset, position + offset);
    if (read === 0) return false;
    offset += read;
  }
  return true;
}

// ---------------------------------------------------------------- reading the archive back (the shell)

/**
 * Every archived segment under `root`: its files, and those of each subfolder (one per server).
 * Other files (a copy cut short, anything else) are ignored.
 */
export async function listArchive(root: string, fileSystem: LogFileSystem = nodeFileSystem): Promise<ArchiveFile[]> {
  const files: ArchiveFile[] = [];
  const collect = (folder: string, names: string[]): string[] => {
    const others: string[] = [];
    for (const name of names.sort()) {
      const range = parseArchiveFileName(name);
      if (range === undefined) others.push(name);
      else files.push({ path: join(folder, name), ...range });
    }
    return others;
  };
  for (const name of collect(root, await fileSystem.readdir(root))) {
    let names: string[];
    try {
      names = await fileSystem.readdir(join(root, name));
    } catch (error) {
      if (errorCode(error) === 'ENOTDIR') continue;
      throw error;
    }
    collect(join(root, name), names);
  }
  return files;
}

export interface ReadArchiveOptions {
  checksum: Checksum;
  /** Most entries per batch yielded. */
  batchEntriesMax?: number;
  /** Epoch of the entry at fromSeq − 1 (the backup's): no entry read may have a lower one. */
  baseEpoch?: Epoch;
  fileSystem?: LogFileSystem;
}

/**
 * The entries fromSeq..toSeq of the planned files (planReplay), in order, in batches; every file
 * checked whole when first needed, every seq agreed by all the copies that hold it. Throws an
 * ArchiveError when a file is damaged, copies disagree, epochs go down, or a seq is missing (the
 * files changed since they were planned). Holds in memory only the files around the current seq.
 */
export async function* readArchivedEntries(files: readonly ArchiveFile[], fromSeq: Seq, toSeq: Seq, options: ReadArchiveOptions): AsyncGenerator<LogEntry[]> {
  const fileSystem = options.fileSystem ?? nodeFileSystem;
  const batchEntriesMax = options.batchEntriesMax ?? 1024;
  assert(batchEntriesMax >= 1, 'batchEntriesMax must be positive');
  const sorted = [...files].sort(byRange);
  let nextFile = 0;
  let open: CheckedSegment[] = [];
  let previousEpoch: number = options.baseEpoch ?? 0;
  let batch: LogEntry[] = [];
  for (let at = fromSeq; at <= toSeq; at = seq(at + 1)) {
    if (open.some((segment) => segment.file.lastSeq < at)) open = open.filter((segment) => segment.file.lastSeq >= at);
    while (nextFile < sorted.length && (sorted[nextFile] as ArchiveFile).firstSeq <= at) {
      const file = sorted[nextFile++] as ArchiveFile;
      if (file.lastSeq < at) continue;
      let bytes: Uint8Array;
      try {
        bytes = await readWholeFile(fileSystem, file.path);
      } catch (error) {
        throw new ArchiveError('missing', `Cannot read ${file.path}: ${(error as Error).message}`);
      }
      open.push(checkArchivedSegment(file, bytes, options.checksum));
    }
    if (open.length === 0) throw new ArchiveError('missing', `seq ${at} is missing from the archive (did its files change during the restore?)`);
    const entry = agreedEntry(open, at);
    if (entry.epoch < previousEpoch) {
      throw new ArchiveError('epoch', `the archive's entry at seq ${at} has epoch ${entry.epoch}, below the epoch ${previousEpoch} of seq ${at - 1}`
        + `${at === fromSeq ? ' (the backup\'s)' : ''}: they are not one history (is the archive from another cluster?)`);
    }
    previousEpoch = entry.epoch;
    batch.push(entry);
    if (batch.length >= batchEntriesMax) {
      yield batch;
      batch = [];
    }
  }
  if (batch.length > 0) yield batch;
}
