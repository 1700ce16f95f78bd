// Backup and restore with real processes: a backup taken from a 3-server cluster while writes go on
// is restored into a new data directory, a server started on it serves exactly the state at the
// backup's seq (computed from the acknowledged writes and their seqs, not read from the cluster),
// and damaged files — on disk or on the wire — are refused with clear messages and leave nothing
// behind.

import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect } from '../src/client/client.ts';
import type { BackupResult } from '../src/cli/backup.ts';
import { runBackup, runRestore } from '../src/cli/backup.ts';
import { epoch as toEpoch, seq as toSeq } from '../src/protocol/types.ts';
import { handleSnapshotRequest, snapshotHeaders } from '../src/runtime/snapshot-http.ts';
import type { BackupItem } from '../src/storage/backup-format.ts';
import { BackupDecoder } from '../src/storage/backup-format.ts';
import { openLmdbStore } from '../src/storage/lmdb-store.ts';
import { capture, freePorts, http, TestCluster, waitFor } from './harness.ts';

const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
});

async function temporaryDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'mainstay-backup-test-'));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));
  return directory;
}

/** One acknowledged write: the key's value from `seq` on (null: deleted). */
interface Acknowledged {
  seq: number;
  value: string | null;
}

/** A server process on a restored data directory, with no manager: it serves local reads. */
async function startStandaloneServer(dataDir: string): Promise<{ url: string; child: ChildProcess; output: string[]; stop: () => Promise<void> }> {
  const [httpPort, peerPort, managerPort] = await freePorts(3) as [number, number, number];
  const child = spawn(process.execPath, ['--import', 'tsx', entry, 'server', '--id', 'r1', '--data-dir', dataDir,
    '--listen-http', `127.0.0.1:${httpPort}`, '--listen-peer', `127.0.0.1:${peerPort}`, '--manager', `127.0.0.1:${managerPort}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  const output: string[] = [];
  child.stdout.on('data', (chunk: Buffer) => output.push(chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => output.push(chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGKILL');
    await exited;
  };
  cleanups.push(stop);
  const url = `http://127.0.0.1:${httpPort}`;
  try {
    await waitFor('the restored server to serve', 20_000, async () => ((await http(`${url}/healthz`, { timeoutMs: 500 })).status === 200 ? true : undefined));
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${output.join('')}`, { cause: error });
  }
  return { url, child, output, stop };
}

/** A copy of `bytes` with the bits of `mask` flipped at `offset`. */
function flipped(bytes: Uint8Array, offset: number, mask: number): Uint8Array {
  const copy = Uint8Array.from(bytes);
  copy[offset] = (copy[offset] as number) ^ mask;
  return copy;
}

/** Runs `work` on `count` items with at most `parallel` at a time. */
async function forEach<T>(items: T[], parallel: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < items.length) await work(items[next++] as T);
  }));
}

/** Every item of a backup stream (a restored server's /v1/snapshot). */
async function readSnapshot(url: string): Promise<BackupItem[]> {
  const response = await fetch(`${url}/v1/snapshot`);
  assert.equal(response.status, 200);
  const decoder = new BackupDecoder();
  const items: BackupItem[] = [];
  for await (const piece of response.body as AsyncIterable<Uint8Array>) items.push(...decoder.push(piece));
  decoder.end();
  return items;
}

describe('backup and restore', { timeout: 300_000 }, () => {
  let backupFile = '';
  let backupSeq = 0;

  it('a backup taken while writes go on restores, key by key, the state at its seq', async () => {
    const cluster = await TestCluster.start({ servers: 3 });
    cleanups.push(() => cluster.close());
    const client = connect({ endpoints: [cluster.managerUrl], timeoutMs: 20_000 });
    cleanups.push(async () => client.close());
    const history = new Map<string, Acknowledged[]>();
    /** Keys whose last write failed: it may or may not have been applied. */
    const uncertain = new Set<string>();
    let writes = 0;
    const record = (key: string, seq: number, value: string | null): void => {
      const list = history.get(key) ?? [];
      list.push({ seq, value });
      history.set(key, list);
      writes++;
    };
    const put = async (key: string, value: string): Promise<void> => {
      try {
        record(key, (await client.put(key, value)).seq, value);
      } catch {
        uncertain.add(key);
      }
    };
    const remove = async (key: string): Promise<void> => {
      try {
        record(key, (await client.delete(key)).seq, null);
      } catch {
        uncertain.add(key);
      }
    };

    // 5,000 keys, values of varied sizes (some non-ASCII keys).
    const keys = Array.from({ length: 5000 }, (_, i) => (i % 500 === 7 ? `clé-${i}-ключ` : `key-${String(i).padStart(5, '0')}`));
    // One write first, so the client has found the main before many writes go at once.
    await put(keys[0] as string, `${keys[0]}:v0`);
    await forEach(keys, 64, (key) => put(key, `${key}:v1:${'x'.repeat(key.length * 3 % 200)}`));
    const loadedSeq = Math.max(...[...history.values()].flatMap((list) => list.map((write) => write.seq)));

    // Writers overwrite, add and delete keys before, during and after the backup.
    let stop = false;
    let round = 0;
    const writer = async (worker: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const pick = (i * 7919 + worker * 104_729) % keys.length;
        const roll = (i + worker) % 10;
        if (roll < 6) await put(keys[pick] as string, `${keys[pick]}:w${worker}:${i}:${++round}`);
        else if (roll < 8) await put(`new-${worker}-${i}`, `fresh-${round}`);
        else await remove(keys[pick] as string);
      }
    };
    const writers = Promise.all(Array.from({ length: 16 }, (_, worker) => writer(worker)));
    const directory = await temporaryDirectory();
    backupFile = join(directory, 'cluster.backup');
    const output = capture();
    let result: BackupResult;
    try {
      await waitFor('concurrent writes before the backup', 20_000, async () => (writes >= 5000 + 500 ? true : undefined));
      const writesBefore = writes;
      result = await runBackup(['--out', backupFile, '--endpoint', cluster.managerUrl], output);
      const writesDuring = writes - writesBefore;
      await waitFor('writes after the backup', 20_000, async () => (writes >= writesBefore + writesDuring + 500 ? true : undefined));
    } finally {
      // Also when the backup fails: the writers must not outlive the test.
      stop = true;
      await writers;
    }
    backupSeq = result.seq;

    const main = await cluster.waitForMain();
    assert.equal(result.server, main.id, 'the backup was taken from the main');
    assert.match(output.text(), new RegExp(`Backed up .* at seq ${result.seq}, epoch ${result.epoch}: .* ${result.checksum}, to `));
    assert.equal((await stat(backupFile)).size, result.bytes);
    assert.deepEqual((await readdir(directory)).sort(), ['cluster.backup'], 'no .partial file is left');

    // The expected state at the backup's seq: each key's last acknowledged write at or below it.
    const expected = new Map<string, { value: string; version: number }>();
    let changedAfter = 0;
    for (const [key, list] of history) {
      list.sort((a, b) => a.seq - b.seq);
      const atBackup = list.filter((write) => write.seq <= result.seq).at(-1);
      if (atBackup !== undefined && atBackup.value !== null) expected.set(key, { value: atBackup.value, version: atBackup.seq });
      if (list.some((write) => write.seq > result.seq)) changedAfter++;
    }
    for (const key of uncertain) expected.delete(key);
    assert.equal(uncertain.size, 0, 'every write was acknowledged');
    assert.ok(changedAfter > 100, `${changedAfter} keys changed after the backup's seq, so the check can tell the two states apart`);
    assert.ok([...history.values()].some((list) => list.some((write) => write.seq > loadedSeq && write.seq <= result.seq)), 'concurrent writes landed before the backup seq');
    assert.equal(result.keys, expected.size);

    // Restore into a new data directory and start a server on it, without a manager.
    const dataDir = join(directory, 'restored');
    const restoreOutput = capture();
    const restored = await runRestore(['--in', backupFile, '--data-dir', dataDir], restoreOutput);
    assert.deepEqual({ seq: restored.seq, epoch: restored.epoch, keys: restored.keys, logFirstSeq: restored.logFirstSeq },
      { seq: result.seq, epoch: result.epoch, keys: result.keys, logFirstSeq: result.seq + 1 });
    assert.match(restoreOutput.text(), new RegExp(`--initial-epoch ${result.epoch}`));
    assert.deepEqual(JSON.parse(await readFile(join(dataDir, 'meta.json'), 'utf8')), { promisedEpoch: result.epoch, incomplete: false });
    assert.deepEqual(JSON.parse(await readFile(join(dataDir, 'log-start.json'), 'utf8')), { firstSeq: result.seq + 1, baseEpoch: result.epoch });
    assert.deepEqual((await readdir(directory)).sort(), ['cluster.backup', 'restored'], 'no staging directory is left');

    const server = await startStandaloneServer(dataDir);
    const status = (await http(`${server.url}/v1/status`)).json() as { appliedSeq: number; lastSeq: number; epoch: number };
    assert.equal(status.appliedSeq, result.seq);
    assert.equal(status.lastSeq, result.seq, 'the log is empty and starts after the snapshot');
    assert.equal(status.epoch, result.epoch);

    // Key by key: every key ever written, with its value and version at the backup's seq.
    const mismatches: string[] = [];
    await forEach([...history.keys()].filter((key) => !uncertain.has(key)), 32, async (key) => {
      const answer = await http(`${server.url}/v1/kv/${encodeURIComponent(key)}?consistency=local`);
      const want = expected.get(key);
      if (want === undefined) {
        if (answer.status !== 404) mismatches.push(`${key}: expected absent, got ${answer.status} ${answer.text}`);
      } else if (answer.status !== 200 || answer.text !== want.value || answer.headers.get('etag') !== `"${want.version}"`) {
        mismatches.push(`${key}: expected ${JSON.stringify(want)}, got ${answer.status} ${answer.headers.get('etag')} ${answer.text.slice(0, 80)}`);
      }
    });
    assert.deepEqual(mismatches.slice(0, 10), [], `${mismatches.length} keys differ`);

    // And nothing else: the restored server's own snapshot holds exactly the expected keys.
    const items = await readSnapshot(server.url);
    const restoredKeys = items.flatMap((item) => (item.kind === 'chunk' ? item.chunk.items.map((kv) => kv.key) : []));
    assert.deepEqual(restoredKeys.sort(), [...expected.keys()].sort());
    const header = items[0] as BackupItem & { kind: 'header' };
    assert.equal(header.header.seq, result.seq);
    assert.equal(header.header.sessionCount, result.sessions, 'the client sessions were restored too');
    assert.ok(result.sessions > 0, 'the client library writes with sessions');
    await server.stop();
  });

  it('refuses corrupted and truncated backup files with clear messages, and writes nothing', async () => {
    assert.notEqual(backupFile, '', 'the first test made a backup');
    const good = await readFile(backupFile);
    const directory = await temporaryDirectory();
    const cases: [string, Uint8Array, RegExp][] = [
      ['cut in half', good.subarray(0, Math.floor(good.length / 2)), /truncated: it ends at byte \d+, inside chunk \d+/],
      ['cut before its trailer', good.subarray(0, good.length - 48), /truncated: it ends at byte \d+, after chunk \d+, before its trailer/],
      ['a flipped bit in a chunk', flipped(good, Math.floor(good.length / 3), 0x20), /corrupt at byte \d+: chunk \d+ fails its checksum/],
      ['a flipped bit in the header', flipped(good, 30, 0x01), /corrupt at byte 0: the header fails its checksum/],
      ['bytes after the trailer', Buffer.concat([good, Buffer.from('junk')]), /corrupt at byte \d+: 4 bytes follow the trailer/],
      ['not a backup', Buffer.from('{"items":[]}\n'), /not a Mainstay backup/],
      ['empty', Buffer.alloc(0), /The backup is empty/],
    ];
    for (const [name, bytes, message] of cases) {
      const file = join(directory, `${name.replace(/ /g, '-')}.backup`);
      await writeFile(file, bytes);
      const dataDir = join(directory, `data-${name.replace(/ /g, '-')}`);
      await assert.rejects(runRestore(['--in', file, '--data-dir', dataDir], capture()), (error: Error) => {
        assert.match(error.message, message, name);
        assert.ok(error.message.includes(file), `${name}: the message names the file: ${error.message}`);
        return true;
      });
      await assert.rejects(stat(dataDir), { code: 'ENOENT' }, `${name}: no data directory was created`);
    }
    assert.deepEqual((await readdir(directory)).filter((name) => !name.endsWith('.backup')), [], 'no staging directory is left');

    // A data directory that is not empty is refused before anything is read.
    const used = join(directory, 'used');
    await runRestore(['--in', backupFile, '--data-dir', used], capture());
    await assert.rejects(runRestore(['--in', backupFile, '--data-dir', used], capture()), /Cannot restore into .*used: it is not empty/);
  });

  it('a backup stream damaged or cut on the wire is refused and leaves no file', async () => {
    assert.notEqual(backupFile, '', 'the first test made a backup');
    const good = await readFile(backupFile);
    let mode: 'flip' | 'cut' = 'flip';
    // A fake server that serves the backup, damaged.
    const fake: Server = createServer((request, response) => {
      if (request.url === '/v1/status') {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify({ id: 'fake', map: null }));
      } else if (request.url === '/v1/snapshot') {
        response.writeHead(200, { 'content-type': 'application/vnd.mainstay.backup', [snapshotHeaders.seq]: String(backupSeq) });
        if (mode === 'flip') {
          response.end(flipped(good, Math.floor(good.length / 2), 0x04));
        } else {
          response.write(good.subarray(0, Math.floor(good.length / 2)));
          setTimeout(() => response.destroy(), 50);
        }
      } else {
        response.writeHead(404);
        response.end();
      }
    });
    await new Promise<void>((resolve) => fake.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => fake.close(() => resolve())));
    const endpoint = `http://127.0.0.1:${(fake.address() as { port: number }).port}`;
    const directory = await temporaryDirectory();
    const out = join(directory, 'damaged.backup');

    await assert.rejects(runBackup(['--out', out, '--endpoint', endpoint], capture()), /The backup from fake .* is not valid, so it was not kept: The backup is corrupt at byte \d+: chunk \d+ fails its checksum/);
    assert.deepEqual(await readdir(directory), [], 'neither the file nor its .partial exists');
    mode = 'cut';
    await assert.rejects(runBackup(['--out', out, '--endpoint', endpoint], capture()), /no server could send a snapshot \(fake: /);
    assert.deepEqual(await readdir(directory), [], 'neither the file nor its .partial exists');

    // An existing file is not replaced without --force; an unreachable cluster is named.
    await writeFile(out, 'precious');
    await assert.rejects(runBackup(['--out', out, '--endpoint', endpoint], capture()), /exists; choose another name, or pass --force/);
    assert.equal(await readFile(out, 'utf8'), 'precious');
    const [unused] = await freePorts(1) as [number];
    await assert.rejects(runBackup(['--out', join(directory, 'other.backup'), '--endpoint', `http://127.0.0.1:${unused}`], capture()), /Cannot find a server to back up from http:\/\/127\.0\.0\.1:\d+: .*Is the cluster running\?/);
  });
});

