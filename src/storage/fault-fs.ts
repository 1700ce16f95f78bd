// Test-only fault injection under the file log: a LogFileSystem that wraps another (node:fs by
// default) and can lose unsynced writes as a power cut would, and fail syncs and writes on demand.
// The Jepsen-style harness starts real server processes with the variables below; the process
// hands the wrapper to openFileLog. Nothing here runs unless MAINSTAY_TEST_FAULTS is set.
//
// Environment:
//   MAINSTAY_TEST_FAULTS       Comma- or space-separated modes; unset or empty: no wrapper at all.
//                                power-loss  writes stay in this process's memory until an fsync or
//                                            fdatasync of the file makes them real, so a SIGKILL
//                                            loses them as a power cut loses the page cache.
//                                on          the wrapper without power loss (control file only).
//                              An unknown mode is an error: a misspelt fault must not pass silently.
//   MAINSTAY_TEST_FAULTS_FILE  A control file, read again at most every 20 ms while syncs or writes
//                              happen. Its words (comma- or space-separated) turn faults on while
//                              they are in it; empty it or delete it to turn them off:
//                                fsync-eio    every fsync and fdatasync (files and directories)
//                                             fails with EIO, and makes nothing durable
//                                write-enospc every write fails with ENOSPC and writes nothing
//                              Needs MAINSTAY_TEST_FAULTS (say `on`); set alone it is an error.
//
// How power-loss mode models the disk, and why:
// - A file's unsynced changes (writes, ftruncate, O_TRUNC at open) are kept per file, shared by
//   every descriptor open on it and following it through renames, like the page cache of an inode.
//   Reads, fstat and stat see them (read-your-writes). A closed file keeps them until its next sync
//   or a power loss, as a closed file's dirty pages stay dirty.
// - fsync or fdatasync of a descriptor applies its file's changes to the real file, in order, and
//   then syncs it for real. Both flush data and size (fdatasync must flush a size that reading the
//   data needs). A directory has no data of its own here: its fsync flushes nothing of the files in
//   it, as on Linux, where fsync of a directory makes its entries durable, not its files' contents.
// - rename, unlink and mkdir reach the real directory at once. A killed process never loses them;
//   only a real power cut or kernel crash would, and that this wrapper does not model: the file
//   log's directory fsyncs are needed for real machines but a test here cannot catch a missing
//   one. It does catch a missing file fsync before a rename: the renamed file is empty after a
//   kill, as XFS, or ext4 mounted with noauto_da_alloc, may leave it after a crash.
// - The LOCK file (lock-file.ts) is written through. It names the process that owns the data
//   directory, which a power cut kills too; after a kill a LOCK naming a dead pid is taken over at
//   once, while an empty one would be refused for lockCreationGraceMs, longer than a harness
//   waits before restarting a server. (A real reboot outlasts that grace.)
// - Other processes see only what was synced, unlike a real page cache: a harness reading a live
//   server's data directory sees its durable state.
// - Only the log goes through this wrapper: LMDB (the state store) keeps its own durability, and a
//   SIGKILL loses none of its writes. That is safe to leave out: only committed, locally durable
//   entries are applied to it.
//
// A failed sync (injected EIO) drops the changes it was to make durable, as Linux may drop the
// dirty pages of a failed fsync ("fsyncgate"); later reads see the real file without them. Without
// power-loss mode the written bytes are already in the real page cache, so an injected EIO only
// skips the real sync: the data may still survive a kill, which the file log must not rely on.

import * as fs from 'node:fs';
import { readFile, stat as statPath } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { basename, resolve, sep } from 'node:path';
import type { FileStat, LogFileSystem } from './file-log-system.ts';
import { nodeFileSystem, writeAll } from './file-log-system.ts';
import { lockFileName } from './lock-file.ts';

export const faultsEnvironmentName = 'MAINSTAY_TEST_FAULTS';
export const faultsFileEnvironmentName = 'MAINSTAY_TEST_FAULTS_FILE';
/** The control file is read again at most this often. */
export const defaultControlCheckIntervalMs = 20;

const faultModes = ['power-loss', 'on'] as const;
/** The words the control file may hold. */
export const controlWords = ['fsync-eio', 'write-enospc'] as const;
export type ControlWord = (typeof controlWords)[number];

