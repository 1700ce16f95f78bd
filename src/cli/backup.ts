// `mainstay backup` and `mainstay restore`.
//
// backup: finds a server (the main preferred: the manager's GET /v1/cluster names it), streams its
// GET /v1/snapshot into FILE.partial while checking every chunk as it arrives, then fsyncs and
// renames it to FILE, so FILE exists only whole and verified. A progress bar goes to stderr when it
// is a terminal; the last line (stdout) names the seq, epoch, counts, size and checksum.
//
// restore: checks the whole file first, refuses a data directory that is not empty, then builds the
// directory under a temporary name beside it — the LMDB state at the backup's seq and epoch, an
// empty log that starts at seq + 1 with base epoch = the backup's epoch, and meta.json promising
// that epoch — and renames it into place, so a restore cut short leaves no directory a server
// would start from. A server started on it serves the backup's data; the manager of a new cluster
// must start above the backup's epoch (see the printed instructions).
//
// restore --log-archive DIR --to-seq N (point-in-time): the backup (at seq S) is rolled forward by
// the archived log entries S+1..N (log-archive.ts). The archive is planned from its file names and
// then read and checked whole before anything is written (checksums, no gap, every copy of a seq
// the same entry, epochs never going down from the backup's); then, after the backup is restored,
// the entries are applied through the servers' own state machine (KvState over the LMDB store),
// so the state is exactly a server's at N; the log starts at N + 1 and meta.json promises the
// epoch of entry N, which the new manager must start at (or above).

