// The real disk of a server: its log, as segment files of checksummed records (log-format.ts), and
// its meta file, driven by the core's disk operations. Operations run strictly in submission order
// and are reported durable in that order (the core's onDiskDone contract) by group commit: while
// one group is being written and synced, new operations queue up and form the next group, written
// with one write and made durable with one fdatasync. At open it takes the directory's lock, runs
// the recovery scan, and cuts a torn tail or a corrupt log before the server starts.
//
// Layout of a data directory:
//   LOCK                          pid of the process that owns the directory (lock-file.ts)
//   meta.json                     {"promisedEpoch":N,"incomplete":bool}, replaced atomically
//   log-start.json                {"firstSeq":N,"baseEpoch":E}: where the log starts when it does
//                                 not start at seq 1 (after a compaction or a reset to a snapshot),
//                                 replaced atomically; absent means seq 1, base epoch 0
//   log/00000000000000000001.seg  records from seq 1; a segment is named by its first seq
//
// The log start moves in two ways, each crash-safe because log-start.json is durable before any
// segment it makes obsolete is deleted:
// - removeSegmentsBefore (compaction): the new start is the first kept segment's name and the base
//   epoch that of the last entry deleted. A crash before the deletions are durable leaves segments
//   wholly below the start, which the next open deletes.
// - resetLog (after a snapshot was installed): every segment goes, whatever seqs it holds. The
//   record is first written with "resetting": true, then the segments are deleted, then the record
//   is written without it; an open that finds "resetting" deletes every segment before anything
//   else, so a crash anywhere in between never lets an old segment pass for part of the new log.