export interface FaultFileSystemOptions {
  /** Keep writes in memory until their file is synced (default false). */
  powerLoss?: boolean;
  /** The control file; without one, no sync or write fails. */
  controlFile?: string;
  /** Read the control file again at most this often (default 20 ms; 0: at every call). */
  controlCheckIntervalMs?: number;
  /** Files written straight through even in power-loss mode (default: the data directory's LOCK). */
  writeThrough?: (absolutePath: string) => boolean;
  /** Where a control file that cannot be read or holds an unknown word is reported. */
  warn?: (message: string) => void;
}

/** What the wrapper injected and held, for logs. All counts since the wrapper was made. */
export interface FaultCounters {
  /** fsync and fdatasync calls failed with an injected EIO. */
  fsyncEio: number;
  /** write calls failed with an injected ENOSPC. */
  writeEnospc: number;
  /** Bytes of unsynced writes an injected EIO dropped. */
  bytesDroppedByFailedSync: number;
  /** Writes held in memory until a sync (power-loss mode), and their bytes. */
  writesHeld: number;
  bytesHeld: number;
  /** Bytes a sync wrote to the real files. */
  bytesSynced: number;
  /** simulatePowerLoss calls, and the unsynced bytes they lost. */
  powerLosses: number;
  bytesLostToPowerLoss: number;
  /** Times the control file's words changed. */
  controlChanges: number;
}

function zeroCounters(): FaultCounters {
  return {
    fsyncEio: 0, writeEnospc: 0, bytesDroppedByFailedSync: 0, writesHeld: 0, bytesHeld: 0,
    bytesSynced: 0, powerLosses: 0, bytesLostToPowerLoss: 0, controlChanges: 0,
  };
}

/** The sums over every wrapper of this process. */
const totals = zeroCounters();

/** What every fault file system of this process injected so far (a copy), for logs and metrics. */
export function faultCounters(): FaultCounters {
  return { ...totals };
}

/** An error as node's fs gives it: `EIO: i/o error, fsync` with errno, code and syscall. */
export function fileSystemError(code: 'EIO' | 'ENOSPC' | 'EBADF', syscall: string): Error & { errno: number; code: string; syscall: string } {
  const text = { EIO: 'i/o error', ENOSPC: 'no space left on device', EBADF: 'bad file descriptor' }[code];
  return Object.assign(new Error(`${code}: ${text}, ${syscall}`), { errno: -osConstants.errno[code], code, syscall });
}

/**
 * The fault file system the environment asks for, over `base`; undefined unless
 * MAINSTAY_TEST_FAULTS is set (see the module comment).
 */
export function faultFileSystemFromEnv(env: NodeJS.ProcessEnv, base: LogFileSystem = nodeFileSystem): FaultFileSystem | undefined {
  const modes = (env[faultsEnvironmentName] ?? '').split(/[\s,]+/).filter((word) => word !== '');
  const controlFile = env[faultsFileEnvironmentName];
  if (modes.length === 0) {
    if (controlFile !== undefined && controlFile !== '') {
      throw new Error(`${faultsFileEnvironmentName} is set but ${faultsEnvironmentName} is not: set ${faultsEnvironmentName}=on (or power-loss) to inject faults`);
    }
    return undefined;
  }
  for (const mode of modes) {
    if (!(faultModes as readonly string[]).includes(mode)) {
      throw new Error(`Unknown fault mode "${mode}" in ${faultsEnvironmentName}; the modes are ${faultModes.join(', ')}`);
    }
  }
  return new FaultFileSystem(base, {
    powerLoss: modes.includes('power-loss'),
    ...(controlFile !== undefined && controlFile !== '' ? { controlFile: resolve(controlFile) } : {}),
  });
}

/** A change to a file not yet made durable; `id` orders every change of the wrapper. */
type PendingChange =
  | { kind: 'write'; id: number; position: number; bytes: Uint8Array }
  | { kind: 'truncate'; id: number; length: number };