describe('GET /v1/snapshot', () => {
  it('holds every write applied before the request, also those LMDB has not committed yet', async () => {
    const directory = await temporaryDirectory();
    const store = await openLmdbStore(join(directory, 'state'));
    cleanups.push(() => store.close());
    let applied = 0;
    /** Applies `count` one-key batches at once, as a busy server does, so LMDB trails them. */
    const apply = (count: number): void => {
      for (let i = 0; i < count; i++) {
        applied++;
        store.commit({ keys: new Map([[`key-${applied % 50}`, { value: new TextEncoder().encode(`v${applied}`), version: applied }]]),
          sessions: new Map(), appliedSeq: toSeq(applied), appliedEpoch: toEpoch(1) });
      }
    };
    // Each request is answered right after a burst of writes was applied (and, on a server,
    // acknowledged): the snapshot must hold all of them.
    const server: Server = createServer((request, response) => {
      apply(100);
      void handleSnapshotRequest(store, request, response);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise((resolve) => server.close(() => resolve())));
    const url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
    for (let round = 1; round <= 5; round++) {
      const items = await readSnapshot(url);
      const header = items[0] as BackupItem & { kind: 'header' };
      assert.equal(header.header.seq, round * 100, `round ${round}: the snapshot is at the last applied seq`);
      const values = new Map(items.flatMap((item) => (item.kind === 'chunk' ? item.chunk.items : [])).map((kv) => [kv.key, kv.version]));
      assert.equal(values.get(`key-${(round * 100) % 50}`), round * 100, `round ${round}: the last write is in the snapshot`);
    }
  });
});
