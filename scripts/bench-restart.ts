// `npm run bench:restart [-- --entries N]`: how fast a server with a long log serves again.
// Builds a data directory as a standby would leave it — N entries of 100-byte values in the log,
// all applied to the LMDB state — then starts a real `mainstay server` process on it and measures
// the time until it answers a read, and the recovery phases its log reports.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { KvState } from '../src/core/kv.ts';
import type { LogEntry } from '../src/protocol/types.ts';
import { epoch, seq } from '../src/protocol/types.ts';
import { openFileLog } from '../src/storage/file-log.ts';
import { openLmdbStore } from '../src/storage/lmdb-store.ts';
import { freePorts } from '../test/harness.ts';

const { values } = parseArgs({ options: { entries: { type: 'string', default: '1000000' }, keys: { type: 'string', default: '100000' }, keep: { type: 'boolean', default: false } } });
const entryCount = Number(values.entries);
const keyCount = Number(values.keys);
const directory = await mkdtemp(join(tmpdir(), 'mainstay-bench-restart-'));
const value = new Uint8Array(100).fill(120);

console.log(`Building ${directory}: ${entryCount.toLocaleString()} entries of 100-byte values over ${keyCount.toLocaleString()} keys`);
let started = performance.now();
{
  const { log } = await openFileLog(directory);
  const store = await openLmdbStore(join(directory, 'state'));
  const state = new KvState(store, { sessionsMax: 100_000 });
  const batchSize = 512;
  let durable = 0;
  let operationId = 0;
  log.onDurable = (id) => { durable = id; };
  log.submit(++operationId, { type: 'meta', meta: { promisedEpoch: epoch(1), incomplete: false } });
  for (let first = 1; first <= entryCount; first += batchSize) {
    const entries: LogEntry[] = [];
    for (let at = first; at < Math.min(first + batchSize, entryCount + 1); at++) {
      entries.push({ epoch: epoch(1), seq: seq(at), write: { type: 'put', key: `key-${at % keyCount}`, value } });
    }
    log.submit(++operationId, { type: 'append', entries });
    state.apply(entries);
    // Keep the work in flight bounded, as a real standby's inflight limit does.
    while (operationId - durable > 16) await new Promise((resolve) => setImmediate(resolve));
    if (store.pendingBatchCount > 64) await store.flushed();
  }
  await store.flushed();
  await log.close();
  await store.close();
}
console.log(`  built in ${((performance.now() - started) / 1000).toFixed(1)} s`);

const [httpPort, peerPort, managerPort] = await freePorts(3);
const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
started = performance.now();
const child = spawn(process.execPath, ['--import', 'tsx', entry, 'server', '--id', 's1', '--data-dir', directory,
  '--listen-http', `127.0.0.1:${httpPort}`, '--listen-peer', `127.0.0.1:${peerPort}`, '--manager', `127.0.0.1:${managerPort}`], { stdio: ['ignore', 'pipe', 'pipe'] });
let output = '';
child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString(); });
child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString(); });

const lastKey = `key-${entryCount % keyCount}`;
let servedMs = -1;
const deadline = Date.now() + 60_000;
while (Date.now() < deadline) {
  try {
    const response = await fetch(`http://127.0.0.1:${httpPort}/v1/kv/${lastKey}?consistency=local&minSeq=${entryCount}`, { signal: AbortSignal.timeout(1000) });
    if (response.status === 200) {
      servedMs = performance.now() - started;
      break;
    }
  } catch {
    // Not listening yet.
  }
  await new Promise((resolve) => setTimeout(resolve, 5));
}
child.kill('SIGTERM');
await new Promise((resolve) => child.once('exit', resolve));
const recovered = /"lastSeq":(\d+),"appliedSeq":(\d+)/.exec(output);
if (servedMs < 0) {
  console.log(output.slice(-2000));
  throw new Error('The server did not serve within 60 s');
}
console.log(`\nRestart with ${entryCount.toLocaleString()} log entries (recovered lastSeq ${recovered?.[1]}, appliedSeq ${recovered?.[2]}):`);
console.log(`  process start to first read served: ${(servedMs / 1000).toFixed(2)} s   (target: under 3 s)`);
if (!values.keep) await rm(directory, { recursive: true, force: true });
else console.log(`  data kept in ${directory}`);
