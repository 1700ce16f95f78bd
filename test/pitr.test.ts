// Point-in-time restore with real processes: a 3-server cluster archives the log segments its
// compactions delete (--log-archive-dir); a backup taken after a first load is rolled forward from
// the archive to a seq N in the middle of later writes, and the restored state is compared, key by
// key, with the state at N computed from the acknowledged writes and their seqs (not read from the
// cluster). A server starts on the restored directory at N. Restoring before the backup, beyond the
// archive, across a gap, or from copies that disagree is refused with a clear message.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { connect } from '../src/client/client.ts';
import { runBackup, runRestore } from '../src/cli/backup.ts';
import { epoch, seq } from '../src/protocol/types.ts';
import { openLmdbStore } from '../src/storage/lmdb-store.ts';
import { archiveFileName, listArchive, planReplay } from '../src/storage/log-archive.ts';
import { encodeRecords } from '../src/storage/log-format.ts';
import { capture, freePorts, http, TestCluster, waitFor } from './harness.ts';

const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
});

async function temporaryDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'mainstay-pitr-test-'));
  cleanups.push(() => rm(directory, { recursive: true, force: true }));
  return directory;
}

async function forEach<T>(items: T[], parallel: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < items.length) await work(items[next++] as T);
  }));
}

/** One acknowledged write: the key's value from `seq` on (null: deleted). */
interface Acknowledged {
  key: string;
  seq: number;
  epoch: number;
  value: string | null;
}

