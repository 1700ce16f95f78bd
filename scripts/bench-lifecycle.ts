// `npm run bench:lifecycle -- [--writes N] [--keys N] [--puts-per-txn P] [--clients C]
// [--value-bytes B] [--retention N] [--segment-bytes N] [--seconds-max S] [--keep]`:
// a cluster that runs long does not fill its disk, and a new server joins it from a snapshot.
//
// 1. Measures this disk's sequential write rate in the bench's own folder (1 MiB writes, one
//    fsync at the end), so the catch-up figure below has something to be compared with.
// 2. Starts a real cluster on loopback (a manager and 3 servers, K = 1, --log-retention-entries
//    and --segment-bytes-max as given) and writes N key updates spread uniformly over the key
//    space, P per transaction (one log entry each), C clients with one request in flight each.
//    Every few seconds it samples, for each server, the bytes of its log folder and of its state
//    folder and the seqs its log holds; it reports the largest log seen next to the retention.
// 3. Adds a fourth, empty server (POST /v1/servers) and times it from the add to the moment it is
//    a standby whose appliedSeq has reached the main's lastSeq at the time of the add; its
//    catch-up rate is the bytes of its data folder then divided by that time, printed next to
//    the disk's sequential write rate.
// Every load loop is bounded by count and by time; all traffic stays on 127.0.0.1.

import { randomBytes } from 'node:crypto';
import { open, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '../src/client/client.ts';
import { http, sleep, TestCluster, waitFor, type ServerInfo } from '../test/harness.ts';

const { values } = parseArgs({ options: {
  writes: { type: 'string', default: '10000000' },
  keys: { type: 'string', default: '1000000' },
  'puts-per-txn': { type: 'string', default: '10' },
  clients: { type: 'string', default: '64' },
  'value-bytes': { type: 'string', default: '100' },
  retention: { type: 'string', default: '100000' },
  'segment-bytes': { type: 'string', default: String(64 * 1024 * 1024) },
  'seconds-max': { type: 'string', default: '3600' },
  'disk-probe-mb': { type: 'string', default: '512' },
  'catch-up-seconds-max': { type: 'string', default: '600' },
  keep: { type: 'boolean', default: false },
} });
const writes = Number(values.writes);
const keys = Number(values.keys);
const putsPerTxn = Number(values['puts-per-txn']);
const clients = Number(values.clients);
const valueBytes = Number(values['value-bytes']);
const retention = Number(values.retention);
const segmentBytes = Number(values['segment-bytes']);
const secondsMax = Number(values['seconds-max']);
const diskProbeMb = Number(values['disk-probe-mb']);
const catchUpSecondsMax = Number(values['catch-up-seconds-max']);
for (const [name, value] of Object.entries({ writes, keys, putsPerTxn, clients, valueBytes, retention, segmentBytes, secondsMax, diskProbeMb })) {
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`--${name} must be a positive whole number, not ${value}`);
}

const mb = (bytes: number): string => (bytes / 1_048_576).toFixed(1);

async function folderBytes(path: string): Promise<number> {
  let total = 0;
  let names: string[];
  try {
    names = await readdir(path);
  } catch {
    return 0;
  }
  for (const name of names) {
    const full = join(path, name);
    const info = await stat(full).catch(() => undefined);
    if (info === undefined) continue;
    total += info.isDirectory() ? await folderBytes(full) : info.blocks * 512;
  }
  return total;
}

/** Sequential write rate of the disk under `folder`: 1 MiB writes, one fsync, in MB/s. */
async function diskWriteRate(folder: string): Promise<number> {
  const path = join(folder, 'disk-probe');
  const block = randomBytes(1_048_576);
  const file = await open(path, 'w');
  const started = performance.now();
  try {
    for (let i = 0; i < diskProbeMb; i++) await file.write(block);
    await file.sync();
  } finally {
    await file.close();
  }
  const seconds = (performance.now() - started) / 1000;
  await rm(path);
  return diskProbeMb / seconds;
}

interface Status {
  role: string;
  lastSeq: number;
  firstSeq: number;
  appliedSeq: number;
}

async function status(server: ServerInfo): Promise<Status | undefined> {
  try {
    return (await http(`${server.url}/v1/status`, { timeoutMs: 2000 })).json() as Status;
  } catch {
    return undefined;
  }
}