/** A file (an inode) with the changes made to it since its last sync. */
interface FileState {
  /** Its current absolute path; undefined once unlinked or replaced by a rename. */
  path: string | undefined;
  /** Unsynced changes in the order they were made. Invariant: ids increase. */
  pending: PendingChange[];
  /** Descriptors of the wrapper open on it. */
  readonly fds: Set<number>;
  /** The sync in progress, if any: syncs of one file apply its changes one at a time, in order. */
  syncing: Promise<void>;
}

interface Descriptor {
  /** The file whose changes it shares; undefined for a directory or a written-through file. */
  file: FileState | undefined;
  writable: boolean;
}

/** The size of a file after the changes, from its real size. */
function sizeAfter(realSize: number, changes: readonly PendingChange[]): number {
  let size = realSize;
  for (const change of changes) {
    size = change.kind === 'write' ? Math.max(size, change.position + change.bytes.length) : change.length;
  }
  return size;
}

function pendingBytesOf(changes: readonly PendingChange[]): number {
  let bytes = 0;
  for (const change of changes) if (change.kind === 'write') bytes += change.bytes.length;
  return bytes;
}

function isLockFile(absolutePath: string): boolean {
  return basename(absolutePath) === lockFileName;
}

/**
 * The wrapper. Its methods are own properties (arrow functions), so `{ ...faults, fdatasync }`
 * makes a working copy with one call replaced, as tests of the file log do with nodeFileSystem.
 */
export class FaultFileSystem implements LogFileSystem {
  /** What this wrapper injected (live; faultCounters() sums every wrapper). */
  readonly counters: FaultCounters = zeroCounters();
  readonly powerLoss: boolean;
  readonly controlFile: string | undefined;

  private readonly controlCheckIntervalMs: number;
  private readonly writeThrough: (absolutePath: string) => boolean;
  private readonly warn: (message: string) => void;
  /** Files by current absolute path; a file leaves when it is idle (no descriptor, no change). */
  private readonly files = new Map<string, FileState>();
  private readonly descriptors = new Map<number, Descriptor>();
  /** The id of the last change made. */
  private changeId = 0;
  /** Calls of the base file system not yet settled; a power loss waits for them before closing. */
  private readonly inflight = new Set<Promise<unknown>>();
  /** simulatePowerLoss was called: every call fails from then on, as the process would be dead. */
  private powerOff = false;

  /** The control file's words, as last read, when, and the stat that tells whether it changed. */
  private controlFaults: ReadonlySet<string> = new Set();
  private controlCheckedAtMs = Number.NEGATIVE_INFINITY;
  private controlSignature = '';
  private controlCheck: Promise<void> | undefined;
  private readonly unknownWordsWarned = new Set<string>();

  constructor(private readonly base: LogFileSystem = nodeFileSystem, options: FaultFileSystemOptions = {}) {
    this.powerLoss = options.powerLoss ?? false;
    this.controlFile = options.controlFile;
    this.controlCheckIntervalMs = options.controlCheckIntervalMs ?? defaultControlCheckIntervalMs;
    this.writeThrough = options.writeThrough ?? isLockFile;
    this.warn = options.warn ?? ((message) => process.emitWarning(message, 'MainstayTestFaults'));
  }

  // ---------------------------------------------------------------- LogFileSystem

  readonly open = async (path: string, flags: number, mode?: number): Promise<number> => {
    const absolute = resolve(path);
    const overlay = this.powerLoss && (flags & fs.constants.O_DIRECTORY) === 0 && !this.writeThrough(absolute);
    if (overlay && (flags & fs.constants.O_APPEND) !== 0) throw new Error(`Cannot open ${path} with O_APPEND: the fault file system does not model it`);
    // In power-loss mode O_TRUNC is a pending change like any other: the real file keeps its bytes until a sync.
    const truncating = overlay && (flags & fs.constants.O_TRUNC) !== 0;
    const realFlags = truncating ? flags & ~fs.constants.O_TRUNC : flags;
    const fd = await this.call(() => this.base.open(path, realFlags, mode), (late) => this.base.close(late));
    const writable = (flags & (fs.constants.O_WRONLY | fs.constants.O_RDWR)) !== 0;
    let file: FileState | undefined;
    if (overlay) {
      file = this.files.get(absolute);
      if (file === undefined) {
        file = { path: absolute, pending: [], fds: new Set(), syncing: Promise.resolve() };
        this.files.set(absolute, file);
      }
      file.fds.add(fd);
      if (truncating) file.pending.push({ kind: 'truncate', id: ++this.changeId, length: 0 });
    }
    this.descriptors.set(fd, { file, writable });
    return fd;
  };

