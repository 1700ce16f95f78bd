// Benchmark of the on-disk key-value store (not a test): applies puts of fixed-size values through
// KvState in batches, as a server applies committed entries (one event turn per batch, so lmdb-js
// can start transactions in between), and reports the apply rate, the rate until everything is
// flushed to disk, and how long reopening the store takes. A MemoryKvStore run gives the cost of
// KvState itself.
//
// Usage: node --import tsx scripts/bench-kv-store.ts [--puts N] [--keys N] [--batch N]
//   [--value-bytes N] [--order random|sequential] [--pending-max N] [--dir PATH]
// --pending-max bounds the batches the store may hold uncommitted (the overlay) before the loop
// waits for LMDB, as a server with backpressure would; 0 (the default) leaves it unbounded.

import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { parseArgs } from 'node:util';

import type { KvStore } from '../src/core/kv.ts';
import { KvState, MemoryKvStore } from '../src/core/kv.ts';
import { Random } from '../src/lib/random.ts';
import type { LogEntry } from '../src/protocol/types.ts';
import { epoch, seq } from '../src/protocol/types.ts';
import { openLmdbStore } from '../src/storage/lmdb-store.ts';

const { values: args } = parseArgs({
  options: {
    puts: { type: 'string', default: '1000000' },
    keys: { type: 'string', default: '1000000' },
    batch: { type: 'string', default: '256' },
    'value-bytes': { type: 'string', default: '100' },
    order: { type: 'string', default: 'random' },
    'pending-max': { type: 'string', default: '0' },
    dir: { type: 'string' },
  },
});
const puts = Number(args.puts);
const keyCount = Number(args.keys);
const batchSize = Number(args.batch);
const valueBytes = Number(args['value-bytes']);
const pendingBatchesMax = Number(args['pending-max']);
if (args.order !== 'random' && args.order !== 'sequential') throw new Error('--order must be random or sequential');

/** Key indexes in the order they are written: each key once per pass over the key space. */
function keyOrder(): Uint32Array {
  const order = new Uint32Array(keyCount);
  for (let i = 0; i < keyCount; i++) order[i] = i;
  if (args.order === 'sequential') return order;
  const random = new Random(42);
  for (let i = keyCount - 1; i > 0; i--) {
    const j = random.int(0, i);
    const held = order[i] as number;
    order[i] = order[j] as number;
    order[j] = held;
  }
  return order;
}

const keyName = (index: number): string => `key/${index.toString().padStart(7, '0')}`;

function makeBatches(order: Uint32Array): LogEntry[][] {
  const value = new Uint8Array(valueBytes).fill(0x61);
  const batches: LogEntry[][] = [];
  for (let start = 0; start < puts; start += batchSize) {
    const entries: LogEntry[] = [];
    for (let at = start; at < Math.min(puts, start + batchSize); at++) {
      const key = keyName(order[at % keyCount] as number);
      entries.push({ epoch: epoch(1), seq: seq(at + 1), write: { type: 'put', key, value } });
    }
    batches.push(entries);
  }
  return batches;
}

/** Applies every batch; returns the elapsed milliseconds and the most batches ever pending. */
async function applyAll(store: KvStore, batches: LogEntry[][], pending?: () => number): Promise<{ ms: number; pendingMax: number }> {
  const state = new KvState(store, { sessionsMax: 1000 });
  let pendingMax = 0;
  const started = performance.now();
  for (const entries of batches) {
    state.apply(entries);
    if (pending === undefined) continue;
    pendingMax = Math.max(pendingMax, pending());
    do await nextTurn(); while (pendingBatchesMax > 0 && pending() > pendingBatchesMax);
  }
  return { ms: performance.now() - started, pendingMax };
}

function directoryBytes(path: string): number {
  return readdirSync(path).reduce((total, name) => total + statSync(join(path, name)).size, 0);
}

const count = (value: number): string => Math.round(value).toLocaleString('en-US');
const rate = (ms: number): string => `${count(puts / (ms / 1000))} puts/s (${(ms / 1000).toFixed(2)} s)`;

const batches = makeBatches(keyOrder());
console.log(`${count(puts)} puts of ${valueBytes}-byte values over ${count(keyCount)} keys in ${args.order} order, `
  + `batches of ${batchSize}, pending batches ${pendingBatchesMax > 0 ? `at most ${pendingBatchesMax}` : 'unbounded'}`);

const memory = await applyAll(new MemoryKvStore(), batches);
console.log(`MemoryKvStore (KvState alone): ${rate(memory.ms)}`);

const dir = args.dir ?? mkdtempSync(join(tmpdir(), 'mainstay-bench-kv-'));
try {
  const store = await openLmdbStore(dir);
  const applied = await applyAll(store, batches, () => store.pendingBatchCount);
  const flushStarted = performance.now();
  await store.flushed();
  const flushedMs = applied.ms + (performance.now() - flushStarted);
  console.log(`LmdbKvStore apply:             ${rate(applied.ms)}, most batches pending in the overlay: ${applied.pendingMax}`);
  console.log(`LmdbKvStore until flushed:     ${rate(flushedMs)}`);
  await store.close();
  console.log(`On disk: ${(directoryBytes(dir) / 1e6).toFixed(1)} MB`);

  const reopenStarted = performance.now();
  const reopened = await openLmdbStore(dir);
  const reopenMs = performance.now() - reopenStarted;
  const firstGet = reopened.get(keyName(0));
  console.log(`Reopen: ${reopenMs.toFixed(1)} ms (appliedSeq ${reopened.appliedSeq()}, ${keyName(0)} at version ${firstGet?.version})`);
  const scanStarted = performance.now();
  let scanned = 0;
  for (let page = 0; page * 10_000 < keyCount; page++) {
    scanned += reopened.range(`key/${page.toString().padStart(3, '0')}`, 10_000).length;
  }
  console.log(`Range over every key in pages of 10,000: ${count(scanned)} keys in ${(performance.now() - scanStarted).toFixed(0)} ms`);
  await reopened.close();
} finally {
  if (args.dir === undefined) rmSync(dir, { recursive: true, force: true });
}