import { mkdir, open, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import process from 'node:process';
import { crc32 } from 'node:zlib';
import { assert } from '../lib/assert.ts';
import { KvState } from '../core/kv.ts';
import type { Epoch, LogEntry, Seq } from '../protocol/types.ts';
import { epoch as toEpoch, seq as toSeqBrand } from '../protocol/types.ts';
import { ConfigError, parseOptions, type OptionSpec } from '../runtime/config.ts';
import { backupContentType, snapshotHeaders, snapshotPath } from '../runtime/snapshot-http.ts';
import type { BackupProgress } from '../storage/backup-file.ts';
import { readBackupChunks, verifyBackupFile } from '../storage/backup-file.ts';
import type { BackupHeader, BackupSummary } from '../storage/backup-format.ts';
import { BackupDecoder, BackupFormatError, formatChecksum } from '../storage/backup-format.ts';
import { writeEmptyLogStart } from '../storage/file-log.ts';
import { openLmdbStore, writeRestoredStore } from '../storage/lmdb-store.ts';
import type { ArchiveFile } from '../storage/log-archive.ts';
import { ArchiveError, listArchive, planReplay, readArchivedEntries } from '../storage/log-archive.ts';

export interface CommandOutput {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
}

const defaultOutput = (): CommandOutput => ({ stdout: process.stdout, stderr: process.stderr });

/** How long a server may take to start answering, and to send the next bytes of a snapshot. */
const connectTimeoutMs = 10_000;
const idleTimeoutMs = 60_000;
/** How often the progress bar is redrawn. */
const progressEveryMs = 100;

const backupOptions: OptionSpec[] = [
  { name: 'out', type: 'string', required: true, description: 'The backup file to write (written as FILE.partial, renamed when whole).' },
  { name: 'endpoint', type: 'string', default: 'http://127.0.0.1:7000', description: 'Manager or server URL(s), comma separated.' },
  { name: 'force', type: 'boolean', default: false, description: 'Replace FILE if it exists.' },
  { name: 'json', type: 'boolean', default: false, description: 'Print the result as JSON.' },
];

const restoreOptions: OptionSpec[] = [
  { name: 'in', type: 'string', required: true, description: 'The backup file to restore.' },
  { name: 'data-dir', type: 'string', description: 'The new server data directory (default data/<id>); it must not exist or be empty.' },
  { name: 'id', type: 'string', description: 'The id of the server that will run on the data directory.' },
  { name: 'log-archive', type: 'string', description: 'The servers\' --log-archive-dir (every subfolder is read): roll the backup forward from it to --to-seq.' },
  { name: 'to-seq', type: 'integer', min: 0, max: Number.MAX_SAFE_INTEGER, description: 'The seq to restore to, at or after the backup\'s (with --log-archive).' },
  { name: 'sessions-max', type: 'integer', default: 100_000, min: 1, max: 100_000_000, description: 'The servers\' --sessions-max, which the roll-forward must apply entries with.' },
  { name: 'json', type: 'boolean', default: false, description: 'Print the result as JSON.' },
];

export const backupUsage = 'mainstay backup --out FILE [--endpoint URL] [--force]';
export const restoreUsage = 'mainstay restore --in FILE (--data-dir DIR | --id ID) [--log-archive DIR --to-seq N]';

// ---------------------------------------------------------------- progress

function formatMegabytes(bytes: number): string {
  return `${(bytes / 1_048_576).toFixed(1)} MB`;
}

/** A one-line progress bar on a terminal, redrawn in place; silent elsewhere. */
class ProgressBar {
  private readonly started = performance.now();
  private lastDrawMs = -Infinity;
  private drawn = false;

  constructor(private readonly output: CommandOutput['stderr'], private readonly verb: string) {}

  update(progress: BackupProgress, force = false): void {
    if (!this.due(force)) return;
    const total = progress.header?.keyCount ?? 0;
    const fraction = total === 0 ? (progress.header === undefined ? 0 : 1) : Math.min(1, progress.keysRead / total);
    const rate = `${(progress.bytesRead / 1_048_576 / this.seconds()).toFixed(1)} MB/s`;
    this.draw(fraction, `${this.verb} ${progress.keysRead.toLocaleString('en-US')}/${total.toLocaleString('en-US')} keys  ${formatMegabytes(progress.bytesRead)}  ${rate}`);
  }

  /** Progress through log entries: `done` of `total`, the last one at seq `atSeq`. */
  updateEntries(done: number, total: number, atSeq: number, force = false): void {
    if (!this.due(force)) return;
    const fraction = total === 0 ? 1 : Math.min(1, done / total);
    const rate = `${Math.round(done / this.seconds()).toLocaleString('en-US')} entries/s`;
    this.draw(fraction, `${this.verb} ${done.toLocaleString('en-US')}/${total.toLocaleString('en-US')} entries  seq ${atSeq}  ${rate}`);
  }

  /** Whether to redraw now: on a terminal, at most every progressEveryMs unless forced. */
  private due(force: boolean): boolean {
    if (this.output.isTTY !== true) return false;
    const now = performance.now();
    if (!force && now - this.lastDrawMs < progressEveryMs) return false;
    this.lastDrawMs = now;
    return true;
  }

  private seconds(): number {
    return Math.max((performance.now() - this.started) / 1000, 0.001);
  }

  private draw(fraction: number, text: string): void {
    const width = Math.max(10, Math.min(40, (this.output.columns ?? 80) - text.length - 10));
    const filled = Math.round(fraction * width);
    this.output.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}%  ${text}\u001b[K`);
    this.drawn = true;
  }

  /** Draws the final state (if given) and ends the line. */
  finish(final?: BackupSummary): void {
    if (final !== undefined) this.update({ header: final.header, keysRead: final.header.keyCount, bytesRead: final.totalBytes }, true);
    if (this.drawn) this.output.write('\n');
    this.drawn = false;
  }
}

// ---------------------------------------------------------------- backup

export interface BackupResult {
  file: string;
  server: string;
  seq: number;
  epoch: number;
  keys: number;
  sessions: number;
  bytes: number;
  checksum: string;
  createdAt: string;
  seconds: number;
}

interface ClusterView {
  main: string | null;
  map?: { main: string | null; members: { id: string; address: string }[] } | null;
  servers?: { id: string; address: string; health?: string }[];
}

interface ServerStatusView {
  id: string;
  map: { main: string | null; members: { id: string; address: string }[] } | null;
}

async function getJson(url: URL): Promise<{ status: number; body: unknown }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(3000) });
  const text = await response.text();
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  return { status: response.status, body };
}

/**
 * The servers to ask for a snapshot, best first: the main, then the others the manager (or a
 * server's map) lists, the servers reporting up first. An endpoint that is a server comes last.
 */
async function snapshotCandidates(endpoints: string[]): Promise<{ candidates: { id: string; url: string }[]; problems: string[] }> {
  const problems: string[] = [];
  const candidates: { id: string; url: string; rank: number }[] = [];
  const add = (id: string, url: string, rank: number): void => {
    const existing = candidates.find((candidate) => candidate.url === url);
    if (existing !== undefined) existing.rank = Math.min(existing.rank, rank);
    else candidates.push({ id, url, rank });
  };
  for (const endpoint of endpoints) {
    try {
      const cluster = await getJson(new URL('/v1/cluster', endpoint));
      const view = cluster.body as ClusterView | undefined;
      if (cluster.status === 200 && view !== undefined && Array.isArray(view.servers)) {
        const main = view.main ?? view.map?.main ?? null;
        for (const server of view.servers) add(server.id, server.address, server.id === main ? 0 : server.health === 'up' ? 1 : 2);
        continue;
      }
      const status = await getJson(new URL('/v1/status', endpoint));
      const server = status.body as ServerStatusView | undefined;
      if (status.status === 200 && server !== undefined && typeof server.id === 'string') {
        const main = server.map?.main ?? null;
        for (const member of server.map?.members ?? []) add(member.id, member.address, member.id === main ? 0 : 1);
        add(server.id, new URL(endpoint).origin, main === server.id ? 0 : 3);
        continue;
      }
      problems.push(`${endpoint} is neither a Mainstay manager nor a server (it answered ${cluster.status} to /v1/cluster and ${status.status} to /v1/status)`);
    } catch (error) {
      problems.push(`${endpoint}: ${(error as Error).message}`);
    }
  }
  candidates.sort((a, b) => a.rank - b.rank);
  return { candidates: candidates.map(({ id, url }) => ({ id, url })), problems };
}

/** Streams /v1/snapshot of `server` into `partial`, checking it as it arrives. */
async function downloadSnapshot(server: { id: string; url: string }, partial: string, progress: ProgressBar): Promise<BackupSummary> {
  const controller = new AbortController();
  let idle = setTimeout(() => controller.abort(new Error(`${server.id} did not answer within ${connectTimeoutMs} ms`)), connectTimeoutMs);
  const file = await open(partial, 'w');
  try {
    const response = await fetch(new URL(snapshotPath, server.url), { signal: controller.signal });
    if (response.status !== 200) {
      const text = await response.text().catch(() => '');
      let message = text.trim();
      try {
        message = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? message;
      } catch {
        // Not JSON: keep the text.
      }
      throw new Error(`${server.id} (${server.url}) answered ${response.status} to GET ${snapshotPath}: ${message || 'no explanation'}`);
    }
    const contentType = response.headers.get('content-type') ?? '';
    if (!contentType.startsWith(backupContentType)) throw new Error(`${server.id} (${server.url}) answered with ${contentType || 'no content type'}, not a backup`);
    if (response.body === null) throw new Error(`${server.id} sent no body`);
    const decoder = new BackupDecoder(crc32);
    let position = 0;
    for await (const piece of response.body) {
      clearTimeout(idle);
      idle = setTimeout(() => controller.abort(new Error(`${server.id} sent nothing for ${idleTimeoutMs / 1000} s`)), idleTimeoutMs);
      // Checked before written: a damaged chunk never reaches the file.
      decoder.push(piece);
      let written = 0;
      while (written < piece.length) written += (await file.write(piece, written, piece.length - written, position + written)).bytesWritten;
      position += piece.length;
      progress.update({ header: decoder.header, keysRead: decoder.keysRead, bytesRead: decoder.bytesRead });
    }
    const summary = decoder.end();
    const headerSeq = response.headers.get(snapshotHeaders.seq);
    if (headerSeq !== null && Number(headerSeq) !== summary.header.seq) {
      throw new Error(`${server.id} announced seq ${headerSeq} but sent a snapshot at seq ${summary.header.seq}`);
    }
    await file.sync();
    return summary;
  } finally {
    clearTimeout(idle);
    await file.close();
  }
}

/** Makes a rename in `directory` durable. */
async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

/** `mainstay backup`: returns what it wrote; throws (with a message for the operator) on failure. */
export async function runBackup(argv: string[], io: CommandOutput = defaultOutput()): Promise<BackupResult> {
  const options = parseOptions(backupOptions, argv, process.env);
  const file = resolve(String(options.out));
  const partial = `${file}.partial`;
  const endpoints = String(options.endpoint).split(',').map((item) => item.trim()).filter((item) => item !== '');
  if (endpoints.length === 0) throw new ConfigError(`Usage: ${backupUsage}`);
  if (options.force !== true && await exists(file)) throw new ConfigError(`${file} exists; choose another name, or pass --force to replace it`);
  if (!await exists(dirname(file))) throw new ConfigError(`Cannot write ${file}: the folder ${dirname(file)} does not exist`);

  const { candidates, problems } = await snapshotCandidates(endpoints);
  if (candidates.length === 0) {
    throw new Error(`Cannot find a server to back up from ${endpoints.join(', ')}: ${problems.join('; ') || 'no server is listed'}. Is the cluster running?`);
  }
  const started = performance.now();
  for (const candidate of candidates) {
    const progress = new ProgressBar(io.stderr, `Backing up from ${candidate.id}:`);
    let summary: BackupSummary;
    try {
      summary = await downloadSnapshot(candidate, partial, progress);
    } catch (error) {
      progress.finish();
      await rm(partial, { force: true });
      const message = (error as Error).message;
      // A server that cannot be reached or refuses: try the next one. A stream that broke or
      // failed its checks mid-way is worth reporting as it is.
      problems.push(`${candidate.id}: ${message}`);
      if (error instanceof BackupFormatError) throw new Error(`The backup from ${candidate.id} (${candidate.url}) is not valid, so it was not kept: ${message}`, { cause: error });
      io.stderr.write(`mainstay: ${candidate.id} could not be backed up from (${message}); trying the next server\n`);
      continue;
    }
    progress.finish(summary);
    await rename(partial, file);
    await syncDirectory(dirname(file));
    const result: BackupResult = {
      file, server: candidate.id, seq: summary.header.seq, epoch: summary.header.epoch, keys: summary.header.keyCount,
      sessions: summary.header.sessionCount, bytes: summary.totalBytes, checksum: formatChecksum(summary.trailer.fileChecksum),
      createdAt: new Date(summary.header.createdAtMs).toISOString(), seconds: (performance.now() - started) / 1000,
    };
    io.stdout.write(options.json === true ? `${JSON.stringify(result)}\n`
      : `Backed up ${result.keys.toLocaleString('en-US')} keys and ${result.sessions.toLocaleString('en-US')} sessions from ${result.server} at seq ${result.seq}, `
        + `epoch ${result.epoch}: ${formatMegabytes(result.bytes)} (${result.bytes} bytes) in ${result.seconds.toFixed(1)} s, ${result.checksum}, to ${file}\n`);
    return result;
  }
  throw new Error(`Cannot back up: no server could send a snapshot (${problems.join('; ')})`);
}

// ---------------------------------------------------------------- restore

export interface RestoreResult {
  dataDir: string;
  /** The seq and epoch the restored state is at: the backup's, or --to-seq and its entry's epoch. */
  seq: number;
  epoch: number;
  /** Keys and client sessions in the restored state. */
  keys: number;
  sessions: number;
  /** The backup file's checksum. */
  checksum: string;
  /** The seq and epoch of the backup itself. */
  backupSeq: number;
  backupEpoch: number;
  /** Entries applied from the log archive on top of the backup (0 without --to-seq). */
  replayedEntries: number;
  /** The seq the restored log starts at (seq + 1). */
  logFirstSeq: number;
  /** The lowest --initial-epoch a new cluster's manager may start with. */
  managerInitialEpochMin: number;
}

/** Where the directory is built before it is renamed into place. */
function stagingDirectory(dataDir: string): string {
  return join(dirname(dataDir), `.${basename(dataDir)}.restoring-${process.pid}`);
}

async function isEmptyOrMissing(directory: string): Promise<boolean> {
  try {
    return (await readdir(directory)).length === 0;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return true;
    if (code === 'ENOTDIR') return false;
    throw error;
  }
}

/** Entries applied to the store in one batch (one LMDB transaction at most), and batches in flight. */
const replayBatchEntriesMax = 1024;
const replayBatchesInflightMax = 8;

/** What a restore rolls forward: the archive's files holding fromSeq..toSeq. */
interface ReplayPlan {
  archive: string;
  files: ArchiveFile[];
  fromSeq: Seq;
  toSeq: Seq;
}

/**
 * Plans rolling the backup (at backupSeq) forward to toSeq from the archive under `archive`; throws
 * an error for the operator if it cannot. Undefined when there is nothing to roll forward.
 */
async function planRollForward(archive: string, backupSeq: number, toSeq: number): Promise<ReplayPlan | undefined> {
  if (toSeq < backupSeq) throw new ConfigError(`Cannot restore to seq ${toSeq}: the backup is at seq ${backupSeq}; restore to a seq at or after it`);
  if (toSeq === backupSeq) return undefined;
  let files: ArchiveFile[];
  try {
    files = await listArchive(archive);
  } catch (error) {
    throw new ConfigError(`Cannot read the log archive ${archive}: ${(error as Error).message}`);
  }
  const fromSeq = toSeqBrand(backupSeq + 1);
  try {
    return { archive, files: planReplay(files, fromSeq, toSeqBrand(toSeq)), fromSeq, toSeq: toSeqBrand(toSeq) };
  } catch (error) {
    if (!(error instanceof ArchiveError)) throw error;
    throw new Error(`Cannot restore to seq ${toSeq} from the log archive ${archive}: ${error.message}`, { cause: error });
  }
}

/** Reads every entry the plan covers, checking them, without applying anything. */
async function checkRollForward(plan: ReplayPlan, baseEpoch: Epoch, progress: ProgressBar): Promise<void> {
  const total = plan.toSeq - plan.fromSeq + 1;
  let done = 0;
  try {
    for await (const batch of readArchivedEntries(plan.files, plan.fromSeq, plan.toSeq, { checksum: crc32, baseEpoch, batchEntriesMax: replayBatchEntriesMax })) {
      done += batch.length;
      progress.updateEntries(done, total, (batch.at(-1) as LogEntry).seq);
    }
  } catch (error) {
    if (!(error instanceof ArchiveError)) throw error;
    throw new Error(`Cannot restore to seq ${plan.toSeq} from the log archive ${plan.archive}: ${error.message}`, { cause: error });
  }
  progress.updateEntries(done, total, plan.toSeq, true);
}

/**
 * Applies the plan's entries to the restored store at `statePath` through the servers' own state
 * machine (KvState over the LMDB store), durably. Returns the position reached and the counts.
 */
async function rollForward(statePath: string, plan: ReplayPlan, baseEpoch: Epoch, sessionsMax: number, progress: ProgressBar): Promise<{ epoch: Epoch; keys: number; sessions: number }> {
  const store = await openLmdbStore(statePath);
  try {
    assert(store.appliedSeq() === plan.fromSeq - 1, `the restored state is at seq ${store.appliedSeq()}, not ${plan.fromSeq - 1}`);
    const state = new KvState(store, { sessionsMax });
    const total = plan.toSeq - plan.fromSeq + 1;
    let done = 0;
    for await (const batch of readArchivedEntries(plan.files, plan.fromSeq, plan.toSeq, { checksum: crc32, baseEpoch, batchEntriesMax: replayBatchEntriesMax })) {
      state.apply(batch);
      done += batch.length;
      progress.updateEntries(done, total, state.appliedSeq);
      // LMDB commits in the background: bound what waits for it.
      if (store.pendingBatchCount >= replayBatchesInflightMax) await store.committed();
    }
    progress.updateEntries(done, total, state.appliedSeq, true);
    assert(state.appliedSeq === plan.toSeq, `the roll-forward stopped at seq ${state.appliedSeq}, not ${plan.toSeq}`);
    await store.flushed();
    const snapshot = store.openSnapshot();
    try {
      return { epoch: store.appliedEpoch(), keys: snapshot.keyCount, sessions: snapshot.sessionCount };
    } finally {
      snapshot.close();
    }
  } finally {
    await store.close();
  }
}

/** `mainstay restore`: returns what it restored; throws (with a message for the operator) on failure. */
export async function runRestore(argv: string[], io: CommandOutput = defaultOutput()): Promise<RestoreResult> {
  const options = parseOptions(restoreOptions, argv, process.env);
  const input = resolve(String(options.in));
  const id = options.id === undefined ? undefined : String(options.id);
  if (options['data-dir'] === undefined && id === undefined) throw new ConfigError(`Usage: ${restoreUsage}`);
  if ((options['log-archive'] === undefined) !== (options['to-seq'] === undefined)) {
    throw new ConfigError(`--log-archive and --to-seq go together (usage: ${restoreUsage})`);
  }
  const archive = options['log-archive'] === undefined ? undefined : resolve(String(options['log-archive']));
  const targetSeq = options['to-seq'] === undefined ? undefined : Number(options['to-seq']);
  const dataDir = resolve(options['data-dir'] === undefined ? `data/${id as string}` : String(options['data-dir']));
  if (!await exists(input)) throw new ConfigError(`Cannot read ${input}: there is no such file`);
  if (archive !== undefined && !await exists(archive)) throw new ConfigError(`Cannot read the log archive ${archive}: there is no such folder`);
  if (!await isEmptyOrMissing(dataDir)) {
    throw new ConfigError(`Cannot restore into ${dataDir}: it is not empty. Restore into a new data directory (or empty this one first).`);
  }

  // First the whole file is checked, so nothing is written from a file that turns out damaged.
  const checking = new ProgressBar(io.stderr, 'Checking:');
  let summary: BackupSummary;
  try {
    summary = await verifyBackupFile(input, (progress) => checking.update(progress));
  } catch (error) {
    checking.finish();
    throw error;
  }
  checking.finish(summary);
  const { header } = summary;
  const backupPosition = { seq: toSeqBrand(header.seq), epoch: toEpoch(header.epoch) };

  // Then the archive, likewise: the entries to roll forward are all there, intact and agreed.
  const plan = archive === undefined || targetSeq === undefined ? undefined : await planRollForward(archive, header.seq, targetSeq);
  if (plan !== undefined) {
    const checkingArchive = new ProgressBar(io.stderr, 'Checking the archive:');
    try {
      await checkRollForward(plan, backupPosition.epoch, checkingArchive);
    } finally {
      checkingArchive.finish();
    }
  }

  const staging = stagingDirectory(dataDir);
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  const writing = new ProgressBar(io.stderr, 'Restoring:');
  const replaying = new ProgressBar(io.stderr, 'Rolling forward:');
  let reached: { seq: Seq; epoch: Epoch; keys: number; sessions: number };
  try {
    let fileHeader: BackupHeader | undefined;
    const chunks = readBackupChunks(input, {
      onHeader: (read) => { fileHeader = read; },
      onProgress: (progress) => writing.update(progress),
    });
    const statePath = join(staging, 'state');
    const counts = await writeRestoredStore(statePath, chunks, backupPosition);
    writing.finish(summary);
    if (fileHeader?.seq !== header.seq || counts.keys !== header.keyCount || counts.sessions !== header.sessionCount) {
      throw new Error(`${input} changed while it was being restored; restore again from a file nobody writes`);
    }
    reached = { ...backupPosition, ...counts };
    if (plan !== undefined) {
      try {
        reached = { seq: plan.toSeq, ...await rollForward(statePath, plan, backupPosition.epoch, Number(options['sessions-max']), replaying) };
      } catch (error) {
        if (!(error instanceof ArchiveError)) throw error;
        throw new Error(`Cannot restore to seq ${plan.toSeq} from the log archive ${plan.archive}: ${error.message}`, { cause: error });
      } finally {
        replaying.finish();
      }
    }
    // The log starts right after the state; the server promises the epoch of its last entry.
    await writeEmptyLogStart(staging, { firstSeq: toSeqBrand(reached.seq + 1), baseEpoch: reached.epoch }, { promisedEpoch: reached.epoch, incomplete: false });
    await mkdir(dirname(dataDir), { recursive: true });
    if (await exists(dataDir)) await rmdir(dataDir);
    await rename(staging, dataDir);
    await syncDirectory(dirname(dataDir));
  } catch (error) {
    writing.finish();
    await rm(staging, { recursive: true, force: true });
    throw error;
  }

  const result: RestoreResult = {
    dataDir, seq: reached.seq, epoch: reached.epoch, keys: reached.keys, sessions: reached.sessions,
    checksum: formatChecksum(summary.trailer.fileChecksum), backupSeq: header.seq, backupEpoch: header.epoch,
    replayedEntries: reached.seq - header.seq, logFirstSeq: reached.seq + 1, managerInitialEpochMin: reached.epoch,
  };
  if (options.json === true) {
    io.stdout.write(`${JSON.stringify(result)}\n`);
  } else {
    const server = id ?? '<id>';
    const source = plan === undefined
      ? `(${result.checksum})`
      : `(the backup at seq ${result.backupSeq}, epoch ${result.backupEpoch}, ${result.checksum}, rolled forward by ${result.replayedEntries.toLocaleString('en-US')} entries from ${plan.archive})`;
    const again = plan === undefined ? 'the same file' : `the same file and archive, with --to-seq ${result.seq},`;
    io.stdout.write([
      `Restored ${result.keys.toLocaleString('en-US')} keys and ${result.sessions.toLocaleString('en-US')} sessions at seq ${result.seq}, epoch ${result.epoch} ${source} into ${dataDir}.`,
      'Next:',
      `  1. Restore ${again} into the data directory of every server of the new cluster (each with its own --id).`,
      `  2. Start each server:  mainstay server --id ${server} --data-dir ${dataDir} ...`,
      `  3. Start the new cluster's manager with a fresh --data-dir and --initial-epoch ${result.managerInitialEpochMin}, so that its first epoch is above ${result.epoch}.`,
      '',
    ].join('\n'));
  }
  return result;
}
