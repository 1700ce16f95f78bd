// `npm run chaos -- [--time SECONDS] [--nemesis LIST|all] [--servers N] [--ack-quorum K] [--seed S]
// [--clients C] [--out DIR] [--bug NAME] [--keep]`: a Jepsen-style run against real processes
// (see run.ts). Prints the report and exits non-zero if any check failed.

import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { plantedBugs, type PlantedBug } from '../core/bugs.ts';
import { formatReport, nemesisKinds, runChaos, type NemesisKind } from './run.ts';

function fail(message: string): never {
  console.error(`chaos: ${message}`);
  process.exit(2);
}

const { values } = parseArgs({ options: {
  time: { type: 'string', default: '60' },
  nemesis: { type: 'string', default: 'all' },
  servers: { type: 'string', default: '3' },
  'ack-quorum': { type: 'string', default: '1' },
  seed: { type: 'string' },
  clients: { type: 'string', default: '6' },
  out: { type: 'string' },
  bug: { type: 'string', multiple: true, default: [] },
  keep: { type: 'boolean', default: false },
} });

const whole = (name: string, text: string, min: number, max: number): number => {
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max) fail(`--${name} must be a whole number from ${min} to ${max}, not "${text}"`);
  return value;
};
const seconds = whole('time', values.time, 5, 86_400);
const servers = whole('servers', values.servers, 2, 9);
const ackQuorum = whole('ack-quorum', values['ack-quorum'], 0, servers - 1);
const clients = whole('clients', values.clients, 1, 64);
const seed = values.seed === undefined ? Math.floor(Math.random() * 1_000_000) : whole('seed', values.seed, 0, 2 ** 31);
const nemeses: NemesisKind[] = values.nemesis === 'all' ? [...nemesisKinds] : values.nemesis.split(',').map((name) => {
  if (!(nemesisKinds as readonly string[]).includes(name)) fail(`unknown nemesis "${name}"; known: all, ${nemesisKinds.join(', ')}`);
  return name as NemesisKind;
});
for (const bug of values.bug) {
  if (!(plantedBugs as readonly string[]).includes(bug)) fail(`unknown bug "${bug}"; known: ${plantedBugs.join(', ')}`);
}
const outDir = values.out ?? join('chaos-output', new Date().toISOString().replace(/[:.]/g, '-'));

const report = await runChaos({
  seconds, nemeses, servers, ackQuorum, seed, outDir, clients, calmMs: [500, 2500], faultMs: [500, 4000], keepData: values.keep,
  ...(values.bug.length === 0 ? {} : { env: { MAINSTAY_PLANTED_BUGS: (values.bug as PlantedBug[]).join(',') } }),
});
console.log(formatReport(report));
console.log(`history and report: ${outDir}`);
process.exit(report.ok ? 0 : 1);
