// The file-system calls the file log and its lock make, behind a small facade so tests can inject
// faults (an fdatasync that fails with EIO, a write that fails with ENOSPC) and count calls. The
// default implementation is node:fs, file descriptors and positional reads and writes.

import * as fs from 'node:fs';

export interface FileStat {
  size: number;
  mtimeMs: number;
}

export interface LogFileSystem {
  open(path: string, flags: number, mode?: number): Promise<number>;
  close(fd: number): Promise<void>;
  /** Reads at `position`; returns the bytes read (0 at the end of the file). */
  read(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Writes at `position`; returns the bytes written, which may be fewer than asked. */
  write(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  fdatasync(fd: number): Promise<void>;
  fsync(fd: number): Promise<void>;
  ftruncate(fd: number, length: number): Promise<void>;
  fstat(fd: number): Promise<FileStat>;
  stat(path: string): Promise<FileStat>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  readdir(path: string): Promise<string[]>;
  /** Creates the directory and its parents; succeeds if it exists. */
  mkdir(path: string): Promise<void>;
}

export const openFlags = {
  readOnly: fs.constants.O_RDONLY,
  readWrite: fs.constants.O_RDWR,
  directory: fs.constants.O_RDONLY | fs.constants.O_DIRECTORY,
  createNew: fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL,
  createNewWriteOnly: fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
  replace: fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC,
} as const;

function settle<T>(resolve: (value: T) => void, reject: (error: Error) => void): (error: Error | null, value: T) => void {
  return (error, value) => (error === null ? resolve(value) : reject(error));
}

function done(resolve: () => void, reject: (error: Error) => void): (error: Error | null) => void {
  return (error) => (error === null ? resolve() : reject(error));
}

export const nodeFileSystem: LogFileSystem = {
  open: (path, flags, mode = 0o644) => new Promise((resolve, reject) => fs.open(path, flags, mode, settle(resolve, reject))),
  close: (fd) => new Promise((resolve, reject) => fs.close(fd, done(resolve, reject))),
  read: (fd, buffer, offset, length, position) =>
    new Promise((resolve, reject) => fs.read(fd, buffer, offset, length, position, settle(resolve, reject))),
  // Synchronous: a write lands in the page cache in microseconds, less than a trip through the
  // thread pool costs (the fdatasync after it, which waits for the disk, stays asynchronous).
  write: async (fd, buffer, offset, length, position) => fs.writeSync(fd, buffer, offset, length, position),
  fdatasync: (fd) => new Promise((resolve, reject) => fs.fdatasync(fd, done(resolve, reject))),
  fsync: (fd) => new Promise((resolve, reject) => fs.fsync(fd, done(resolve, reject))),
  ftruncate: (fd, length) => new Promise((resolve, reject) => fs.ftruncate(fd, length, done(resolve, reject))),
  fstat: (fd) => new Promise((resolve, reject) => fs.fstat(fd, (error, stats) => (error === null ? resolve({ size: stats.size, mtimeMs: stats.mtimeMs }) : reject(error)))),
  stat: (path) => new Promise((resolve, reject) => fs.stat(path, (error, stats) => (error === null ? resolve({ size: stats.size, mtimeMs: stats.mtimeMs }) : reject(error)))),
  rename: (from, to) => new Promise((resolve, reject) => fs.rename(from, to, done(resolve, reject))),
  unlink: (path) => new Promise((resolve, reject) => fs.unlink(path, done(resolve, reject))),
  readdir: (path) => new Promise((resolve, reject) => fs.readdir(path, settle(resolve, reject))),
  mkdir: (path) => new Promise((resolve, reject) => fs.mkdir(path, { recursive: true }, (error) => (error === null ? resolve() : reject(error)))),
};

/** The error code of a failed file-system call (ENOENT, EEXIST, EIO …), if it has one. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('code' in error)) return undefined;
  return typeof error.code === 'string' ? error.code : undefined;
}

/** Writes all of buffer[start, end) at `position`, looping over short writes. */
export async function writeAll(fileSystem: LogFileSystem, fd: number, buffer: Uint8Array, start: number, end: number, position: number): Promise<void> {
  let offset = start;
  while (offset < end) {
    const written = await fileSystem.write(fd, buffer, offset, end - offset, position + (offset - start));
    if (written <= 0) throw new Error(`A write of ${end - offset} bytes wrote nothing`);
    offset += written;
  }
}

/** Reads the first `length` bytes of a file, looping over short reads. */
export async function readAll(fileSystem: LogFileSystem, fd: number, length: number): Promise<Uint8Array> {
  const buffer = Buffer.allocUnsafe(length);
  let offset = 0;
  while (offset < length) {
    const read = await fileSystem.read(fd, buffer, offset, length - offset, offset);
    if (read === 0) throw new Error(`The file ended after ${offset} of ${length} bytes`);
    offset += read;
  }
  return buffer;
}

/** Reads a whole file with one read (for files that do not change meanwhile). */
export async function readWholeFile(fileSystem: LogFileSystem, path: string): Promise<Uint8Array> {
  const fd = await fileSystem.open(path, openFlags.readOnly);
  try {
    const { size } = await fileSystem.fstat(fd);
    return await readAll(fileSystem, fd, size);
  } finally {
    await fileSystem.close(fd);
  }
}
