// Benchmark of the file log: writes N entries of 100-byte put values in batches of 64 entries per
// disk operation, keeping up to 8192 entries in flight as a busy main would (as fast as
// durability allows), then measures how long reopening the log (the recovery scan) takes, and
// how long the core then takes to start from it.
//
//   node --import tsx scripts/bench-log.ts [--entries 1000000] [--dir DATA_DIR] [--cold]
//
// Without --dir it uses a temporary directory under os.tmpdir() and removes it afterwards. With
// --cold it drops the OS page cache before reopening (Linux, as root: the whole machine's cache),
// so the scan reads from the device.

import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryKvStore } from '../src/core/kv.ts';
import { ServerCore, defaultServerLimits, defaultServerTimings } from '../src/core/server.ts';
import type { LogEntry } from '../src/protocol/types.ts';
import { epoch, seq, serverId } from '../src/protocol/types.ts';
import { openFileLog } from '../src/storage/file-log.ts';

function option(name: string): string | undefined {
  const at = process.argv.indexOf(name);
  return at < 0 ? undefined : process.argv[at + 1];
}

const entryCount = Number(option('--entries') ?? 1_000_000);
const givenDir = option('--dir');
const cold = process.argv.includes('--cold');
const entriesPerOperation = 64;
const entriesInFlightMax = 8192;
const valueBytes = 100;

function entryAt(at: number, value: Uint8Array): LogEntry {
  return {
    epoch: epoch(1), seq: seq(at),
    write: { type: 'put', key: `user:${String(at % 100_000).padStart(6, '0')}`, value },
    session: { clientId: `client-${at % 64}`, requestId: at },
  };
}

async function main(): Promise<void> {
  const dataDir = givenDir ?? await mkdtemp(join(tmpdir(), 'mainstay-bench-log-'));
  const value = new Uint8Array(valueBytes);
  for (let i = 0; i < valueBytes; i++) value[i] = (i * 31 + 7) & 0xff;
  try {
    const { log } = await openFileLog(dataDir);
    let nextSeq = 1;
    let nextOperationId = 1;
    let durableSeq = 0;
    const lastSeqOfOperation = new Map<number, number>();
    const started = performance.now();
    await new Promise<void>((resolve) => {
      const pump = (): void => {
        while (nextSeq <= entryCount && nextSeq - 1 - durableSeq < entriesInFlightMax) {
          const entries: LogEntry[] = [];
          for (let i = 0; i < entriesPerOperation && nextSeq <= entryCount; i++) entries.push(entryAt(nextSeq++, value));
          lastSeqOfOperation.set(nextOperationId, nextSeq - 1);
          log.submit(nextOperationId++, { type: 'append', entries });
        }
      };
      log.onDurable = (operationId) => {
        durableSeq = lastSeqOfOperation.get(operationId) as number;
        for (const id of lastSeqOfOperation.keys()) {
          if (id > operationId) break;
          lastSeqOfOperation.delete(id);
        }
        if (durableSeq === entryCount) resolve();
        else pump();
      };
      pump();
    });
    const writeSeconds = (performance.now() - started) / 1000;
    const { metrics } = log;
    await log.close();
    console.log(`write: ${entryCount} entries (${valueBytes}-byte values, ${entriesPerOperation} per operation) in ${writeSeconds.toFixed(2)} s`);
    console.log(`  ${Math.round(entryCount / writeSeconds)} entries/s, ${(metrics.bytesWritten / 1e6 / writeSeconds).toFixed(1)} MB/s (${(metrics.bytesWritten / 1e6).toFixed(1)} MB of records)`);
    console.log(`  ${Math.round(metrics.fsyncs / writeSeconds)} fsyncs/s (${metrics.fsyncs} fsyncs, ${metrics.groups} groups, ${(entryCount / metrics.groups).toFixed(0)} entries per group, ${metrics.writes} writes)`);

    if (cold) {
      execFileSync('sync');
      await writeFile('/proc/sys/vm/drop_caches', '3\n');
      console.log('dropped the page cache: the reopen reads from the device');
    }
    const reopenStarted = performance.now();
    const reopened = await openFileLog(dataDir);
    const reopenSeconds = (performance.now() - reopenStarted) / 1000;
    const recovered = reopened.recovered;
    console.log(`reopen: recovered ${recovered.entries.length} entries from ${reopened.log.segmentCount} segments in ${reopenSeconds.toFixed(2)} s`
      + ` (${(metrics.bytesWritten / 1e6 / reopenSeconds).toFixed(0)} MB/s; torn tail ${recovered.tornTailCut}, corruption ${recovered.corruptionFound})`);
    if (recovered.entries.length !== entryCount) throw new Error(`Recovered ${recovered.entries.length} entries, wrote ${entryCount}`);

    const coreStarted = performance.now();
    const core = new ServerCore(
      { id: serverId('bench'), timings: defaultServerTimings, limits: defaultServerLimits },
      { ...recovered, bootId: 1, store: new MemoryKvStore() },
    );
    const coreSeconds = (performance.now() - coreStarted) / 1000;
    console.log(`core start from the recovered log: ${coreSeconds.toFixed(2)} s (lastSeq ${core.lastSeq}); reopen + core start ${(reopenSeconds + coreSeconds).toFixed(2)} s`);
    await reopened.log.close();
  } finally {
    if (givenDir === undefined) await rm(dataDir, { recursive: true, force: true });
  }
}

await main();