  readonly close = async (fd: number): Promise<void> => {
    // Forgotten before the real close, so a number the kernel hands out again is never confused with this one.
    const file = this.descriptors.get(fd)?.file;
    this.descriptors.delete(fd);
    if (file !== undefined) {
      file.fds.delete(fd);
      this.forgetIfIdle(file);
    }
    await this.call(() => this.base.close(fd));
  };

  readonly read = async (fd: number, buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> => {
    const file = this.descriptors.get(fd)?.file;
    if (file === undefined || file.pending.length === 0) return this.call(() => this.base.read(fd, buffer, offset, length, position));
    checkRange(buffer, offset, length);
    const changes = file.pending.slice();
    const realSize = (await this.call(() => this.base.fstat(fd))).size;
    const size = sizeAfter(realSize, changes);
    if (position >= size || length === 0) return 0;
    const count = Math.min(length, size - position);
    const window = buffer.subarray(offset, offset + count);
    window.fill(0);
    // The real bytes first, then the changes over them in order. Invariant of the window: bytes at
    // or past the size so far are zero, so a truncate only has to zero what it cuts.
    const realCount = Math.max(0, Math.min(count, realSize - position));
    let done = 0;
    while (done < realCount) {
      const read = await this.call(() => this.base.read(fd, window, done, realCount - done, position + done));
      if (read === 0) break;
      done += read;
    }
    for (const change of changes) {
      if (change.kind === 'write') {
        const from = Math.max(position, change.position);
        const to = Math.min(position + count, change.position + change.bytes.length);
        if (from < to) window.set(change.bytes.subarray(from - change.position, to - change.position), from - position);
      } else if (change.length < position + count) {
        window.fill(0, Math.max(0, change.length - position));
      }
    }
    return count;
  };

  readonly write = async (fd: number, buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> => {
    const faults = await this.faultsNow();
    this.checkPower();
    if (faults.has('write-enospc')) {
      this.count('writeEnospc', 1);
      throw fileSystemError('ENOSPC', 'write');
    }
    const descriptor = this.descriptors.get(fd);
    const file = descriptor?.file;
    if (file === undefined) return this.call(() => this.base.write(fd, buffer, offset, length, position));
    checkRange(buffer, offset, length);
    if (!(descriptor as Descriptor).writable) throw fileSystemError('EBADF', 'write');
    // A copy: the caller may reuse its buffer once the write resolves.
    file.pending.push({ kind: 'write', id: ++this.changeId, position, bytes: new Uint8Array(buffer.subarray(offset, offset + length)) });
    this.count('writesHeld', 1);
    this.count('bytesHeld', length);
    return length;
  };

  readonly fdatasync = (fd: number): Promise<void> => this.sync(fd, 'fdatasync');

  readonly fsync = (fd: number): Promise<void> => this.sync(fd, 'fsync');

  readonly ftruncate = async (fd: number, length: number): Promise<void> => {
    const descriptor = this.descriptors.get(fd);
    const file = descriptor?.file;
    if (file === undefined) return this.call(() => this.base.ftruncate(fd, length));
    this.checkPower();
    if (!(descriptor as Descriptor).writable) throw fileSystemError('EBADF', 'ftruncate');
    file.pending.push({ kind: 'truncate', id: ++this.changeId, length });
  };

  readonly fstat = async (fd: number): Promise<FileStat> => {
    const real = await this.call(() => this.base.fstat(fd));
    const file = this.descriptors.get(fd)?.file;
    return file === undefined || file.pending.length === 0 ? real : { ...real, size: sizeAfter(real.size, file.pending) };
  };

  readonly stat = async (path: string): Promise<FileStat> => {
    const real = await this.call(() => this.base.stat(path));
    const file = this.files.get(resolve(path));
    return file === undefined || file.pending.length === 0 ? real : { ...real, size: sizeAfter(real.size, file.pending) };
  };

  readonly rename = async (from: string, to: string): Promise<void> => {
    await this.call(() => this.base.rename(from, to));
    const source = resolve(from);
    const target = resolve(to);
    if (source === target) return;
    // The target's old file leaves the namespace; descriptors still open on it keep its changes.
    this.detach(target);
    for (const [path, file] of [...this.files]) {
      const moved = path === source ? target : path.startsWith(source + sep) ? target + path.slice(source.length) : undefined;
      if (moved === undefined) continue;
      this.files.delete(path);
      this.files.set(moved, file);
      file.path = moved;
    }
  };

  readonly unlink = async (path: string): Promise<void> => {
    await this.call(() => this.base.unlink(path));
    this.detach(resolve(path));
  };

  readonly readdir = (path: string): Promise<string[]> => this.call(() => this.base.readdir(path));

  readonly mkdir = (path: string): Promise<void> => this.call(() => this.base.mkdir(path));

  // ---------------------------------------------------------------- for tests

  /**
   * Cuts the power: every unsynced change is lost, every later call fails with EIO (the process
   * would be dead), and once the calls in flight settle the real descriptors are closed. The real
   * files then hold exactly what a restart after a power cut would find.
   */
  async simulatePowerLoss(): Promise<void> {
    if (this.powerOff) return;
    this.powerOff = true;
    const files = new Set(this.files.values());
    for (const descriptor of this.descriptors.values()) if (descriptor.file !== undefined) files.add(descriptor.file);
    let lost = 0;
    for (const file of files) {
      lost += pendingBytesOf(file.pending);
      file.pending = [];
    }
    this.count('powerLosses', 1);
    this.count('bytesLostToPowerLoss', lost);
    await Promise.allSettled([...this.inflight]);
    const fds = [...this.descriptors.keys()];
    this.descriptors.clear();
    this.files.clear();
    for (const fd of fds) await this.base.close(fd).catch(() => {});
  }

  /** Bytes written and not yet synced, over every file. */
  pendingBytes(): number {
    const files = new Set(this.files.values());
    for (const descriptor of this.descriptors.values()) if (descriptor.file !== undefined) files.add(descriptor.file);
    let bytes = 0;
    for (const file of files) bytes += pendingBytesOf(file.pending);
    return bytes;
  }

  // ---------------------------------------------------------------- syncs

  private async sync(fd: number, syscall: 'fsync' | 'fdatasync'): Promise<void> {
    const faults = await this.faultsNow();
    this.checkPower();
    const file = this.descriptors.get(fd)?.file;
    if (file === undefined) return this.syncReal(fd, syscall, faults);
    // The changes made before this call are what it makes durable; later ones wait for the next.
    const covered = this.changeId;
    const run = file.syncing.then(async () => {
      try {
        if (faults.has('fsync-eio')) {
          this.count('bytesDroppedByFailedSync', pendingBytesOf(file.pending.filter((change) => change.id <= covered)));
        } else {
          await this.apply(file, fd, covered);
        }
        await this.syncReal(fd, syscall, faults);
      } finally {
        // Made durable, or dropped by a failed sync: they are pending no more either way.
        file.pending = file.pending.filter((change) => change.id > covered);
        this.forgetIfIdle(file);
      }
    });
    file.syncing = run.catch(() => {});
    return run;
  }

  private async syncReal(fd: number, syscall: 'fsync' | 'fdatasync', faults: ReadonlySet<string>): Promise<void> {
    if (faults.has('fsync-eio')) {
      this.count('fsyncEio', 1);
      throw fileSystemError('EIO', syscall);
    }
    await this.call(() => this.base[syscall](fd));
  }

  /** Writes the file's changes up to id `covered` to the real file, in order. */
  private async apply(file: FileState, fd: number, covered: number): Promise<void> {
    const changes = file.pending.filter((change) => change.id <= covered);
    if (changes.length === 0) return;
    // Through a writable descriptor: this one, another open on the file, or one opened for the
    // purpose (the file was written through a descriptor since closed). An unlinked file that no
    // descriptor holds cannot be read by anyone: its changes simply go.
    const writable = this.descriptors.get(fd)?.writable === true ? fd : [...file.fds].find((other) => this.descriptors.get(other)?.writable === true);
    let opened: number | undefined;
    if (writable === undefined) {
      const path = file.path;
      if (path === undefined) return;
      opened = await this.call(() => this.base.open(path, fs.constants.O_WRONLY), (late) => this.base.close(late));
    }
    const writer = writable ?? (opened as number);
    try {
      for (const change of changes) {
        if (change.kind === 'write') {
          await this.call(() => writeAll(this.base, writer, change.bytes, 0, change.bytes.length, change.position));
          this.count('bytesSynced', change.bytes.length);
        } else {
          await this.call(() => this.base.ftruncate(writer, change.length));
        }
      }
    } finally {
      if (opened !== undefined) await this.base.close(opened).catch(() => {});
    }
  }

  // ---------------------------------------------------------------- the control file

  /** The control file's faults, read again if the last reading is older than the interval. */
  private async faultsNow(): Promise<ReadonlySet<string>> {
    if (this.controlFile === undefined) return this.controlFaults;
    if (performance.now() - this.controlCheckedAtMs >= this.controlCheckIntervalMs) {
      this.controlCheck ??= this.readControlFile(this.controlFile).finally(() => {
        this.controlCheck = undefined;
      });
      await this.controlCheck;
    }
    return this.controlFaults;
  }

  private async readControlFile(path: string): Promise<void> {
    let words: Set<string> | undefined;
    try {
      const stats = await statPath(path);
      const signature = `${stats.ino}:${stats.size}:${stats.mtimeMs}:${stats.ctimeMs}`;
      if (signature !== this.controlSignature) {
        this.controlSignature = signature;
        words = new Set((await readFile(path, 'utf8')).split(/[\s,]+/).filter((word) => word !== ''));
      }
    } catch (error) {
      if ((error as { code?: unknown }).code === 'ENOENT') {
        this.controlSignature = '';
        words = new Set();
      } else {
        // Not a fault to inject: keep what was read last, and say so.
        this.warn(`Cannot read the fault control file ${path}: ${(error as Error).message}`);
      }
    }
    this.controlCheckedAtMs = performance.now();
    if (words === undefined) return;
    for (const word of words) {
      if ((controlWords as readonly string[]).includes(word) || this.unknownWordsWarned.has(word)) continue;
      this.unknownWordsWarned.add(word);
      this.warn(`Ignored "${word}" in the fault control file ${path}; the words are ${controlWords.join(', ')}`);
    }
    const before = [...this.controlFaults].sort().join(',');
    if ([...words].sort().join(',') !== before) this.count('controlChanges', 1);
    this.controlFaults = words;
  }

  // ---------------------------------------------------------------- helpers

  /** Runs a call of the base file system, unless the power is off; a result that arrives after the power went is refused. */
  private async call<T>(operation: () => Promise<T>, discardLate?: (value: T) => Promise<unknown>): Promise<T> {
    this.checkPower();
    const promise = operation();
    this.inflight.add(promise);
    let value: T;
    try {
      value = await promise;
    } finally {
      this.inflight.delete(promise);
    }
    if (this.powerOff) {
      if (discardLate !== undefined) await discardLate(value).catch(() => {});
      throw powerOffError();
    }
    return value;
  }

  private checkPower(): void {
    if (this.powerOff) throw powerOffError();
  }

  /** The file at `path` leaves the namespace (unlinked or replaced). */
  private detach(path: string): void {
    const file = this.files.get(path);
    if (file === undefined) return;
    this.files.delete(path);
    file.path = undefined;
  }

  private forgetIfIdle(file: FileState): void {
    if (file.fds.size > 0 || file.pending.length > 0 || file.path === undefined) return;
    if (this.files.get(file.path) === file) this.files.delete(file.path);
  }

  private count(counter: keyof FaultCounters, amount: number): void {
    this.counters[counter] += amount;
    totals[counter] += amount;
  }
}

function powerOffError(): Error {
  return Object.assign(new Error('EIO: i/o error (the fault file system lost power: simulatePowerLoss was called)'), { errno: -osConstants.errno.EIO, code: 'EIO' });
}

function checkRange(buffer: Uint8Array, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > buffer.length) {
    throw new RangeError(`The range [${offset}, ${offset + length}) is outside a buffer of ${buffer.length} bytes`);
  }
}
