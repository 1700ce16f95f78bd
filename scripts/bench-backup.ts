// `node --import tsx scripts/bench-backup.ts [--keys N] [--value-bytes B] [--keep]`: how fast a
// large state is backed up and restored. Builds a data directory as a server at seq N would leave
// it — N keys of B-byte values in the LMDB state, some client sessions, an empty log starting at
// N + 1 — starts a real `mainstay server` process on it (standalone: no manager, so no writes),
// runs `mainstay backup` against it, then `mainstay restore` into a new directory, and compares
// the two states key by key (value, version) and session by session.

import { spawn } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { runBackup, runRestore } from '../src/cli/backup.ts';
import type { SessionRecord, SnapshotChunk, StoredValue } from '../src/core/kv.ts';
import type { KeyValue } from '../src/protocol/types.ts';
import { epoch, seq } from '../src/protocol/types.ts';
import { writeEmptyLogStart } from '../src/storage/file-log.ts';
import { openLmdbStore } from '../src/storage/lmdb-store.ts';
import { freePorts } from '../test/harness.ts';

const { values } = parseArgs({ options: {
  keys: { type: 'string', default: '1000000' },
  'value-bytes': { type: 'string', default: '100' },
  sessions: { type: 'string', default: '1000' },
  keep: { type: 'boolean', default: false },
} });
const keyCount = Number(values.keys);
const valueBytes = Number(values['value-bytes']);
const sessionCount = Number(values.sessions);
const snapshotEpoch = epoch(3);
const directory = await mkdtemp(join(tmpdir(), 'mainstay-bench-backup-'));
const sourceDir = join(directory, 'source');
const restoredDir = join(directory, 'restored');
const backupFile = join(directory, 'bench.backup');

const seconds = (since: number): number => (performance.now() - since) / 1000;
const megabytes = (bytes: number): string => (bytes / 1_048_576).toFixed(1);
const keyName = (index: number): string => `user/${String(index * 7919 % 1_000_003).padStart(7, '0')}/${index}`;
function valueOf(index: number): Uint8Array {
  const value = new Uint8Array(valueBytes);
  for (let i = 0; i < valueBytes; i++) value[i] = (index + i * 31) & 0xff;
  return value;
}

console.log(`Building ${sourceDir}: ${keyCount.toLocaleString()} keys of ${valueBytes}-byte values, ${sessionCount.toLocaleString()} sessions, state at seq ${keyCount}`);
let started = performance.now();
{
  const store = await openLmdbStore(join(sourceDir, 'state'));
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
  await writeEmptyLogStart(sourceDir, { firstSeq: seq(keyCount + 1), baseEpoch: snapshotEpoch }, { promisedEpoch: snapshotEpoch, incomplete: false });
}
console.log(`  built in ${seconds(started).toFixed(1)} s`);

const [httpPort, peerPort, managerPort] = await freePorts(3) as [number, number, number];
const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const child = spawn(process.execPath, ['--import', 'tsx', entry, 'server', '--id', 's1', '--data-dir', sourceDir,
  '--listen-http', `127.0.0.1:${httpPort}`, '--listen-peer', `127.0.0.1:${peerPort}`, '--manager', `127.0.0.1:${managerPort}`], { stdio: ['ignore', 'pipe', 'pipe'] });
let output = '';
child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString(); });
child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString(); });
const serverUrl = `http://127.0.0.1:${httpPort}`;
const deadline = Date.now() + 60_000;
for (;;) {
  try {
    if ((await fetch(`${serverUrl}/healthz`, { signal: AbortSignal.timeout(1000) })).status === 200) break;
  } catch {
    // Not listening yet.
  }
  if (Date.now() > deadline) throw new Error(`The server did not start within 60 s:\n${output.slice(-2000)}`);
  await new Promise((resolve) => setTimeout(resolve, 20));
}

const quiet = { stdout: new Writable({ write: (_chunk, _encoding, done) => done() }), stderr: new Writable({ write: (_chunk, _encoding, done) => done() }) };
started = performance.now();
const backup = await runBackup(['--out', backupFile, '--endpoint', serverUrl], quiet);
const backupSeconds = seconds(started);
child.kill('SIGTERM');
await new Promise((resolve) => child.once('exit', resolve));

started = performance.now();
const restored = await runRestore(['--in', backupFile, '--data-dir', restoredDir], quiet);
const restoreSeconds = seconds(started);

// Key by key: both states in key order, side by side.
started = performance.now();
const source = await openLmdbStore(join(sourceDir, 'state'));
const target = await openLmdbStore(join(restoredDir, 'state'));
const left = source.openSnapshot();
const right = target.openSnapshot();
if (left.seq !== right.seq || left.epoch !== right.epoch) throw new Error(`Positions differ: ${left.seq}/${left.epoch} and ${right.seq}/${right.epoch}`);
function* flatten(chunks: Generator<SnapshotChunk>): Generator<KeyValue | SessionRecord> {
  for (const chunk of chunks) yield* chunk.items.length > 0 ? chunk.items : chunk.sessions;
}
const rightItems = flatten(right.chunks(4 * 1024 * 1024));
let compared = 0;
for (const item of flatten(left.chunks(4 * 1024 * 1024))) {
  const other = rightItems.next();
  if (other.done === true) throw new Error(`The restored state ends after ${compared} items`);
  const a = item as Partial<KeyValue> & Partial<SessionRecord>;
  const b = other.value as Partial<KeyValue> & Partial<SessionRecord>;
  const same = a.key !== undefined
    ? a.key === b.key && a.version === b.version && Buffer.compare(a.value as Uint8Array, b.value as Uint8Array) === 0
    : JSON.stringify(a) === JSON.stringify(b);
  if (!same) throw new Error(`Item ${compared + 1} differs: ${JSON.stringify(a.key ?? a.clientId)} and ${JSON.stringify(b.key ?? b.clientId)}`);
  compared++;
}
if (rightItems.next().done !== true) throw new Error('The restored state has more items than the source');
left.close();
right.close();
await source.close();
await target.close();
const verifySeconds = seconds(started);
const backupBytes = (await stat(backupFile)).size;

console.log(`\nBackup and restore of ${keyCount.toLocaleString()} keys (${valueBytes}-byte values) and ${sessionCount.toLocaleString()} sessions at seq ${backup.seq}:`);
console.log(`  backup file:  ${megabytes(backupBytes)} MB, ${backup.checksum}`);
console.log(`  backup:       ${backupSeconds.toFixed(2)} s  (${megabytes(backupBytes / backupSeconds)} MB/s, ${Math.round(keyCount / backupSeconds).toLocaleString()} keys/s; HTTP from a server process, checked and fsynced)`);
console.log(`  restore:      ${restoreSeconds.toFixed(2)} s  (${megabytes(backupBytes / restoreSeconds)} MB/s, ${Math.round(keyCount / restoreSeconds).toLocaleString()} keys/s; a checking pass, then LMDB writes, fsynced)`);
console.log(`  verified:     ${compared.toLocaleString()} keys and sessions equal, key by key, in ${verifySeconds.toFixed(1)} s (restored ${restored.keys.toLocaleString()} keys, log starts at ${restored.logFirstSeq})`);
if (!values.keep) await rm(directory, { recursive: true, force: true });
else console.log(`  data kept in ${directory}`);
