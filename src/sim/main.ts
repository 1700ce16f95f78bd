// `npm run sim -- --seeds N | --seed S [--verbose] [--bug NAME] [--first S]`: runs the seeded
// simulator, prints one line per failing seed (with the command that replays it) and a summary
// with the fault counters, seeds per minute, and the trace hash of single runs.

import { parseArgs } from 'node:util';
import type { PlantedBug } from '../core/bugs.ts';
import { plantedBugs } from '../core/bugs.ts';
import type { SimCounters } from './cluster.ts';
import type { FailureKind } from './cluster.ts';
import { emptyCounters, failureKind, runSimulation } from './cluster.ts';

const { values } = parseArgs({
  options: {
    seeds: { type: 'string' },
    seed: { type: 'string' },
    first: { type: 'string', default: '1' },
    verbose: { type: 'boolean', default: false },
    bug: { type: 'string', multiple: true, default: [] },
    'fault-ms': { type: 'string' },
  },
  strict: true,
});

function fail(message: string): never {
  console.error(`mainstay sim: ${message}`);
  process.exit(2);
}

for (const bug of values.bug) {
  if (!(plantedBugs as readonly string[]).includes(bug)) fail(`Unknown bug "${bug}"; known: ${plantedBugs.join(', ')}`);
}
const bugs = new Set(values.bug as PlantedBug[]);
const faultPhaseMs = values['fault-ms'] === undefined ? undefined : Number(values['fault-ms']);

let seeds: number[];
if (values.seed !== undefined) {
  seeds = [Number(values.seed)];
} else {
  const count = Number(values.seeds ?? '100');
  const first = Number(values.first);
  if (!Number.isInteger(count) || count < 1) fail('--seeds must be a positive integer');
  seeds = Array.from({ length: count }, (_, i) => first + i);
}

const totals: SimCounters = emptyCounters();
const started = performance.now();
let failures = 0;
const byKind: Record<FailureKind, number> = { invariant: 0, assertion: 0, acknowledgedWriteLost: 0, notLinearizable: 0, unknownVerdict: 0, liveness: 0 };
let lastReport = started;
for (const seed of seeds) {
  const options = { seed, bugs, ...(faultPhaseMs === undefined ? {} : { faultPhaseMs }), ...(values.verbose ? { trace: (line: string) => console.log(line) } : {}) };
  const result = runSimulation(options);
  for (const key of Object.keys(totals) as (keyof SimCounters)[]) totals[key] += result.counters[key];
  if (!result.ok) {
    failures++;
    byKind[failureKind(result.failure ?? '')]++;
    console.log(`FAIL seed ${seed} (servers ${result.servers}, K ${result.ackQuorum}): ${result.failure}`);
    console.log(`  replay: npm run sim -- --seed ${seed}${values.bug.map((bug) => ` --bug ${bug}`).join('')} --verbose`);
  }
  if (seeds.length === 1) console.log(`seed ${seed}: ${result.ok ? 'ok' : 'FAILED'}, servers ${result.servers}, K ${result.ackQuorum}, ${result.counters.events} events, ${result.simulatedMs} simulated ms, history ${result.historyLength} operations, trace hash ${result.traceHash}`);
  const now = performance.now();
  if (seeds.length > 1 && now - lastReport > 10_000) {
    lastReport = now;
    const done = seeds.indexOf(seed) + 1;
    console.error(`  ${done}/${seeds.length} seeds, ${failures} failed, ${((done / (now - started)) * 60_000).toFixed(0)} seeds/min`);
  }
}
const elapsedMs = performance.now() - started;
console.log(`\n${seeds.length} seeds, ${failures} failed, ${(seeds.length / elapsedMs * 60_000).toFixed(0)} seeds per minute (${(elapsedMs / 1000).toFixed(1)} s)`);
console.log(`invariant violations ${byKind.invariant + byKind.assertion}, acknowledged writes lost ${byKind.acknowledgedWriteLost}, linearizability violations ${byKind.notLinearizable}, unknown verdicts ${byKind.unknownVerdict}, liveness failures ${byKind.liveness}`);
console.log('counters:');
for (const [key, value] of Object.entries(totals)) console.log(`  ${key.padEnd(22)} ${value}`);
process.exitCode = failures > 0 ? 1 : 0;