describe('point-in-time restore', { timeout: 300_000 }, () => {
  it('rolls a backup forward from the log archive to a seq in the middle of later writes, exactly', async () => {
    const directory = await temporaryDirectory();
    const archive = join(directory, 'archive');
    const cluster = await TestCluster.start({
      servers: 3, serverFlags: ['--log-archive-dir', archive, '--log-retention-entries', '100', '--segment-bytes-max', '8192'],
    });
    cleanups.push(() => cluster.close());
    const client = connect({ endpoints: [cluster.managerUrl], timeoutMs: 20_000 });
    cleanups.push(async () => client.close());

    const acknowledged: Acknowledged[] = [];
    let failed = 0;
    const put = async (key: string, value: string): Promise<void> => {
      try {
        const answer = await client.put(key, value);
        acknowledged.push({ key, seq: answer.seq, epoch: answer.epoch, value });
      } catch {
        failed++;
      }
    };
    const remove = async (key: string): Promise<void> => {
      try {
        const answer = await client.delete(key);
        acknowledged.push({ key, seq: answer.seq, epoch: answer.epoch, value: null });
      } catch {
        failed++;
      }
    };
    const keys = Array.from({ length: 300 }, (_, i) => `key-${String(i).padStart(4, '0')}`);
    /** Writes `count` overwrites, new keys and deletes, with 8 writers. */
    const writeMore = async (count: number, tag: string): Promise<void> => {
      await forEach(Array.from({ length: count }, (_, i) => i), 8, async (i) => {
        const pick = keys[(i * 7919) % keys.length] as string;
        const roll = i % 10;
        if (roll < 6) await put(pick, `${pick}:${tag}:${i}`);
        else if (roll < 8) await put(`${tag}-new-${i}`, `fresh-${i}`);
        else await remove(pick);
      });
    };

    // A: the load, then the backup.
    await put(keys[0] as string, 'first');
    await forEach(keys, 16, (key) => put(key, `${key}:a`));
    const loadedSeq = Math.max(...acknowledged.map((write) => write.seq));
    const backupFile = join(directory, 'cluster.backup');
    const backup = await runBackup(['--out', backupFile, '--endpoint', cluster.managerUrl], capture());
    assert.ok(backup.seq >= loadedSeq, `the backup (seq ${backup.seq}) holds every write acknowledged before it (up to seq ${loadedSeq})`);

    // B: more writes; N is the seq of one in the middle. Then more, until the archive covers N.
    const firstOfB = acknowledged.length;
    await writeMore(1500, 'b');
    const ofB = acknowledged.slice(firstOfB).sort((a, b) => a.seq - b.seq);
    const target = ofB[Math.floor(ofB.length / 2)] as Acknowledged;
    const toSeq = target.seq;
    assert.ok(toSeq > backup.seq);
    let rounds = 0;
    const covers = async (): Promise<boolean> => {
      try {
        planReplay(await listArchive(archive), seq(backup.seq + 1), seq(toSeq));
        return true;
      } catch {
        return false;
      }
    };
    while (!await covers()) {
      assert.ok(++rounds <= 20, 'the archive covers the target after at most 20 more rounds of 200 writes');
      await writeMore(200, `c${rounds}`);
    }
    assert.equal(failed, 0, 'every write was acknowledged');
    const archived = await readdir(archive);
    assert.deepEqual(archived.sort(), ['s1', 's2', 's3'], 'every server archives into its own folder');
    // The cluster stops: the archive no longer changes while the error cases below look at it.
    await cluster.close();
    await client.close();

    // The expected state at N: the load and every acknowledged write with seq <= N.
    const expected = new Map<string, { value: string; version: number }>();
    for (const write of [...acknowledged].sort((a, b) => a.seq - b.seq)) {
      if (write.seq > toSeq) break;
      if (write.value === null) expected.delete(write.key);
      else expected.set(write.key, { value: write.value, version: write.seq });
    }
    const laterChanges = acknowledged.filter((write) => write.seq > toSeq).length;
    assert.ok(laterChanges > 100 && toSeq - backup.seq > 100, `${toSeq - backup.seq} entries to roll forward, ${laterChanges} writes after N to tell the states apart`);

    const dataDir = join(directory, 'restored');
    const output = capture();
    const restored = await runRestore(['--in', backupFile, '--data-dir', dataDir, '--log-archive', archive, '--to-seq', String(toSeq)], output);
    assert.deepEqual({ seq: restored.seq, epoch: restored.epoch, backupSeq: restored.backupSeq, replayed: restored.replayedEntries, logFirstSeq: restored.logFirstSeq, initialEpoch: restored.managerInitialEpochMin },
      { seq: toSeq, epoch: target.epoch, backupSeq: backup.seq, replayed: toSeq - backup.seq, logFirstSeq: toSeq + 1, initialEpoch: target.epoch });
    assert.match(output.text(), new RegExp(`at seq ${toSeq}, epoch ${target.epoch} \\(the backup at seq ${backup.seq}, .* rolled forward by [\\d,]+ entries from ${archive}\\)`));
    assert.match(output.text(), new RegExp(`--initial-epoch ${target.epoch}`));
    assert.deepEqual(JSON.parse(await readFile(join(dataDir, 'log-start.json'), 'utf8')), { firstSeq: toSeq + 1, baseEpoch: target.epoch });
    assert.deepEqual(JSON.parse(await readFile(join(dataDir, 'meta.json'), 'utf8')), { promisedEpoch: target.epoch, incomplete: false });

    // Key by key, from the restored LMDB store itself.
    const store = await openLmdbStore(join(dataDir, 'state'));
    try {
      assert.equal(store.appliedSeq(), toSeq);
      assert.equal(store.appliedEpoch(), target.epoch);
      const actual = new Map(store.range('', 1_000_000).map((item) => [item.key, { value: new TextDecoder().decode(item.value), version: item.version }]));
      const mismatches: string[] = [];
      for (const key of new Set([...expected.keys(), ...actual.keys()])) {
        if (JSON.stringify(actual.get(key)) !== JSON.stringify(expected.get(key))) mismatches.push(`${key}: expected ${JSON.stringify(expected.get(key))}, got ${JSON.stringify(actual.get(key))}`);
      }
      assert.deepEqual(mismatches.slice(0, 10), [], `${mismatches.length} keys differ`);
      assert.equal(restored.keys, expected.size);
      assert.ok(store.loadSessions().length > 0, 'the client sessions were rolled forward too');
    } finally {
      await store.close();
    }

    // A server starts on it, at N, with an empty log.
    const [httpPort, peerPort, managerPort] = await freePorts(3) as [number, number, number];
    const child = spawn(process.execPath, ['--import', 'tsx', entry, 'server', '--id', 'r1', '--data-dir', dataDir,
      '--listen-http', `127.0.0.1:${httpPort}`, '--listen-peer', `127.0.0.1:${peerPort}`, '--manager', `127.0.0.1:${managerPort}`], { stdio: 'ignore' });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    cleanups.push(async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    });
    const url = `http://127.0.0.1:${httpPort}`;
    const status = await waitFor('the restored server to serve', 20_000, async () => {
      const answer = await http(`${url}/v1/status`, { timeoutMs: 500 });
      return answer.status === 200 ? answer.json() as { appliedSeq: number; lastSeq: number; firstSeq: number; epoch: number } : undefined;
    });
    assert.deepEqual({ appliedSeq: status.appliedSeq, lastSeq: status.lastSeq, firstSeq: status.firstSeq, epoch: status.epoch },
      { appliedSeq: toSeq, lastSeq: toSeq, firstSeq: toSeq + 1, epoch: target.epoch });
    const [someKey, someValue] = [...expected][0] as [string, { value: string; version: number }];
    const read = await http(`${url}/v1/kv/${encodeURIComponent(someKey)}?consistency=local`);
    assert.deepEqual([read.status, read.text, read.headers.get('etag')], [200, someValue.value, `"${someValue.version}"`]);
    child.kill('SIGKILL');
    await exited;

    // The errors, each leaving no data directory behind.
    const refuses = async (name: string, args: string[], message: RegExp): Promise<void> => {
      const into = join(directory, `refused-${name}`);
      await assert.rejects(runRestore(['--in', backupFile, '--data-dir', into, ...args], capture()), (error: Error) => {
        assert.match(error.message, message, name);
        return true;
      });
      await assert.rejects(stat(into), { code: 'ENOENT' }, `${name}: no data directory was created`);
    };
    await refuses('before-the-backup', ['--log-archive', archive, '--to-seq', String(backup.seq - 1)],
      new RegExp(`^Cannot restore to seq ${backup.seq - 1}: the backup is at seq ${backup.seq}; restore to a seq at or after it$`));
    const files = await listArchive(archive);
    const highest = Math.max(...files.map((file) => file.lastSeq));
    const lowest = Math.min(...files.map((file) => file.firstSeq));
    await refuses('beyond-the-archive', ['--log-archive', archive, '--to-seq', String(highest + 1000)], new RegExp(`the archive reaches seq ${highest}$`));
    await refuses('half-the-options', ['--to-seq', String(toSeq)], /--log-archive and --to-seq go together/);

    // A gap: one server's folder alone, without one of its files in the middle.
    const gapped = join(directory, 'gapped');
    await cp(join(archive, 's1'), join(gapped, 's1'), { recursive: true });
    const own = (await listArchive(gapped)).sort((a, b) => a.firstSeq - b.firstSeq);
    const hole = own.find((file) => file.firstSeq > backup.seq + 1 && file.lastSeq < toSeq);
    assert.ok(hole !== undefined, 'a file of s1 lies between the backup and N');
    await rm(hole.path);
    const ownLowest = (own[0] as { firstSeq: number }).firstSeq;
    const ownHighest = Math.max(...own.map((file) => file.lastSeq));
    await refuses('gap', ['--log-archive', gapped, '--to-seq', String(toSeq)],
      new RegExp(`the archive holds seqs ${ownLowest}\\.\\.${ownHighest}; seq ${hole.firstSeq} is missing \\(it can restore up to seq ${hole.firstSeq - 1}\\)$`));
    // Up to just before the gap works from the same folder.
    const beforeGap = await runRestore(['--in', backupFile, '--data-dir', join(directory, 'before-gap'), '--log-archive', gapped, '--to-seq', String(hole.firstSeq - 1)], capture());
    assert.equal(beforeGap.seq, hole.firstSeq - 1);

    // Copies that disagree: a forged copy of entry N in another folder.
    const forgedRoot = join(directory, 'forged');
    await cp(archive, forgedRoot, { recursive: true });
    const intruder = join(forgedRoot, 'intruder');
    await mkdir(intruder);
    await writeFile(join(intruder, archiveFileName({ firstSeq: seq(toSeq), lastSeq: seq(toSeq) })),
      encodeRecords([{ epoch: epoch(target.epoch), seq: seq(toSeq), write: { type: 'put', key: target.key, value: new TextEncoder().encode('forged') } }], crc32));
    await refuses('disagreeing-copies', ['--log-archive', forgedRoot, '--to-seq', String(toSeq)],
      new RegExp(`the archive disagrees with itself at seq ${toSeq}: .*intruder.*remove the files that do not belong`));
    assert.ok(lowest <= backup.seq + 1, 'the archive reaches back to the backup');
  });
});
