// `node --import tsx scripts/bench-backup.ts [--keys N] [--value-bytes B] [--sessions N] [--servers S]
// [--ack-quorum K] [--writers W] [--warmup-writes N] [--writes-per-writer-max N]
// [--writers-seconds-max N] [--request-timeout-ms N] [--keep]`: a backup of a large state taken
// while writes go on, restored, and checked key by key against the state at the backup's seq.
//
// It builds a data directory as a server at seq N would leave it — N keys of B-byte values in the
// LMDB state, some client sessions, an empty log starting at N + 1 — copies it for every server,
// and starts a real cluster on loopback (a manager with --initial-epoch, as after a restore, and
// S servers). W writers, each one HTTP request in flight with its own client session, overwrite
// loaded keys, add keys and delete keys; once they have warmed up, `mainstay backup` runs, and the
// writers stop only after it has finished. Every acknowledged write is recorded with the seq the
// main returned for it. A write whose outcome is unknown (a timeout, a broken connection) is
// retried with the same session request id, which the main applies exactly once and answers with
// the seq the write took effect at; one that stays unknown makes the check inexact, which the
// bench reports as a failure. Then `mainstay restore` writes a new data directory, and the bench
// opens it and compares it, key by key and session by session, with the expected state at the
// backup's seq: the initial load plus every acknowledged write with seq <= the backup's seq, in
// seq order. It exits non-zero on any mismatch. BENCH_PLANT_MISMATCH=1 alters one expected value
// in memory, to show that the check catches a difference.