import { join } from 'node:path';
import { crc32 as zlibCrc32 } from 'node:zlib';
import { assert } from '../lib/assert.ts';
import type { DiskOperation } from '../core/server.ts';
import type { ServerMeta } from '../protocol/messages.ts';
import type { Epoch, LogEntry, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import type { FileStat, LogFileSystem } from './file-log-system.ts';
import { errorCode, nodeFileSystem, openFlags, readAll, readWholeFile, writeAll } from './file-log-system.ts';
import type { Checksum, LogStart } from './log-format.ts';
import { LogScanner, RecordEncoder, parseSegmentName, recordEnd, recordEpochAt, segmentName } from './log-format.ts';
import type { DirectoryLock } from './lock-file.ts';
import { acquireDirectoryLock } from './lock-file.ts';

export const defaultSegmentBytesMax = 64 * 1024 * 1024;
/** Bytes of records written in one group before it is synced and reported, so a group stays bounded. */
export const defaultGroupBytesMax = 8 * 1024 * 1024;
export const defaultPreallocateBytes = 1024 * 1024;

export const metaFileName = 'meta.json';
export const logStartFileName = 'log-start.json';
export const logDirectoryName = 'log';

export interface FileLogOptions {
  /** A segment is closed and a new one started before it would grow past this (default 64 MiB). */
  segmentBytesMax?: number;
  /** Most record bytes one group writes before it syncs and reports (default 8 MiB). */
  groupBytesMax?: number;
  /**
   * The current segment is filled with zeros this far ahead of its records (default 1 MiB; 0: no
   * preallocation). Records then overwrite space the file already has, so the fdatasync of a
   * group need not also commit a new file size to the file system's journal: on ext4 it costs
   * about half as much.
   */
  preallocateBytes?: number;
  /** The file-system calls; tests inject faults here. */
  fileSystem?: LogFileSystem;
  /** CRC-32 (zlib's by default; log-format.ts has the same function in pure TypeScript). */
  checksum?: Checksum;
  /** Clock reading for the lock's staleness rule (default Date.now()). */
  nowMs?: number;
}

/** What the recovery scan found: with bootId and a store, a RecoveredState for the core. */
export interface RecoveredLog {
  meta: ServerMeta;
  /** The valid log, consecutive from firstSeq. */
  entries: LogEntry[];
  firstSeq: Seq;
  /** Epoch of the entry at firstSeq − 1 (compacted away or in a snapshot); 0 when firstSeq is 1. */
  baseEpoch: Epoch;
  /** A record below the tail failed its checksum; the log was cut there and meta marked incomplete. */
  corruptionFound: boolean;
  /** The last record was incomplete or damaged with nothing valid after it (a torn write); it was cut. */
  tornTailCut: boolean;
}

export interface OpenedFileLog {
  log: FileLog;
  recovered: RecoveredLog;
  /** Things the operator should hear about: a stale lock taken over, a cut log, unknown files. */
  warnings: string[];
}

export interface FileLogMetrics {
  /** fdatasync and fsync calls, on segments, the meta file and directories. */
  fsyncs: number;
  writes: number;
  bytesWritten: number;
  /** Groups of operations taken from the queue together. */
  groups: number;
  /** Operations reported durable. */
  operationsDurable: number;
}

export class FileLogFailedError extends Error {
  override name = 'FileLogFailedError';
}

/** An error of a file-system call, as opposed to a bug in this module. */
class IoFailure extends Error {
  override name = 'IoFailure';
  /** The errno code (EIO, ENOSPC, ENOENT …), so callers inside this module can still test it. */
  readonly code: string | undefined;

  constructor(readonly error: Error) {
    super(error.message);
    this.code = errorCode(error);
  }
}

type QueueItem =
  | { kind: 'operation'; operationId: number; operation: DiskOperation }
  | { kind: 'removeSegments'; beforeSeq: Seq; resolve: (removed: number) => void; reject: (error: Error) => void };

interface Segment {
  firstSeq: Seq;
  /** Seq of its last record (written, perhaps not yet durable); firstSeq − 1 when empty. */
  lastSeq: Seq;
  /** Epoch of its last record; when empty, of the entry before it (so a compaction knows its base epoch). */
  lastEpoch: Epoch;
  /** Bytes of records written to the file. */
  sizeBytes: number;
  /** Bytes of the file: the records, then zeros written ahead of them (see preallocateBytes). */
  allocatedBytes: number;
}

/** Opens the data directory (creating it if needed), locks it and recovers the log and meta. */
export async function openFileLog(dataDir: string, options: FileLogOptions = {}): Promise<OpenedFileLog> {
  return FileLog.open(dataDir, options);
}

export class FileLog {
  /** Operation `operationId` and every one submitted before it are durable. */
  onDurable: (operationId: number) => void = () => {};
  /**
   * A write or sync failed: nothing after the last reported operation is durable, and the log
   * refuses further operations. A failed fsync is not retried (its dirty pages may be gone, see
   * PostgreSQL's "fsyncgate"); the server stops and recovers by restarting. Called once.
   */
  onError: (error: Error) => void = (error) => {
    throw error;
  };

  private readonly logDir: string;
  private readonly fs: LogFileSystem;
  /**
   * Segments in seq order, each starting where the one before ends; the last is the one
   * appended to. Only the first and the last may be empty. The first starts at the log start
   * (below it only if the log start was recorded inside it; those records are not part of the log).
   */
  private readonly segments: Segment[];
  /** The last segment's file, open for reading and writing. */
  private currentFd: number | undefined;
  /** The current segment has writes or a cut not yet synced. */
  private segmentDirty = false;
  /** The log directory has a new file not yet synced. */
  private directoryDirty = false;
  /** Where the log starts: durable in log-start.json (or seq 1, base epoch 0, without one). */
  private logStart: LogStart;

  private readonly queue: QueueItem[] = [];
  private readonly pendingRemovals = new Set<QueueItem & { kind: 'removeSegments' }>();
  private running: Promise<void> | undefined;
  private failure: Error | undefined;
  private closed = false;
  /** Highest operation id submitted; ids must grow. */
  private submittedId = 0;
  /** Log end as of every submitted operation, to check appends continue it. */
  private submittedLastSeq: Seq;
  /** Log start as of every submitted resetLog (a removal may raise it further when it runs). */
  private submittedFirstSeq: Seq;
  /** Highest operation id executed; the next sync makes it durable. */
  private executedId = 0;
  /** Operations executed and not yet reported. */
  private executedOperations = 0;
  private reportedId = 0;

  private constructor(
    readonly dataDir: string,
    readonly metrics: FileLogMetrics,
    private readonly options: Required<Omit<FileLogOptions, 'fileSystem' | 'nowMs'>>,
    fileSystem: LogFileSystem,
    private readonly lock: DirectoryLock,
    private readonly dataDirFd: number,
    private readonly logDirFd: number,
    segments: Segment[],
    start: LogStart,
  ) {
    this.logDir = join(dataDir, logDirectoryName);
    this.fs = fileSystem;
    this.segments = segments;
    this.logStart = start;
    this.submittedLastSeq = this.lastSeq;
    this.submittedFirstSeq = start.firstSeq;
  }

  static async open(dataDir: string, options: FileLogOptions): Promise<OpenedFileLog> {
    const settings = {
      segmentBytesMax: options.segmentBytesMax ?? defaultSegmentBytesMax,
      groupBytesMax: options.groupBytesMax ?? defaultGroupBytesMax,
      preallocateBytes: options.preallocateBytes ?? defaultPreallocateBytes,
      checksum: options.checksum ?? zlibCrc32,
    };
    assert(Number.isSafeInteger(settings.preallocateBytes) && settings.preallocateBytes >= 0, 'preallocateBytes must not be negative');
    assert(Number.isSafeInteger(settings.segmentBytesMax) && settings.segmentBytesMax >= 1024, 'segmentBytesMax must be at least 1 KiB');
    assert(Number.isSafeInteger(settings.groupBytesMax) && settings.groupBytesMax >= 1, 'groupBytesMax must be positive');
    const metrics: FileLogMetrics = { fsyncs: 0, writes: 0, bytesWritten: 0, groups: 0, operationsDurable: 0 };
    const fileSystem = tagErrors(options.fileSystem ?? nodeFileSystem, metrics);
    const logDir = join(dataDir, logDirectoryName);
    const warnings: string[] = [];
    try {
      await fileSystem.mkdir(logDir);
      const lock = await acquireDirectoryLock(fileSystem, dataDir, warnings, options.nowMs ?? Date.now());
      const fds: number[] = [];
      try {
        const dataDirFd = await fileSystem.open(dataDir, openFlags.directory);
        fds.push(dataDirFd);
        const logDirFd = await fileSystem.open(logDir, openFlags.directory);
        fds.push(logDirFd);
        // The log directory may have just been created.
        await fileSystem.fsync(dataDirFd);
        const recovery = await recover(fileSystem, dataDir, dataDirFd, logDirFd, settings.checksum, warnings);
        const start = { firstSeq: recovery.recovered.firstSeq, baseEpoch: recovery.recovered.baseEpoch };
        const log = new FileLog(dataDir, metrics, settings, fileSystem, lock, dataDirFd, logDirFd, recovery.segments, start);
        if (recovery.segments.length > 0) {
          log.currentFd = await fileSystem.open(join(logDir, segmentName((recovery.segments.at(-1) as Segment).firstSeq)), openFlags.readWrite);
        }
        return { log, recovered: recovery.recovered, warnings };
      } catch (error) {
        for (const fd of fds) await fileSystem.close(fd).catch(() => {});
        await lock.release().catch(() => {});
        throw error;
      }
    } catch (error) {
      throw error instanceof IoFailure ? error.error : error;
    }
  }

  // ---------------------------------------------------------------- the interface the runtime uses

  /**
   * Queues a disk operation of the core. Operations run in submission order; onDurable reports
   * them. Appends must continue the log as the operations before them leave it.
   */
  submit(operationId: number, operation: DiskOperation): void {
    this.checkOpen();
    assert(operationId > this.submittedId, `operation ids must grow: ${operationId} after ${this.submittedId}`);
    if (operation.type === 'append') {
      let expected = this.submittedLastSeq + 1;
      for (const entry of operation.entries) {
        assert(entry.seq === expected, `an append must continue the log at seq ${expected}, not ${entry.seq}`);
        expected++;
      }
      this.submittedLastSeq = seq(expected - 1);
    } else if (operation.type === 'truncate') {
      assert(operation.afterSeq >= this.submittedFirstSeq - 1, `cannot truncate after seq ${operation.afterSeq}: the log starts at ${this.submittedFirstSeq}`);
      this.submittedLastSeq = seq(Math.min(this.submittedLastSeq, operation.afterSeq));
    } else if (operation.type === 'resetLog') {
      assert(Number.isSafeInteger(operation.firstSeq) && operation.firstSeq >= 1, `a log starts at a seq, not ${operation.firstSeq}`);
      assert(Number.isSafeInteger(operation.baseEpoch) && operation.baseEpoch >= 0, `a base epoch is an epoch, not ${operation.baseEpoch}`);
      assert(operation.firstSeq > 1 || operation.baseEpoch === 0, 'a log that starts at seq 1 has base epoch 0');
      this.submittedFirstSeq = operation.firstSeq;
      this.submittedLastSeq = seq(operation.firstSeq - 1);
    }
    this.submittedId = operationId;
    this.queue.push({ kind: 'operation', operationId, operation });
    this.start();
  }

  /**
   * Deletes whole segments whose entries are all below `beforeSeq` (compaction), in order with
   * the operations submitted before; the segment being appended to is never deleted. The new log
   * start (the first kept segment's name, and the epoch of the entry before it) is made durable
   * in log-start.json first, after the operations before it. Resolves with the number of segments
   * deleted, once the deletion is durable.
   */
  removeSegmentsBefore(beforeSeq: Seq): Promise<number> {
    try {
      this.checkOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    return new Promise((resolve, reject) => {
      const item: QueueItem & { kind: 'removeSegments' } = { kind: 'removeSegments', beforeSeq, resolve, reject };
      this.pendingRemovals.add(item);
      this.queue.push(item);
      this.start();
    });
  }

  /** Waits for queued work, closes the files and releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.running;
    } finally {
      const fds = [this.currentFd, this.logDirFd, this.dataDirFd];
      this.currentFd = undefined;
      for (const fd of fds) if (fd !== undefined) await this.fs.close(fd).catch(() => {});
      await this.lock.release();
    }
  }

  /** Seq of the first entry the log can hold (durable: it only moves once log-start.json does). */
  get firstSeq(): Seq {
    return this.logStart.firstSeq;
  }

  /** Epoch of the entry at firstSeq − 1; 0 when firstSeq is 1. */
  get baseEpoch(): Epoch {
    return this.logStart.baseEpoch;
  }

  /** The last seq written (durable once reported). */
  get lastSeq(): Seq {
    const last = this.segments.at(-1);
    return last === undefined ? seq(this.logStart.firstSeq - 1) : last.lastSeq;
  }

  get segmentCount(): number {
    return this.segments.length;
  }

  /** The error that stopped the log, if one did. */
  get failed(): Error | undefined {
    return this.failure;
  }

  // ---------------------------------------------------------------- the group commit loop

  private checkOpen(): void {
    if (this.failure !== undefined) throw new FileLogFailedError(`The log failed and accepts no more operations: ${this.failure.message}`);
    if (this.closed) throw new FileLogFailedError('The log is closed');
  }

  private start(): void {
    this.running ??= this.drain();
  }

  private async drain(): Promise<void> {
    // Let the operations submitted in this turn of the event loop join the first group.
    await Promise.resolve();
    try {
      while (this.queue.length > 0 && this.failure === undefined) {
        await this.executeGroup(this.queue.splice(0, this.queue.length));
      }
    } catch (error) {
      if (!(error instanceof IoFailure)) throw error;
      this.fail(error.error);
    } finally {
      this.running = undefined;
    }
  }

  private fail(error: Error): void {
    this.failure = error;
    this.queue.length = 0;
    for (const removal of this.pendingRemovals) removal.reject(error);
    this.pendingRemovals.clear();
    this.onError(error);
  }

  /**
   * Runs a group in order. Appends accumulate into one buffer; a truncate, a meta write or a
   * segment removal first writes what accumulated before it. The group ends with one sync and
   * one report for everything it covered.
   */
  private async executeGroup(group: QueueItem[]): Promise<void> {
    this.metrics.groups++;
    let encoder: RecordEncoder | undefined;
    const writePending = async (): Promise<void> => {
      if (encoder !== undefined) await this.writeRecords(encoder);
      encoder = undefined;
    };
    for (const item of group) {
      if (item.kind === 'removeSegments') {
        await writePending();
        const removed = await this.removeSegments(item.beforeSeq);
        this.pendingRemovals.delete(item);
        item.resolve(removed);
        continue;
      }
      const { operationId, operation } = item;
      switch (operation.type) {
        case 'append': {
          encoder ??= new RecordEncoder(this.options.checksum);
          for (const entry of operation.entries) encoder.add(entry);
          this.executed(operationId);
          if (encoder.byteLength >= this.options.groupBytesMax) {
            await writePending();
            await this.syncLog();
            this.report();
          }
          break;
        }
        case 'truncate': {
          await writePending();
          // A cut is synced at once, so later appends never mix with the entries it removed.
          const cut = await this.cutAfter(operation.afterSeq);
          this.executed(operationId);
          if (cut) this.report();
          break;
        }
        case 'meta': {
          // The log operations before a meta write are durable before it, so a crash leaves a
          // prefix of the operations, as the simulated disk assumes.
          await writePending();
          await this.syncLog();
          this.report();
          await writeMeta(this.fs, this.dataDir, this.dataDirFd, operation.meta);
          this.executed(operationId);
          this.report();
          break;
        }
        case 'resetLog': {
          // Likewise: everything before the reset is durable first.
          await writePending();
          await this.syncLog();
          this.report();
          await this.resetLog({ firstSeq: operation.firstSeq, baseEpoch: operation.baseEpoch });
          this.executed(operationId);
          this.report();
          break;
        }
      }
    }
    await writePending();
    await this.syncLog();
    this.report();
  }

  /** The operation's changes are written, or in the group's buffer: the next sync covers them. */
  private executed(operationId: number): void {
    this.executedId = operationId;
    this.executedOperations++;
  }

  /** Everything executed is durable: report the last operation. */
  private report(): void {
    if (this.executedId <= this.reportedId) return;
    this.reportedId = this.executedId;
    this.metrics.operationsDurable += this.executedOperations;
    this.executedOperations = 0;
    this.onDurable(this.reportedId);
  }

  /** Writes the encoded records, starting a new segment where the current one would overflow. */
  private async writeRecords(encoder: RecordEncoder): Promise<void> {
    if (encoder.recordCount === 0) return;
    const firstSeq = encoder.firstSeq as Seq;
    assert(firstSeq === this.lastSeq + 1, `records at seq ${firstSeq} do not continue the log at ${this.lastSeq}`);
    const { bytes, recordEnds } = encoder.finish();
    const segmentBytesMax = this.options.segmentBytesMax;
    let start = 0;
    let record = 0;
    while (record < recordEnds.length) {
      if (this.currentFd === undefined) await this.createSegment(seq(firstSeq + record));
      const current = this.segments.at(-1) as Segment;
      let next = record;
      while (next < recordEnds.length && current.sizeBytes + (recordEnds[next] as number) - start <= segmentBytesMax) next++;
      if (next === record) {
        if (current.sizeBytes > 0) {
          await this.rollSegment(seq(firstSeq + record));
          continue;
        }
        next = record + 1; // A record larger than a segment gets a segment of its own.
      }
      const end = recordEnds[next - 1] as number;
      await this.preallocate(current, current.sizeBytes + end - start);
      await writeAll(this.fs, this.currentFd as number, bytes, start, end, current.sizeBytes);
      this.metrics.writes++;
      this.metrics.bytesWritten += end - start;
      current.sizeBytes += end - start;
      current.lastSeq = seq(firstSeq + next - 1);
      current.lastEpoch = recordEpochAt(bytes, next >= 2 ? recordEnds[next - 2] as number : 0);
      this.segmentDirty = true;
      start = end;
      record = next;
    }
  }

  private async createSegment(firstSeq: Seq): Promise<void> {
    assert(this.currentFd === undefined, 'the current segment is still open');
    this.currentFd = await this.fs.open(join(this.logDir, segmentName(firstSeq)), openFlags.createNew, 0o644);
    this.segments.push({ firstSeq, lastSeq: seq(firstSeq - 1), lastEpoch: this.epochBefore(this.segments.length), sizeBytes: 0, allocatedBytes: 0 });
    this.directoryDirty = true;
  }

  /**
   * Before records are written up to `needBytes` of the current segment, make the file hold at
   * least that much, plus preallocateBytes of zeros ahead (never past the segment's limit, unless
   * one record needs it). The zeros are synced with the group's records: until then a crash may
   * lose them, which costs nothing (the scan ends the records at the first all-zero remainder).
   */
  private async preallocate(segment: Segment, needBytes: number): Promise<void> {
    if (needBytes <= segment.allocatedBytes) return;
    const chunk = this.options.preallocateBytes;
    if (chunk === 0) {
      segment.allocatedBytes = needBytes;
      return;
    }
    const target = Math.max(needBytes, Math.min(this.options.segmentBytesMax, needBytes + chunk));
    // The records about to be written fill the file up to needBytes; zeros go after them.
    if (target > needBytes) {
      const zeros = new Uint8Array(target - needBytes);
      await writeAll(this.fs, this.currentFd as number, zeros, 0, zeros.length, needBytes);
    }
    segment.allocatedBytes = target;
  }

  /** Epoch of the entry just before segment `index` (which may be one past the last). */
  private epochBefore(index: number): Epoch {
    return index === 0 ? this.logStart.baseEpoch : (this.segments[index - 1] as Segment).lastEpoch;
  }

  private async rollSegment(firstSeq: Seq): Promise<void> {
    // The full segment is durable before the next one gets data: a torn write then never spans
    // two segments, which the recovery scan would take for corruption.
    await this.syncLog();
    const full = this.segments.at(-1) as Segment;
    if (full.allocatedBytes > full.sizeBytes) {
      // Its unused zeros go, so only the newest segment has space ahead of its records (an archive
      // of a closed segment holds records only). Synced, once per segment: a closed segment is
      // never synced again. Should a crash undo the cut anyway, the next open redoes it.
      await this.fs.ftruncate(this.currentFd as number, full.sizeBytes);
      await this.fs.fsync(this.currentFd as number);
      full.allocatedBytes = full.sizeBytes;
    }
    await this.fs.close(this.currentFd as number);
    this.currentFd = undefined;
    await this.createSegment(firstSeq);
  }

  private async syncLog(): Promise<void> {
    if (this.segmentDirty) {
      await this.fs.fdatasync(this.currentFd as number);
      this.segmentDirty = false;
    }
    if (this.directoryDirty) {
      await this.fs.fsync(this.logDirFd);
      this.directoryDirty = false;
    }
  }

  /** Removes every entry after `afterSeq`, durably. Returns false if there was none. */
  private async cutAfter(afterSeq: Seq): Promise<boolean> {
    if (afterSeq >= this.lastSeq) return false;
    assert(afterSeq >= this.firstSeq - 1, `cannot truncate after seq ${afterSeq}: the log starts at ${this.firstSeq}`);
    let target = this.segments.length - 1;
    while (target > 0 && (this.segments[target] as Segment).firstSeq > afterSeq) target--;
    if (target < this.segments.length - 1) {
      // Whole later segments go first, the last one first, and durably before the cut below: a
      // crash then leaves a prefix of the log, never a cut segment followed by stale ones.
      await this.fs.close(this.currentFd as number);
      this.currentFd = undefined;
      this.segmentDirty = false;
      while (this.segments.length - 1 > target) {
        await this.fs.unlink(join(this.logDir, segmentName((this.segments.pop() as Segment).firstSeq)));
      }
      await this.fs.fsync(this.logDirFd);
      this.directoryDirty = false;
      this.currentFd = await this.fs.open(join(this.logDir, segmentName((this.segments[target] as Segment).firstSeq)), openFlags.readWrite);
    }
    const segment = this.segments[target] as Segment;
    const fd = this.currentFd as number;
    let keepBytes = 0;
    if (afterSeq >= segment.lastSeq) {
      keepBytes = segment.sizeBytes;
    } else if (afterSeq >= segment.firstSeq) {
      const end = recordEnd(await readAll(this.fs, fd, segment.sizeBytes), segment.firstSeq, afterSeq);
      keepBytes = end.offset;
      segment.lastEpoch = end.epoch as Epoch;
    } else {
      segment.lastEpoch = this.epochBefore(target);
    }
    if (keepBytes < segment.allocatedBytes) {
      await this.fs.ftruncate(fd, keepBytes);
      // fsync, not fdatasync: the file's size is what changed.
      await this.fs.fsync(fd);
      this.segmentDirty = false;
    }
    segment.sizeBytes = keepBytes;
    segment.allocatedBytes = Math.min(segment.allocatedBytes, keepBytes);
    segment.lastSeq = seq(Math.max(afterSeq, segment.firstSeq - 1));
    await this.syncLog();
    return true;
  }

  private async removeSegments(beforeSeq: Seq): Promise<number> {
    // A segment's entries are all below beforeSeq when the next segment starts at or below it.
    let count = 0;
    while (count + 1 < this.segments.length && (this.segments[count + 1] as Segment).firstSeq <= beforeSeq) count++;
    if (count === 0) return 0;
    const kept = this.segments[count] as Segment;
    const last = this.segments[count - 1] as Segment;
    assert(last.lastSeq === kept.firstSeq - 1 && last.lastSeq >= last.firstSeq, 'a segment followed by another is not empty and ends where the next starts');
    assert(kept.firstSeq > this.logStart.firstSeq, 'a compaction moves the log start up');
    // What came before is durable first, then the new start, then the deletions: a crash leaves
    // either the old start with every segment, or the new start with segments below it that the
    // next open deletes.
    await this.syncLog();
    this.report();
    const start = { firstSeq: kept.firstSeq, baseEpoch: last.lastEpoch };
    await writeLogStart(this.fs, this.dataDir, this.dataDirFd, start);
    this.logStart = start;
    for (const segment of this.segments.splice(0, count)) await this.fs.unlink(join(this.logDir, segmentName(segment.firstSeq)));
    await this.fs.fsync(this.logDirFd);
    this.directoryDirty = false;
    return count;
  }

  /** Drops every segment and starts the log empty at start.firstSeq (see the module comment). */
  private async resetLog(start: LogStart): Promise<void> {
    if (this.currentFd !== undefined) {
      await this.fs.close(this.currentFd);
      this.currentFd = undefined;
      this.segmentDirty = false;
    }
    if (this.segments.length > 0) {
      await writeLogStart(this.fs, this.dataDir, this.dataDirFd, { ...start, resetting: true });
      // The last first, like every other deletion, so a crash never leaves a gap in a log.
      while (this.segments.length > 0) await this.fs.unlink(join(this.logDir, segmentName((this.segments.pop() as Segment).firstSeq)));
      await this.fs.fsync(this.logDirFd);
      this.directoryDirty = false;
    }
    await writeLogStart(this.fs, this.dataDir, this.dataDirFd, start);
    this.logStart = start;
  }
}

// ---------------------------------------------------------------- meta and log start

/** Replaces a small file of the data directory atomically and durably: temporary file, fsync, rename, fsync directory. */
async function writeSmallFileAtomic(fileSystem: LogFileSystem, dataDir: string, dataDirFd: number, name: string, value: unknown): Promise<void> {
  const bytes = new TextEncoder().encode(`${JSON.stringify(value)}\n`);
  const temporary = join(dataDir, `${name}.tmp`);
  const fd = await fileSystem.open(temporary, openFlags.replace, 0o644);
  try {
    await writeAll(fileSystem, fd, bytes, 0, bytes.length, 0);
    await fileSystem.fsync(fd);
  } finally {
    await fileSystem.close(fd);
  }
  await fileSystem.rename(temporary, join(dataDir, name));
  await fileSystem.fsync(dataDirFd);
}

function writeMeta(fileSystem: LogFileSystem, dataDir: string, dataDirFd: number, meta: ServerMeta): Promise<void> {
  return writeSmallFileAtomic(fileSystem, dataDir, dataDirFd, metaFileName, { promisedEpoch: meta.promisedEpoch, incomplete: meta.incomplete });
}

/** The log start as log-start.json holds it; `resetting` is set while a reset deletes the old segments. */
interface LogStartRecord extends LogStart {
  resetting?: boolean;
}

function writeLogStart(fileSystem: LogFileSystem, dataDir: string, dataDirFd: number, start: LogStartRecord): Promise<void> {
  return writeSmallFileAtomic(fileSystem, dataDir, dataDirFd, logStartFileName, {
    firstSeq: start.firstSeq, baseEpoch: start.baseEpoch, ...(start.resetting === true ? { resetting: true } : {}),
  });
}

/** Reads a small JSON object of the data directory; undefined if the file does not exist. */
async function readSmallFile(fileSystem: LogFileSystem, dataDir: string, name: string): Promise<{ path: string; fields: Record<string, unknown> } | undefined> {
  const path = join(dataDir, name);
  let text: string;
  try {
    text = new TextDecoder().decode(await readWholeFile(fileSystem, path));
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined;
    throw error;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`Cannot parse ${path}: it is not JSON`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error(`Cannot parse ${path}: it is not an object`);
  return { path, fields: parsed as Record<string, unknown> };
}

function isNonNegativeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

async function readMeta(fileSystem: LogFileSystem, dataDir: string): Promise<ServerMeta> {
  // A damaged meta file stops the server: starting with promisedEpoch 0 could break a promise.
  const file = await readSmallFile(fileSystem, dataDir, metaFileName);
  if (file === undefined) return { promisedEpoch: epoch(0), incomplete: false };
  const { promisedEpoch, incomplete } = file.fields;
  if (!isNonNegativeInteger(promisedEpoch)) throw new Error(`Cannot parse ${file.path}: promisedEpoch is not a non-negative integer`);
  if (typeof incomplete !== 'boolean') throw new Error(`Cannot parse ${file.path}: incomplete is not a boolean`);
  return { promisedEpoch: epoch(promisedEpoch), incomplete };
}

async function readLogStart(fileSystem: LogFileSystem, dataDir: string): Promise<LogStartRecord | undefined> {
  // A damaged log start stops the server too: guessing it could pass old entries off as the log.
  const file = await readSmallFile(fileSystem, dataDir, logStartFileName);
  if (file === undefined) return undefined;
  const { firstSeq, baseEpoch, resetting } = file.fields;
  if (!isNonNegativeInteger(firstSeq) || firstSeq < 1) throw new Error(`Cannot parse ${file.path}: firstSeq is not a positive integer`);
  if (!isNonNegativeInteger(baseEpoch)) throw new Error(`Cannot parse ${file.path}: baseEpoch is not a non-negative integer`);
  if (resetting !== undefined && typeof resetting !== 'boolean') throw new Error(`Cannot parse ${file.path}: resetting is not a boolean`);
  return { firstSeq: seq(firstSeq), baseEpoch: epoch(baseEpoch), resetting: resetting === true };
}

/**
 * Writes the files of a data directory whose log is empty and starts at `start` (a restore from a
 * backup): meta.json and log-start.json, durably. The directory must hold no log yet.
 */
export async function writeEmptyLogStart(dataDir: string, start: LogStart, meta: ServerMeta, fileSystem: LogFileSystem = nodeFileSystem): Promise<void> {
  assert(start.firstSeq >= 1 && (start.firstSeq > 1 || start.baseEpoch === 0), 'a log that starts at seq 1 has base epoch 0');
  await fileSystem.mkdir(join(dataDir, logDirectoryName));
  const segments = (await fileSystem.readdir(join(dataDir, logDirectoryName))).filter((name) => parseSegmentName(name) !== undefined);
  if (segments.length > 0) throw new Error(`Cannot start an empty log in ${dataDir}: it already has log segments`);
  const dataDirFd = await fileSystem.open(dataDir, openFlags.directory);
  try {
    await fileSystem.fsync(dataDirFd);
    await writeLogStart(fileSystem, dataDir, dataDirFd, start);
    await writeMeta(fileSystem, dataDir, dataDirFd, meta);
  } finally {
    await fileSystem.close(dataDirFd);
  }
}

// ---------------------------------------------------------------- recovery

async function recover(
  fileSystem: LogFileSystem, dataDir: string, dataDirFd: number, logDirFd: number, checksum: Checksum, warnings: string[],
): Promise<{ recovered: RecoveredLog; segments: Segment[] }> {
  const logDir = join(dataDir, logDirectoryName);
  let meta = await readMeta(fileSystem, dataDir);
  let startRecord = await readLogStart(fileSystem, dataDir);
  for (const name of [metaFileName, logStartFileName]) {
    await fileSystem.unlink(join(dataDir, `${name}.tmp`)).catch((error: unknown) => {
      if (errorCode(error) !== 'ENOENT') throw error;
    });
  }

  let files: { firstSeq: Seq; name: string; sizeBytes: number }[] = [];
  for (const name of await fileSystem.readdir(logDir)) {
    const firstSeq = parseSegmentName(name);
    if (firstSeq === undefined) warnings.push(`Ignored ${join(logDir, name)}: not a segment file`);
    else files.push({ firstSeq, name, sizeBytes: 0 });
  }
  files.sort((a, b) => a.firstSeq - b.firstSeq);

  if (startRecord?.resetting === true) {
    // A reset was cut short: every segment here belongs to the log before it.
    for (let index = files.length - 1; index >= 0; index--) await fileSystem.unlink(join(logDir, (files[index] as { name: string }).name));
    await fileSystem.fsync(logDirFd);
    startRecord = { firstSeq: startRecord.firstSeq, baseEpoch: startRecord.baseEpoch };
    await writeLogStart(fileSystem, dataDir, dataDirFd, startRecord);
    warnings.push(`Finished resetting the log to start at seq ${startRecord.firstSeq} (a crash interrupted it): deleted ${files.length} old segments.`);
    files = [];
  }
  const start: LogStart | undefined = startRecord === undefined ? undefined : { firstSeq: startRecord.firstSeq, baseEpoch: startRecord.baseEpoch };
  if (start !== undefined) {
    // Segments wholly below the start are what a compaction cut short left behind.
    let below = 0;
    while (below + 1 < files.length && (files[below + 1] as { firstSeq: Seq }).firstSeq <= start.firstSeq) below++;
    if (below > 0) {
      for (const file of files.splice(0, below)) await fileSystem.unlink(join(logDir, file.name));
      await fileSystem.fsync(logDirFd);
      warnings.push(`Deleted ${below} segments below the log start at seq ${start.firstSeq} (a compaction a crash interrupted).`);
    }
  } else if (files.length > 0 && (files[0] as { firstSeq: Seq }).firstSeq > 1) {
    warnings.push(`The log starts at seq ${(files[0] as { firstSeq: Seq }).firstSeq} but ${join(dataDir, logStartFileName)} is missing; assuming base epoch 0.`);
  }

  // One read per segment; the scanner keeps decoded entries, not the bytes.
  const scanner = new LogScanner(checksum, start);
  for (const file of files) {
    const bytes = await readWholeFile(fileSystem, join(logDir, file.name));
    file.sizeBytes = bytes.length;
    scanner.addSegment({ firstSeq: file.firstSeq, bytes });
  }
  const scan = scanner.finish();

  if (scan.failure !== undefined) {
    const failure = scan.failure;
    const where = `seq ${failure.seq} (${join(logDir, (files[failure.segment] as { name: string }).name)}, offset ${failure.offset}): ${failure.reason}`;
    if (scan.corruptionFound) {
      // Marked incomplete durably before the cut: no later start may forget that entries this
      // server acknowledged are gone.
      if (!meta.incomplete) {
        meta = { ...meta, incomplete: true };
        await writeMeta(fileSystem, dataDir, dataDirFd, meta);
      }
      warnings.push(`The log is damaged below its tail at ${where}. Cut it there and marked this server incomplete until it is repaired from the main.`);
    } else {
      warnings.push(`Cut a torn record at the end of the log at ${where}.`);
    }
  }

  // Delete the segments after the cut, the last first, durably before cutting the one it is in.
  const kept = new Set(scan.kept.map((extent) => extent.index));
  let unlinked = false;
  for (let index = files.length - 1; index >= 0; index--) {
    if (kept.has(index)) continue;
    await fileSystem.unlink(join(logDir, (files[index] as { name: string }).name));
    unlinked = true;
  }
  if (unlinked) await fileSystem.fsync(logDirFd);
  const newest = scan.kept.at(-1);
  for (const extent of scan.kept) {
    const file = files[extent.index] as { name: string; sizeBytes: number };
    // Zeros after the records are preallocated space: the newest segment reuses them; an older one
    // (a roll's cut that a crash undid) is cut again, so closed segments hold records only.
    if (extent.validBytes === file.sizeBytes || (extent.zeroTail && extent === newest)) continue;
    file.sizeBytes = extent.validBytes;
    const fd = await fileSystem.open(join(logDir, file.name), openFlags.readWrite);
    try {
      await fileSystem.ftruncate(fd, extent.validBytes);
      await fileSystem.fsync(fd);
    } finally {
      await fileSystem.close(fd);
    }
  }

  return {
    recovered: {
      meta, entries: scan.entries, firstSeq: scan.firstSeq, baseEpoch: start?.baseEpoch ?? epoch(0),
      corruptionFound: scan.corruptionFound, tornTailCut: scan.tornTailCut,
    },
    segments: scan.kept.map((extent) => ({
      firstSeq: extent.firstSeq, lastSeq: extent.lastSeq, lastEpoch: extent.lastEpoch, sizeBytes: extent.validBytes,
      allocatedBytes: (files[extent.index] as { sizeBytes: number }).sizeBytes,
    })),
  };
}

// ---------------------------------------------------------------- error tagging and counting

/**
 * Wraps a file system so its errors become IoFailures (so the log tells I/O errors from its own
 * bugs) and its syncs are counted.
 */
function tagErrors(fileSystem: LogFileSystem, metrics: FileLogMetrics): LogFileSystem {
  const tagged: Record<string, unknown> = {};
  for (const name of Object.keys(nodeFileSystem) as (keyof LogFileSystem)[]) {
    tagged[name] = async (...args: unknown[]): Promise<unknown> => {
      if (name === 'fsync' || name === 'fdatasync') metrics.fsyncs++;
      try {
        // Looked up at each call, so a test may swap a method of an open log's file system.
        return await (fileSystem[name] as (...args: unknown[]) => Promise<unknown>).apply(fileSystem, args);
      } catch (error) {
        throw new IoFailure(error instanceof Error ? error : new Error(String(error)));
      }
    };
  }
  return tagged as unknown as LogFileSystem;
}

export type { FileStat, LogFileSystem };