async function main(): Promise<void> {
  const cluster = await TestCluster.start({
    servers: 3, ackQuorum: 1, heartbeatMs: 100, verbose: process.env.BENCH_VERBOSE === '1',
    serverFlags: ['--log-retention-entries', String(retention), '--segment-bytes-max', String(segmentBytes)],
  });
  const deadline = performance.now() + secondsMax * 1000;
  try {
    const diskRate = await diskWriteRate(cluster.dataDir);
    console.log(`disk: sequential write ${diskRate.toFixed(0)} MB/s (${diskProbeMb} MiB in 1 MiB writes, one fsync, under ${cluster.dataDir})`);
    const main = await cluster.waitForMain();
    console.log(`cluster: 3 servers, K = 1, main ${main.id}; retention ${retention} entries, segments of ${mb(segmentBytes)} MiB`);
    console.log(`load: ${writes} key writes over ${keys} keys, ${putsPerTxn} per transaction (one log entry), ${clients} clients, ${valueBytes}-byte values`);

    // ---- load, with disk sampling
    const client = connect({ endpoints: [main.url], timeoutMs: 30_000 });
    const value = 'v'.repeat(valueBytes);
    const transactions = Math.ceil(writes / putsPerTxn);
    let issued = 0;
    let done = 0;
    let failed = 0;
    const started = performance.now();
    const peakLog = new Map<string, number>();
    const peakState = new Map<string, number>();
    let peakEntries = 0;
    let sampling = true;
    const sample = async (): Promise<string> => {
      const parts: string[] = [];
      for (const server of cluster.servers) {
        const logBytes = await folderBytes(join(server.dataDir, 'log'));
        const stateBytes = await folderBytes(join(server.dataDir, 'state'));
        peakLog.set(server.id, Math.max(peakLog.get(server.id) ?? 0, logBytes));
        peakState.set(server.id, Math.max(peakState.get(server.id) ?? 0, stateBytes));
        const view = await status(server);
        if (view !== undefined) peakEntries = Math.max(peakEntries, view.lastSeq - view.firstSeq + 1);
        parts.push(`${server.id} log ${mb(logBytes)} MiB [${view?.firstSeq}..${view?.lastSeq}] state ${mb(stateBytes)} MiB`);
      }
      return parts.join('; ');
    };
    const sampler = (async () => {
      while (sampling) {
        await sleep(5000);
        if (!sampling) break;
        const seconds = (performance.now() - started) / 1000;
        console.log(`  ${seconds.toFixed(0)} s: ${done * putsPerTxn} writes (${((done * putsPerTxn) / seconds).toFixed(0)}/s); ${await sample()}`);
      }
    })();
    const worker = async (): Promise<void> => {
      while (issued < transactions && performance.now() < deadline) {
        issued++;
        const success = Array.from({ length: putsPerTxn }, () => ({ put: { key: `key${Math.floor(Math.random() * keys)}`, value } }));
        try {
          await client.txn({ success });
          done++;
        } catch {
          failed++;
        }
      }
    };
    await Promise.all(Array.from({ length: clients }, worker));
    sampling = false;
    await sampler;
    const loadSeconds = (performance.now() - started) / 1000;
    client.close();
    console.log(`load done: ${done * putsPerTxn} writes in ${done} transactions acknowledged, ${failed} failed, in ${loadSeconds.toFixed(0)} s (${((done * putsPerTxn) / loadSeconds).toFixed(0)} writes/s)`);
    console.log(`  at the end: ${await sample()}`);
    for (const server of cluster.servers) {
      console.log(`  ${server.id}: largest log seen ${mb(peakLog.get(server.id) ?? 0)} MiB, largest state ${mb(peakState.get(server.id) ?? 0)} MiB`);
    }
    console.log(`  largest log held by any server: ${peakEntries} entries (retention ${retention}; compaction runs above 2 x retention and removes whole segments)`);

    // ---- a new, empty server joins
    const target = (await status(main))?.lastSeq ?? 0;
    const s4 = await cluster.startExtraServer('s4');
    const addedAt = performance.now();
    const added = await http(`${cluster.managerUrl}/v1/servers`, {
      method: 'POST', timeoutMs: 5000, headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ id: 's4', address: s4.url, peerAddress: `127.0.0.1:${s4.peerPort}` }),
    });
    if (added.status !== 202) throw new Error(`adding s4 failed: ${added.status} ${added.text}`);
    let lastReport = performance.now();
    await waitFor('s4 to catch up and become a standby', Math.max(1000, Math.min(catchUpSecondsMax * 1000, deadline - performance.now())), async () => {
      const view = await status(s4);
      if (performance.now() - lastReport > 5000) {
        lastReport = performance.now();
        console.log(`  s4: appliedSeq ${view?.appliedSeq ?? '?'} of ${target}, ${mb(await folderBytes(s4.dataDir))} MiB on disk`);
      }
      if (view === undefined || view.appliedSeq < target) return undefined;
      const members = (await http(`${cluster.managerUrl}/v1/cluster`, { timeoutMs: 2000 })).json() as { servers: { id: string; role: string }[] };
      return members.servers.find((server) => server.id === 's4')?.role === 'standby' ? true : undefined;
    });
    const catchUpSeconds = (performance.now() - addedAt) / 1000;
    const s4Bytes = await folderBytes(s4.dataDir);
    const installed = /Installed a snapshot of the state at seq (\d+)/.exec(cluster.logs(s4));
    console.log(`new server s4: standby with appliedSeq >= ${target} after ${catchUpSeconds.toFixed(1)} s; ${installed === null ? 'no snapshot' : `snapshot at seq ${installed[1]}`}; ${mb(s4Bytes)} MiB on its disk`);
    console.log(`catch-up rate ${(s4Bytes / 1_048_576 / catchUpSeconds).toFixed(1)} MB/s, next to the disk's sequential write rate of ${diskRate.toFixed(0)} MB/s measured in this run`);
  } catch (error) {
    console.error(`manager's failovers:\n${cluster.logs(cluster.manager).trim().split('\n').filter((line) => line.includes('Failover')).slice(-6).join('\n')}`);
    for (const server of cluster.servers) console.error(`${server.id}'s last log lines:\n${cluster.logs(server).trim().split('\n').slice(-8).join('\n')}`);
    throw error;
  } finally {
    if (values.keep) console.log(`kept: ${cluster.dataDir}`);
    else await cluster.close();
  }
}

await main();
