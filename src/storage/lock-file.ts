// The lock that keeps two processes from sharing a data directory: a `LOCK` file created with
// O_EXCL that holds the owner's pid. A lock whose pid no longer runs is stale (its owner crashed)
// and is taken over, with a warning. Node has no flock(2); the pid check is the portable stand-in.

import { join } from 'node:path';
import type { LogFileSystem } from './file-log-system.ts';
import { errorCode, openFlags, readWholeFile, writeAll } from './file-log-system.ts';

export const lockFileName = 'LOCK';
/** A LOCK file without a pid younger than this may be one another process is just writing. */
export const lockCreationGraceMs = 10_000;

export class DirectoryLockedError extends Error {
  override name = 'DirectoryLockedError';
  readonly code = 'DIRECTORY_LOCKED';

  constructor(message: string, readonly ownerPid: number | undefined) {
    super(message);
  }
}

export interface DirectoryLock {
  readonly path: string;
  /** Removes the LOCK file if it is still ours. */
  release(): Promise<void>;
}

/** Is a process with this pid running (one we may not signal counts as running)? */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errorCode(error) === 'EPERM';
  }
}

function parsePid(bytes: Uint8Array): number | undefined {
  const text = new TextDecoder().decode(bytes).trim();
  if (!/^[0-9]{1,10}$/.test(text)) return undefined;
  const pid = Number(text);
  return pid > 0 ? pid : undefined;
}

/**
 * Takes the lock of `dataDir` for this process. Rejects with DirectoryLockedError, naming the pid,
 * if a running process holds it; takes over a stale lock and says so in `warnings`.
 */
export async function acquireDirectoryLock(fileSystem: LogFileSystem, dataDir: string, warnings: string[], nowMs: number): Promise<DirectoryLock> {
  const path = join(dataDir, lockFileName);
  const content = new TextEncoder().encode(`${process.pid}\n`);
  // Two rounds: a stale lock taken over in the first, then created; a second failure means
  // another process won the race to take it over.
  for (let round = 0; round < 2; round++) {
    let fd: number;
    try {
      fd = await fileSystem.open(path, openFlags.createNewWriteOnly, 0o644);
    } catch (error) {
      if (errorCode(error) !== 'EEXIST') throw error;
      await takeOverIfStale(fileSystem, dataDir, path, warnings, nowMs);
      continue;
    }
    try {
      await writeAll(fileSystem, fd, content, 0, content.length, 0);
    } catch (error) {
      // An empty lock (a full disk) would keep every later start out for the grace period:
      // take it away again and report the write's failure.
      await fileSystem.close(fd).catch(() => {});
      await fileSystem.unlink(path).catch(() => {});
      throw error;
    }
    await fileSystem.close(fd);
    return { path, release: () => releaseLock(fileSystem, path) };
  }
  throw new DirectoryLockedError(`Cannot lock the data directory ${dataDir}: another process took its lock at the same time`, undefined);
}

async function takeOverIfStale(fileSystem: LogFileSystem, dataDir: string, path: string, warnings: string[], nowMs: number): Promise<void> {
  let seen: Uint8Array;
  try {
    seen = await readWholeFile(fileSystem, path);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return; // Released meanwhile: try to create it again.
    throw error;
  }
  const pid = parsePid(seen);
  if (pid === undefined) {
    const { mtimeMs } = await fileSystem.stat(path);
    if (nowMs - mtimeMs < lockCreationGraceMs) {
      throw new DirectoryLockedError(`The data directory ${dataDir} is being locked by another process (its LOCK file holds no pid yet)`, undefined);
    }
  } else if (isProcessAlive(pid)) {
    const who = pid === process.pid ? `this process (pid ${pid})` : `process ${pid}`;
    throw new DirectoryLockedError(`The data directory ${dataDir} is in use by ${who}: its LOCK file holds that pid. Stop that process first.`, pid);
  }
  // Move the stale lock aside, then check it is the one we judged: a process that took it over
  // between our read and our rename would otherwise lose its lock to us.
  const aside = `${path}.stale-${process.pid}`;
  try {
    await fileSystem.rename(path, aside);
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return;
    throw error;
  }
  const moved = await readWholeFile(fileSystem, aside);
  if (!sameBytes(moved, seen)) {
    await fileSystem.rename(aside, path);
    throw new DirectoryLockedError(`Cannot lock the data directory ${dataDir}: another process is taking over its stale lock`, parsePid(moved));
  }
  await fileSystem.unlink(aside);
  warnings.push(pid === undefined
    ? `Took over the lock of ${dataDir}: its LOCK file held no pid and is older than ${lockCreationGraceMs} ms`
    : `Took over the stale lock of ${dataDir}: process ${pid}, which held it, is no longer running`);
}

async function releaseLock(fileSystem: LogFileSystem, path: string): Promise<void> {
  try {
    const pid = parsePid(await readWholeFile(fileSystem, path));
    if (pid === process.pid) await fileSystem.unlink(path);
  } catch (error) {
    if (errorCode(error) !== 'ENOENT') throw error;
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