import { spawn, type ChildProcess } from 'node:child_process';
import { cp, mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { runBackup, runRestore, type BackupResult } from '../src/cli/backup.ts';
import type { SessionRecord, StoredValue } from '../src/core/kv.ts';
import { Random } from '../src/lib/random.ts';
import { epoch, seq } from '../src/protocol/types.ts';
import { writeEmptyLogStart } from '../src/storage/file-log.ts';
import { openLmdbStore } from '../src/storage/lmdb-store.ts';
import { freePorts, http, sleep, waitFor } from '../test/harness.ts';

const { values } = parseArgs({ options: {
  keys: { type: 'string', default: '1000000' },
  'value-bytes': { type: 'string', default: '100' },
  sessions: { type: 'string', default: '1000' },
  servers: { type: 'string', default: '3' },
  'ack-quorum': { type: 'string', default: '1' },
  writers: { type: 'string', default: '8' },
  'warmup-writes': { type: 'string', default: '2000' },
  'writes-per-writer-max': { type: 'string', default: '200000' },
  'writers-seconds-max': { type: 'string', default: '600' },
  'request-timeout-ms': { type: 'string', default: '10000' },
  keep: { type: 'boolean', default: false },
} });
const keyCount = Number(values.keys);
const valueBytes = Number(values['value-bytes']);
const sessionCount = Number(values.sessions);
const serverCount = Number(values.servers);
const ackQuorum = Number(values['ack-quorum']);
const writerCount = Number(values.writers);
const warmupWrites = Number(values['warmup-writes']);
/** Bounds on the writers, besides "stop once the backup has finished": writes each, and time. */
const writesPerWriterMax = Number(values['writes-per-writer-max']);
const writersSecondsMax = Number(values['writers-seconds-max']);
/**
 * One HTTP attempt; by default longer than the server's write timeout (5 s), which answers 504
 * first. A short one makes outcomes unknown on purpose, to exercise their resolution.
 */
const requestTimeoutMs = Number(values['request-timeout-ms']);
const plantMismatch = process.env.BENCH_PLANT_MISMATCH === '1';
for (const [name, value, min] of [['keys', keyCount, 1], ['value-bytes', valueBytes, 1], ['sessions', sessionCount, 0], ['servers', serverCount, 1],
  ['ack-quorum', ackQuorum, 0], ['writers', writerCount, 1], ['warmup-writes', warmupWrites, 1], ['writes-per-writer-max', writesPerWriterMax, 1],
  ['writers-seconds-max', writersSecondsMax, 1], ['request-timeout-ms', requestTimeoutMs, 1]] as const) {
  if (!Number.isSafeInteger(value) || value < min) throw new Error(`--${name} must be a whole number, at least ${min} (got ${value})`);
}
if (ackQuorum > serverCount - 1) throw new Error(`--ack-quorum ${ackQuorum} needs at least ${ackQuorum + 1} servers`);

/** The epoch of the built state; the manager starts with it as --initial-epoch, as after a restore. */
const snapshotEpoch = epoch(3);
/** Loaded keys that every writer also writes and deletes, so that writes to one key from several writers interleave. */
const hotKeyCount = Math.min(1000, keyCount);
/** Keys absent from the load that writers create and delete, shared by all of them. */
const sharedNewKeyCount = 200;
/** Attempts at one write before its outcome is given up as unknown (about a minute with the pauses). */
const attemptsMax = 50;
const retryPauseMs = 100;
/** How long a process may take to stop after SIGTERM before it is killed. */
const stopTimeoutMs = 10_000;

const directory = await mkdtemp(join(tmpdir(), 'mainstay-bench-backup-'));
const backupFile = join(directory, 'bench.backup');
const restoredDir = join(directory, 'restored');
const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

const seconds = (since: number): number => (performance.now() - since) / 1000;
const megabytes = (bytes: number): string => (bytes / 1_048_576).toFixed(1);
const count = (value: number): string => value.toLocaleString('en-US');
const keyName = (index: number): string => `user/${String(index * 7919 % 1_000_003).padStart(7, '0')}/${index}`;
function valueOf(index: number): Uint8Array {
  const value = new Uint8Array(valueBytes);
  for (let i = 0; i < valueBytes; i++) value[i] = (index + i * 31) & 0xff;
  return value;
}
/** The index of a loaded key, or undefined for any other key. */
function loadedIndex(key: string): number | undefined {
  const index = Number(key.slice(key.lastIndexOf('/') + 1));
  return Number.isSafeInteger(index) && index >= 1 && index <= keyCount && keyName(index) === key ? index : undefined;
}

// ---------------------------------------------------------------- processes

interface Process {
  name: string;
  child: ChildProcess;
  output: string[];
  exited: Promise<void>;
}
const processes: Process[] = [];

function launch(name: string, args: string[]): Process {
  const child = spawn(process.execPath, ['--import', 'tsx', entry, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  const keep = (chunk: Buffer): void => {
    output.push(chunk.toString());
    if (output.length > 400) output.splice(0, 200);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const started: Process = { name, child, output, exited };
  processes.push(started);
  return started;
}

async function stopProcess(started: Process): Promise<void> {
  if (started.child.exitCode !== null || started.child.signalCode !== null) return;
  started.child.kill('SIGTERM');
  const killer = setTimeout(() => started.child.kill('SIGKILL'), stopTimeoutMs);
  await started.exited;
  clearTimeout(killer);
}

const tails = (): string => processes.map((started) => `[${started.name}] ${started.output.join('').trim().split('\n').slice(-3).join('\n')}`).join('\n');

// ---------------------------------------------------------------- writes

/** One acknowledged write: `key` holds `value` (null: deleted) from `seq` on. */
interface Acknowledged {
  key: string;
  value: string | null;
  seq: number;
  epoch: number;
  writer: number;
  requestId: number;
  /** performance.now() when the acknowledgement arrived. */
  ackedAtMs: number;
}

/** A write whose outcome stayed unknown after every attempt. */
interface Unknown {
  key: string;
  value: string | null;
  writer: number;
  requestId: number;
  lastProblem: string;
}

interface Attempt {
  status: 'acknowledged' | 'retry' | 'unknown';
  seq?: number;
  epoch?: number;
  problem?: string;
}

const acknowledged: Acknowledged[] = [];
const unknownWrites: Unknown[] = [];
/** Writes that needed more than one attempt, by what the first failure was. */
const retried = { unknownOutcome: 0, refused: 0 };
/** Unknown outcomes learnt only after the writers stopped. */
let resolvedLate = 0;
const serverUrls = new Map<string, string>();
let mainUrl = '';

/**
 * One attempt at a write with a client session. `retry` is a definite refusal (not applied);
 * `unknown` may have been applied. Either way the same request id is sent again: the main
 * applies a session's request once and answers a retry with the recorded seq.
 */
async function attemptWrite(key: string, value: string | null, clientId: string, requestId: number): Promise<Attempt> {
  let response: Response;
  let text: string;
  try {
    response = await fetch(`${mainUrl}/v1/kv/${encodeURIComponent(key)}`, {
      method: value === null ? 'DELETE' : 'PUT', body: value ?? undefined,
      headers: { 'Mainstay-Client-Id': clientId, 'Mainstay-Request-Id': String(requestId) },
      signal: AbortSignal.timeout(requestTimeoutMs),
    });
    text = await response.text();
  } catch (error) {
    return { status: 'unknown', problem: (error as Error).message };
  }
  if (response.status === 200) {
    const body = JSON.parse(text) as { seq: number; epoch: number };
    if (!Number.isSafeInteger(body.seq) || !Number.isSafeInteger(body.epoch)) throw new Error(`A write answered 200 without a seq and an epoch: ${text}`);
    return { status: 'acknowledged', seq: body.seq, epoch: body.epoch };
  }
  let error: { code?: string; definite?: boolean; main?: string } = {};
  try {
    error = (JSON.parse(text) as { error?: typeof error }).error ?? {};
  } catch {
    // Not JSON: the outcome is unknown.
  }
  if (error.code === 'NOT_MAIN' && error.main !== undefined) mainUrl = error.main;
  const problem = `${response.status} ${error.code ?? text.slice(0, 80)}`;
  if (error.definite === true && ['NOT_MAIN', 'OVERLOADED', 'UNAVAILABLE'].includes(error.code ?? '')) return { status: 'retry', problem };
  if (error.definite === true) throw new Error(`A plain ${value === null ? 'delete' : 'put'} of ${key} was refused: ${text}`);
  return { status: 'unknown', problem };
}

/** A write, attempted until it is acknowledged or `attemptsMax` attempts have failed. */
async function write(writer: number, requestId: number, key: string, value: string | null): Promise<boolean> {
  const clientId = `bench-writer-${writer}`;
  let outcomeUnknown = false;
  let lastProblem = '';
  for (let attempt = 1; attempt <= attemptsMax; attempt++) {
    const result = await attemptWrite(key, value, clientId, requestId);
    if (result.status === 'acknowledged') {
      acknowledged.push({ key, value, seq: result.seq as number, epoch: result.epoch as number, writer, requestId, ackedAtMs: performance.now() });
      return true;
    }
    if (attempt === 1) retried[result.status === 'unknown' ? 'unknownOutcome' : 'refused']++;
    outcomeUnknown ||= result.status === 'unknown';
    lastProblem = result.problem ?? '';
    await sleep(retryPauseMs);
  }
  if (outcomeUnknown) unknownWrites.push({ key, value, writer, requestId, lastProblem });
  else throw new Error(`A write of ${key} was refused ${attemptsMax} times, last: ${lastProblem}`);
  return false;
}

let stopWriters = false;
/** Why each writer stopped: 'asked' once the backup finished, or the bound it reached first. */
const writerEnds: string[] = [];

async function writer(index: number, deadlineMs: number): Promise<void> {
  const random = new Random(0x5eed + index);
  let requestId = 0;
  let ended = 'asked';
  for (;;) {
    if (stopWriters) break;
    if (requestId >= writesPerWriterMax) { ended = `its limit of ${count(writesPerWriterMax)} writes`; break; }
    if (performance.now() > deadlineMs) { ended = `its limit of ${writersSecondsMax} s`; break; }
    requestId++;
    const roll = random.int(0, 99);
    const value = `w${index}.r${requestId}:${'abcdefghijklmnopqrstuvwxyz'.repeat(12).slice(0, random.int(0, 300))}`;
    let key: string;
    let deletes = false;
    if (roll < 50) key = keyName(random.int(1, keyCount));
    else if (roll < 65) key = keyName(random.int(1, hotKeyCount));
    else if (roll < 72) { key = keyName(random.int(1, random.chance(0.5) ? hotKeyCount : keyCount)); deletes = true; }
    else if (roll < 87) key = `new/w${index}/${requestId}`;
    else { key = `new/shared/${random.int(0, sharedNewKeyCount - 1)}`; deletes = random.chance(0.4); }
    // A write whose outcome stays unknown ends this writer: a later request of the same session
    // would make it impossible to learn.
    if (!await write(index, requestId, key, deletes ? null : value)) { ended = 'an unknown outcome'; break; }
  }
  writerEnds[index] = ended;
}

// ---------------------------------------------------------------- run

let exitCode = 0;
try {
  // The state at seq N, built once and copied for every server.
  const builtDir = join(directory, 'build');
  console.log(`Building ${count(keyCount)} keys of ${valueBytes}-byte values and ${count(sessionCount)} sessions, state at seq ${keyCount}, epoch ${snapshotEpoch}, in ${directory}`);
  let started = performance.now();
  {
    const store = await openLmdbStore(join(builtDir, 'state'));
    const batchKeys = 2000;
    for (let first = 1; first <= keyCount; first += batchKeys) {
      const keys = new Map<string, StoredValue | null>();
      const last = Math.min(first + batchKeys - 1, keyCount);
      for (let index = first; index <= last; index++) keys.set(keyName(index), { value: valueOf(index), version: index });
      const sessions = new Map<string, SessionRecord | null>();
      if (first === 1) {
        for (let client = 0; client < sessionCount; client++) {
          sessions.set(`client-${client}`, { clientId: `client-${client}`, requestId: client + 1, result: { status: 'ok', seq: seq(client + 1), epoch: snapshotEpoch, version: client + 1 }, lastSeq: seq(client + 1) });
        }
      }
      store.commit({ keys, sessions, appliedSeq: seq(last), appliedEpoch: snapshotEpoch });
      if (store.pendingBatchCount > 16) await store.flushed();
    }
    await store.close();
    await writeEmptyLogStart(builtDir, { firstSeq: seq(keyCount + 1), baseEpoch: snapshotEpoch }, { promisedEpoch: snapshotEpoch, incomplete: false });
  }
  const serverIds = Array.from({ length: serverCount }, (_, i) => `s${i + 1}`);
  for (const id of serverIds) await cp(builtDir, join(directory, id), { recursive: true });
  await rm(builtDir, { recursive: true, force: true });
  console.log(`  built and copied for ${serverCount} servers in ${seconds(started).toFixed(1)} s`);

  // A cluster on the copies: the manager appoints a main above the state's epoch.
  const ports = await freePorts(2 + serverCount * 2);
  const [managerHttp, managerPeer] = ports as [number, number];
  const members = serverIds.map((id, i) => {
    const httpPort = ports[2 + i * 2] as number;
    const peerPort = ports[3 + i * 2] as number;
    serverUrls.set(id, `http://127.0.0.1:${httpPort}`);
    return { id, httpPort, peerPort };
  });
  const managerUrl = `http://127.0.0.1:${managerHttp}`;
  launch('manager', ['manager', '--data-dir', join(directory, 'manager'), '--listen-http', `127.0.0.1:${managerHttp}`, '--listen-peer', `127.0.0.1:${managerPeer}`,
    '--servers', members.map((member) => `${member.id}=127.0.0.1:${member.httpPort}/127.0.0.1:${member.peerPort}`).join(','),
    '--ack-quorum', String(ackQuorum), '--initial-epoch', String(snapshotEpoch), '--heartbeat-ms', '50',
    // A main busy streaming a large snapshot must not be failed over for a late heartbeat.
    '--failover-after-ms', '10000']);
  for (const member of members) {
    launch(member.id, ['server', '--id', member.id, '--data-dir', join(directory, member.id), '--listen-http', `127.0.0.1:${member.httpPort}`,
      '--listen-peer', `127.0.0.1:${member.peerPort}`, '--manager', `127.0.0.1:${managerPeer}`, '--heartbeat-ms', '50']);
  }
  started = performance.now();
  let mainId: string;
  try {
    mainId = await waitFor('a main', 60_000, async () => {
      const view = (await http(`${managerUrl}/v1/cluster`, { timeoutMs: 2000 })).json() as { main: string | null; phase: string };
      if (view.main === null || view.phase !== 'stable') return undefined;
      const status = (await http(`${serverUrls.get(view.main)}/v1/status`, { timeoutMs: 2000 })).json() as { role: string };
      return status.role === 'main' ? view.main : undefined;
    });
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${tails()}`, { cause: error });
  }
  mainUrl = serverUrls.get(mainId) as string;
  console.log(`  cluster of ${serverCount} servers (K = ${ackQuorum}) up in ${seconds(started).toFixed(1)} s; main ${mainId}`);

  // Writers, then the backup while they write; they stop once it has finished.
  const writersStarted = performance.now();
  const writers = Promise.allSettled(Array.from({ length: writerCount }, (_, index) => writer(index, writersStarted + writersSecondsMax * 1000)));
  const quiet = { stdout: new Writable({ write: (_chunk, _encoding, done) => done() }), stderr: new Writable({ write: (_chunk, _encoding, done) => done() }) };
  let backup: BackupResult;
  let backupStarted: number;
  let backupEnded: number;
  let writerOutcomes: PromiseSettledResult<void>[] = [];
  try {
    await waitFor(`${warmupWrites} writes before the backup`, 120_000, async () => {
      if (unknownWrites.length > 0 || writerEnds.length > 0) throw new Error('A writer stopped before the backup started');
      return acknowledged.length >= warmupWrites ? true : undefined;
    });
    backupStarted = performance.now();
    backup = await runBackup(['--out', backupFile, '--endpoint', managerUrl], quiet);
    backupEnded = performance.now();
  } finally {
    // Also when the backup fails: the writers must not outlive it.
    stopWriters = true;
    writerOutcomes = await writers;
  }
  const failedWriter = writerOutcomes.find((outcome) => outcome.status === 'rejected');
  if (failedWriter !== undefined) throw failedWriter.reason;
  const writersSeconds = seconds(writersStarted);
  const backupSeconds = (backupEnded - backupStarted) / 1000;
  const earlyEnds = writerEnds.filter((ended) => ended !== 'asked');
  // Writes still unknown (a writer gave up on one): one more round of attempts with the same
  // session, now that no later request of that session can hide the outcome.
  for (const unknown of unknownWrites.splice(0)) {
    let result: Attempt = { status: 'unknown', problem: unknown.lastProblem };
    for (let attempt = 1; attempt <= attemptsMax && result.status !== 'acknowledged'; attempt++) {
      if (attempt > 1) await sleep(retryPauseMs);
      result = await attemptWrite(unknown.key, unknown.value, `bench-writer-${unknown.writer}`, unknown.requestId);
    }
    if (result.status === 'acknowledged') {
      acknowledged.push({ key: unknown.key, value: unknown.value, seq: result.seq as number, epoch: result.epoch as number, writer: unknown.writer, requestId: unknown.requestId, ackedAtMs: performance.now() });
      resolvedLate++;
    } else {
      unknownWrites.push({ ...unknown, lastProblem: result.problem ?? unknown.lastProblem });
    }
  }
  for (const running of processes) await stopProcess(running);

  started = performance.now();
  const restored = await runRestore(['--in', backupFile, '--data-dir', restoredDir], quiet);
  const restoreSeconds = seconds(started);

  // The expected state at the backup's seq: the load, then every acknowledged write at or below
  // it, in seq order. `overlay` holds the keys those writes touched (null: deleted).
  const bySeq = [...acknowledged].sort((a, b) => a.seq - b.seq);
  for (let i = 1; i < bySeq.length; i++) {
    if ((bySeq[i] as Acknowledged).seq === (bySeq[i - 1] as Acknowledged).seq) throw new Error(`Two acknowledged writes share seq ${(bySeq[i] as Acknowledged).seq}`);
  }
  const overlay = new Map<string, { value: string; version: number } | null>();
  const expectedSessions = new Map<string, string>();
  const sessionText = (record: { clientId: string; requestId: number; result: { status: string; seq: number; epoch: number; version?: number }; lastSeq: number }): string =>
    JSON.stringify([record.clientId, record.requestId, record.result.status, record.result.seq, record.result.epoch, record.result.version, record.lastSeq]);
  for (let client = 0; client < sessionCount; client++) {
    expectedSessions.set(`client-${client}`, sessionText({ clientId: `client-${client}`, requestId: client + 1, result: { status: 'ok', seq: client + 1, epoch: snapshotEpoch, version: client + 1 }, lastSeq: client + 1 }));
  }
  let atOrBelow = 0;
  for (const write of bySeq) {
    if (write.seq > backup.seq) break;
    atOrBelow++;
    overlay.set(write.key, write.value === null ? null : { value: write.value, version: write.seq });
    // A session's record is its last request applied; a writer's requests apply in order.
    expectedSessions.set(`bench-writer-${write.writer}`, sessionText({ clientId: `bench-writer-${write.writer}`, requestId: write.requestId,
      result: { status: 'ok', seq: write.seq, epoch: write.epoch, version: write.seq }, lastSeq: write.seq }));
  }
  const after = acknowledged.length - atOrBelow;
  const duringBackup = acknowledged.filter((write) => write.ackedAtMs >= backupStarted && write.ackedAtMs <= backupEnded);
  const duringAtOrBelow = duringBackup.filter((write) => write.seq <= backup.seq).length;
  const beforeBackup = acknowledged.filter((write) => write.ackedAtMs < backupStarted);
  const beforeAfterSeq = beforeBackup.filter((write) => write.seq > backup.seq).length;
  // The snapshot is LMDB's last committed transaction, which may lag writes already applied (and
  // acknowledged) in the store's overlay: some writes acknowledged before the backup started can
  // come after its seq. Only the seq decides.
  if (plantMismatch) {
    const planted = [...overlay].find(([, want]) => want !== null);
    if (planted !== undefined) overlay.set(planted[0], { value: `planted!${(planted[1] as { value: string }).value}`, version: (planted[1] as { version: number }).version });
    else overlay.set(keyName(1), { value: 'planted', version: 1 });
    console.log(`  BENCH_PLANT_MISMATCH=1: the expected value of ${planted?.[0] ?? keyName(1)} is altered; the check must fail`);
  }

  // Key by key and session by session: every restored item against the expectation, then every
  // expected item the restore lacks.
  started = performance.now();
  const mismatches: string[] = [];
  let mismatchCount = 0;
  const mismatch = (text: string): void => {
    mismatchCount++;
    if (mismatches.length < 10) mismatches.push(text);
  };
  const equalBytes = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;
  const seenLoaded = new Uint8Array(keyCount + 1);
  const seenOverlay = new Set<string>();
  const seenSessions = new Set<string>();
  let keysCompared = 0;
  let sessionsCompared = 0;
  const target = await openLmdbStore(join(restoredDir, 'state'));
  const snapshot = target.openSnapshot();
  try {
    if (snapshot.seq !== backup.seq || snapshot.epoch !== backup.epoch) mismatch(`the restored state is at seq ${snapshot.seq}, epoch ${snapshot.epoch}, not the backup's ${backup.seq}, ${backup.epoch}`);
    for (const chunk of snapshot.chunks(4 * 1024 * 1024)) {
      for (const item of chunk.items) {
        keysCompared++;
        const index = loadedIndex(item.key);
        let want: { value: Uint8Array; version: number } | null | undefined;
        if (overlay.has(item.key)) {
          if (seenOverlay.has(item.key)) { mismatch(`${item.key}: restored twice`); continue; }
          seenOverlay.add(item.key);
          const written = overlay.get(item.key);
          want = written === null || written === undefined ? null : { value: Buffer.from(written.value), version: written.version };
        } else if (index !== undefined) {
          if (seenLoaded[index] === 1) { mismatch(`${item.key}: restored twice`); continue; }
          seenLoaded[index] = 1;
          want = { value: valueOf(index), version: index };
        }
        if (want === undefined || want === null) mismatch(`${item.key}: expected absent, restored with version ${item.version}`);
        else if (item.version !== want.version || !equalBytes(item.value, want.value)) {
          const show = (value: Uint8Array): string => `${value.length} bytes ${JSON.stringify(Buffer.from(value).toString().slice(0, 40))}`;
          mismatch(`${item.key}: expected version ${want.version}, ${show(want.value)}; restored version ${item.version}, ${show(item.value)}`);
        }
      }
      for (const record of chunk.sessions) {
        sessionsCompared++;
        const want = expectedSessions.get(record.clientId);
        if (seenSessions.has(record.clientId)) mismatch(`session ${record.clientId}: restored twice`);
        else if (want !== sessionText(record)) mismatch(`session ${record.clientId}: expected ${want ?? 'none'}, restored ${sessionText(record)}`);
        seenSessions.add(record.clientId);
      }
    }
  } finally {
    snapshot.close();
    await target.close();
  }
  let absentConfirmed = 0;
  for (const [key, want] of overlay) {
    if (want !== null && !seenOverlay.has(key)) { keysCompared++; mismatch(`${key}: expected version ${want.version}, absent from the restored state`); }
    if (want === null && !seenOverlay.has(key)) absentConfirmed++;
  }
  for (let index = 1; index <= keyCount; index++) {
    if (seenLoaded[index] === 0 && !overlay.has(keyName(index))) { keysCompared++; mismatch(`${keyName(index)}: expected version ${index}, absent from the restored state`); }
  }
  for (const clientId of expectedSessions.keys()) {
    if (!seenSessions.has(clientId)) { sessionsCompared++; mismatch(`session ${clientId}: absent from the restored state`); }
  }
  const verifySeconds = seconds(started);
  const backupBytes = (await stat(backupFile)).size;
  const expectedKeys = keyCount - [...overlay].filter(([key, want]) => want === null && loadedIndex(key) !== undefined).length
    + [...overlay].filter(([key, want]) => want !== null && loadedIndex(key) === undefined).length;

  console.log(`\nBackup of ${count(keyCount)} keys (${valueBytes}-byte values) taken from ${backup.server} while ${writerCount} writers wrote, restored, and checked at the backup's seq ${backup.seq}, epoch ${backup.epoch}:`);
  console.log(`  backup file:  ${megabytes(backupBytes)} MB (${count(backup.keys)} keys, ${count(backup.sessions)} sessions), ${backup.checksum}`);
  console.log(`  backup:       ${backupSeconds.toFixed(2)} s  (${megabytes(backupBytes / backupSeconds)} MB/s, ${count(Math.round(backup.keys / backupSeconds))} keys/s; HTTP from the main while it took writes, checked and fsynced)`);
  console.log(`  writers:      ${count(acknowledged.length)} writes acknowledged in ${writersSeconds.toFixed(1)} s (${count(Math.round(acknowledged.length / writersSeconds))} writes/s):`
    + ` ${count(beforeBackup.length)} before the backup started, ${count(duringBackup.length)} during it, ${count(acknowledged.length - beforeBackup.length - duringBackup.length)} after it finished (in flight then)`);
  console.log(`  during it:    ${count(Math.round(duringBackup.length / backupSeconds))} writes/s acknowledged while the backup ran`);
  console.log(`  at its seq:   ${count(atOrBelow)} acknowledged writes have seq <= ${backup.seq} and ${count(after)} a later seq;`
    + ` of those acknowledged during the backup, ${count(duringAtOrBelow)} <= and ${count(duringBackup.length - duringAtOrBelow)} after; of those before it, ${count(beforeAfterSeq)} after`);
  console.log(`  retries:      ${count(retried.unknownOutcome)} writes with an unknown outcome and ${count(retried.refused)} refused writes, retried with the same session request id (${resolvedLate} resolved after the writers stopped); ${count(unknownWrites.length)} outcomes still unknown`);
  console.log(`  restore:      ${restoreSeconds.toFixed(2)} s  (${megabytes(backupBytes / restoreSeconds)} MB/s, ${count(Math.round(restored.keys / restoreSeconds))} keys/s; a checking pass, then LMDB writes, fsynced)`);
  console.log(`  compared:     ${count(keysCompared)} keys (${count(expectedKeys)} expected, ${count(restored.keys)} restored; ${count(absentConfirmed)} deleted keys confirmed absent) and ${count(sessionsCompared)} sessions in ${verifySeconds.toFixed(1)} s: ${count(mismatchCount)} mismatches`);

  const failures: string[] = [];
  if (mismatchCount > 0) failures.push(`${count(mismatchCount)} mismatches between the restored state and the state at seq ${backup.seq}:\n    ${mismatches.join('\n    ')}`);
  if (unknownWrites.length > 0) {
    failures.push(`the check is not exact: ${unknownWrites.length} writes have an unknown outcome (their keys may hold either value): `
      + unknownWrites.slice(0, 5).map((unknown) => `${unknown.key} (writer ${unknown.writer}, request ${unknown.requestId}: ${unknown.lastProblem})`).join('; '));
  }
  if (earlyEnds.length > 0) failures.push(`${earlyEnds.length} writers stopped before the backup finished (${[...new Set(earlyEnds)].join(', ')}): writes did not go on during the whole backup`);
  if (duringBackup.length === 0) failures.push('no write was acknowledged during the backup');
  if (after === 0) failures.push(`no acknowledged write has a seq after ${backup.seq}, so the check cannot tell the backup's state from the final one`);
  if (!bySeq.some((write) => write.seq > keyCount && write.seq <= backup.seq)) failures.push('no acknowledged write landed at or below the backup\'s seq');
  if (failures.length > 0) {
    console.log(`\nFAILED: ${failures.join('\n  ')}`);
    exitCode = 1;
  } else {
    console.log('\nOK: the restored state equals the state at the backup\'s seq, key by key and session by session');
  }
} catch (error) {
  console.error(error);
  exitCode = 1;
} finally {
  for (const started of processes) await stopProcess(started);
  if (!values.keep) await rm(directory, { recursive: true, force: true });
  else console.log(`  data kept in ${directory}`);
}
process.exitCode = exitCode;
