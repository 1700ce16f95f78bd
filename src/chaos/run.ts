// One chaos run: start the cluster (cluster.ts), run the workload (workload.ts) while a nemesis
// injects one fault at a time, heal everything, check, and report. `npm run chaos` (main.ts) is
// the command line; test/chaos.test.ts runs short ones in `npm test`.
//
// Checks after healing: every server converges to the main's log and state; final local reads on
// every server equal the main's; the register history is linearizable (Wing–Gong–Lowe, an
// unknown verdict counts as a failure); list appends: none lost, duplicated or reordered; every
// server's log holds the same entries where the logs overlap (read from disk after the processes
// stop). The report also gives faults by kind, failovers, the time from each fault that takes the
// main away to the first write acknowledged by a new main, and the longest time without an
// acknowledged write.

import { monitorEventLoopDelay } from 'node:perf_hooks';
import { createWriteStream } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Random } from '../lib/random.ts';
import { checkLinearizability } from '../sim/linearizability.ts';
import { openFileLog } from '../storage/file-log.ts';
import { checkLists, compareLogs, encodeLogEntry, longestGap, percentiles, recoveryTimes, type ListVerdict, type Percentiles } from './checks.ts';
import { ChaosCluster } from './cluster.ts';
import { Workload } from './workload.ts';

export const nemesisKinds = [
  'kill-main', 'kill-main-lagging', 'kill-standby', 'kill-manager', 'pause-main', 'pause-standby', 'pause-manager',
  'partition-main', 'partition-manager-main', 'partition-halves', 'partition-bridge', 'partition-one-way',
  'flap', 'delay', 'torn-tail', 'bit-flip', 'disk-eio', 'disk-full',
] as const;
export type NemesisKind = (typeof nemesisKinds)[number];

/** Faults after which a new main is expected (their recovery time is reported). */
const mainTakingFaults = new Set<NemesisKind>(['kill-main', 'kill-main-lagging', 'pause-main', 'partition-main', 'partition-one-way']);

export interface ChaosOptions {
  seconds: number;
  nemeses: NemesisKind[];
  servers: number;
  ackQuorum: number;
  seed: number;
  outDir: string;
  clients: number;
  /** Calm between faults, and fault durations, in ms (each drawn uniformly). */
  calmMs: [number, number];
  faultMs: [number, number];
  serverFlags?: string[];
  env?: NodeJS.ProcessEnv;
  keepData?: boolean;
  log?: (line: string) => void;
}

export interface ChaosReport {
  ok: boolean;
  problems: string[];
  seconds: number;
  seed: number;
  servers: number;
  ackQuorum: number;
  operations: Record<string, { ok: number; fail: number; info: number }>;
  faults: Record<string, number>;
  failovers: number;
  epochs: number[];
  recovery: Percentiles & { missing: number };
  longestUnavailableMs: number;
  /** Longest delay of the harness's own event loop (ms): the clients, proxies and nemesis stood still that long. */
  harnessStallMaxMs: number;
  acknowledgedWrites: number;
  linearizable: boolean | 'unknown';
  linearizability: string;
  lists: ListVerdict;
  finalReads: { checked: number; mismatches: string[] };
  logs: { identical: boolean; compared: number; difference?: string };
  converged: boolean;
}

interface ClusterView {
  epoch: number;
  main: string | null;
  phase: string;
  servers: { id: string; status: { acting: string; lastSeq: number; commitSeq: number; appliedSeq: number } | null }[];
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function getJson<T>(url: string, timeoutMs = 1000): Promise<T | undefined> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    if (response.status !== 200) return undefined;
    return await response.json() as T;
  } catch {
    return undefined;
  }
}

export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const log = options.log ?? ((line: string) => console.log(line));
  const random = new Random(options.seed);
  await mkdir(options.outDir, { recursive: true });
  const dataDir = join(options.outDir, 'data');
  // A manager resuming an earlier run's state would look for that run's proxies.
  if (await stat(dataDir).then(() => true, () => false)) throw new Error(`${dataDir} exists (an earlier run's data): choose another --out`);
  const historyFile = createWriteStream(join(options.outDir, 'history.jsonl'));
  const started = performance.now();
  const now = (): number => Math.round(performance.now() - started);
  // The clients, the proxies and the nemesis all run on this process's event loop: a stall of it
  // (a busy machine) delays faults, restarts and acknowledgements alike, so the report shows it.
  const loopDelay = monitorEventLoopDelay({ resolution: 20 });
  loopDelay.enable();
  const problems: string[] = [];
  const faults: Record<string, number> = {};
  const mainFaults: { time: number; epoch: number }[] = [];
  const epochs: number[] = [];
  let view: ClusterView | undefined;

  const cluster = await ChaosCluster.start({
    dataDir, servers: options.servers, ackQuorum: options.ackQuorum,
    ...(options.serverFlags === undefined ? {} : { serverFlags: options.serverFlags }), ...(options.env === undefined ? {} : { env: options.env }),
  });
  const workload = new Workload({
    endpoints: cluster.servers.map((server) => server.url), clients: options.clients, registerKeys: 8, listKeys: 3,
    operationTimeoutMs: 5000, random: new Random(options.seed + 1), now,
    record: (line) => historyFile.write(`${JSON.stringify(line)}\n`),
  });
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      const latest = await getJson<ClusterView>(`${cluster.managerUrl}/v1/cluster`);
      if (latest !== undefined) {
        if (view === undefined || latest.epoch !== view.epoch) {
          epochs.push(latest.epoch);
          historyFile.write(`${JSON.stringify({ time: now(), event: 'epoch', epoch: latest.epoch, main: latest.main })}\n`);
        }
        view = latest;
      }
      await sleep(100);
    }
  })();

  try {
    // Wait for a main before the clock of the run starts mattering.
    for (let i = 0; i < 300 && !(view?.main !== null && view?.main !== undefined && view.phase === 'stable'); i++) await sleep(100);
    if (view?.main === null || view?.main === undefined) {
      watching = false;
      await cluster.close(true);
      throw new Error(`The cluster never appointed a main (logs in ${dataDir})`);
    }
    log(`chaos: ${options.servers} servers, K = ${options.ackQuorum}, ${options.seconds} s, seed ${options.seed}, nemeses ${options.nemeses.join(',')}; output in ${options.outDir}`);
    const until = now() + options.seconds * 1000;
    const running = workload.run(until);
    const draw = ([low, high]: [number, number]): number => random.int(low, high);
    while (now() < until - options.faultMs[1]) {
      await sleep(draw(options.calmMs));
      if (now() >= until - options.faultMs[1]) break;
      const kind = random.pick(options.nemeses);
      const current = view;
      const main = current?.main ?? undefined;
      const standbys = cluster.servers.map((server) => server.id).filter((id) => id !== main);
      const at = now();
      const description = await injectFault(cluster, kind, main, standbys, random, draw(options.faultMs));
      if (description === undefined) continue;
      faults[kind] = (faults[kind] ?? 0) + 1;
      if (mainTakingFaults.has(kind) && current !== undefined) mainFaults.push({ time: at, epoch: current.epoch });
      historyFile.write(`${JSON.stringify({ time: at, event: 'fault', kind, description })}\n`);
      log(`  ${(at / 1000).toFixed(1)} s: ${description}`);
    }
    await running;
  } finally {
    workload.stop();
  }

  // ---- heal everything and let the cluster settle
  cluster.healNetwork();
  for (const server of cluster.servers) {
    await cluster.setDiskFault(server.id, '');
    cluster.resume(server.id);
    cluster.restart(server.id);
  }
  cluster.resume('manager');
  cluster.restart('manager');
  log(`  ${(now() / 1000).toFixed(1)} s: healed; waiting for the servers to converge`);
  let converged = false;
  let target = 0;
  for (let i = 0; i < 600 && !converged; i++) {
    await sleep(100);
    const latest = view;
    if (latest?.main === null || latest?.main === undefined || latest.phase !== 'stable') continue;
    const mainStatus = latest.servers.find((server) => server.id === latest.main)?.status;
    if (mainStatus?.acting !== 'main' || mainStatus.commitSeq !== mainStatus.lastSeq) continue;
    target = mainStatus.lastSeq;
    converged = latest.servers.every((server) => server.status !== null && server.status.lastSeq === target && server.status.appliedSeq === target);
  }
  if (!converged) problems.push(`the servers did not converge within 60 s of healing: ${JSON.stringify(view?.servers.map((server) => ({ id: server.id, ...server.status })))}`);

  // ---- final reads: the main's linearizable answer, and a local read on every server
  const finalReads = { checked: 0, mismatches: [] as string[] };
  const registersRead = await workload.finalRegisters();
  if (registersRead < 8) problems.push(`only ${registersRead} of 8 final register reads succeeded`);
  const finalLists = await workload.finalLists().catch((error: unknown) => {
    problems.push(`final list reads failed: ${String(error)}`);
    return new Map<string, string[]>();
  });
  if (converged) {
    for (let key = 0; key < 8; key++) {
      const name = `reg${key}`;
      const values = await Promise.all(cluster.servers.map(async (server) => {
        try {
          const response = await fetch(`${server.url}/v1/kv/${name}?consistency=local&minSeq=${target}`, { signal: AbortSignal.timeout(5000) });
          return response.status === 404 ? null : response.status === 200 ? await response.text() : `HTTP ${response.status}`;
        } catch (error) {
          return `error ${String(error)}`;
        }
      }));
      finalReads.checked += values.length;
      if (new Set(values).size !== 1) finalReads.mismatches.push(`${name}: ${cluster.servers.map((server, i) => `${server.id}=${values[i]}`).join(' ')}`);
    }
  }
  if (finalReads.mismatches.length > 0) problems.push(`final reads differ between servers: ${finalReads.mismatches.join('; ')}`);

  watching = false;
  await watcher;
  workload.close();
  const end = now();

  // ---- stop everything, then compare the logs on disk
  await cluster.close(true).catch(() => {});
  const logs = await compareServerLogs(cluster.servers.map((server) => ({ id: server.id, dataDir: server.dataDir })));
  if (!logs.identical) problems.push(`the servers' logs differ: ${logs.difference}`);

  // ---- checks
  let linearizable: boolean | 'unknown';
  let linearizability: string;
  try {
    const verdict = checkLinearizability(workload.history, { maxStatesPerKey: 2_000_000 });
    linearizable = verdict.linearizable;
    const bad = verdict.keys.find((key) => !key.linearizable);
    linearizability = bad === undefined ? `linearizable (${verdict.keys.length} keys, ${workload.history.length} operations)` : `NOT linearizable on ${bad.key}: ${bad.explanation ?? ''}`;
  } catch (error) {
    linearizable = 'unknown';
    linearizability = `unknown: ${(error as Error).message}`;
  }
  if (linearizable !== true) problems.push(`linearizability: ${linearizability}`);
  const lists = checkLists(workload.listReads.retained(), workload.listAppends, finalLists);
  if (!lists.ok) problems.push(`lists: lost ${lists.lost.length}, duplicated ${lists.duplicated.length}, reordered ${lists.reordered.length}, unexpected ${lists.unexpected.length} (first: ${[...lists.lost, ...lists.duplicated, ...lists.unexpected].slice(0, 5).join(' ')})`);
  const recovered = recoveryTimes(mainFaults, workload.acks);
  const recovery = { ...percentiles(recovered.filter((ms): ms is number => ms !== undefined)), missing: recovered.filter((ms) => ms === undefined).length };

  const operations: ChaosReport['operations'] = {};
  for (const [kind, counts] of workload.counts) operations[kind] = { ...counts };
  const report: ChaosReport = {
    ok: problems.length === 0, problems, seconds: options.seconds, seed: options.seed, servers: options.servers, ackQuorum: options.ackQuorum,
    operations, faults, failovers: Math.max(0, new Set(epochs).size - 1), epochs,
    recovery, longestUnavailableMs: longestGap(workload.acks.map((ack) => ack.time), 0, end).ms, harnessStallMaxMs: Math.round(loopDelay.max / 1e6),
    acknowledgedWrites: workload.acks.length, linearizable, linearizability, lists, finalReads, logs, converged,
  };
  historyFile.end();
  await writeFile(join(options.outDir, 'report.json'), `${JSON.stringify(report, null, 2)}\n`);
  await writeFile(join(options.outDir, 'report.txt'), formatReport(report));
  if (!options.keepData && report.ok) await import('node:fs/promises').then((fs) => fs.rm(dataDir, { recursive: true, force: true }));
  return report;
}

/** Apply one fault for `durationMs` and undo it; returns what was done, or undefined if it did not apply. */
async function injectFault(cluster: ChaosCluster, kind: NemesisKind, main: string | undefined, standbys: string[], random: Random, durationMs: number): Promise<string | undefined> {
  const all = ['manager', ...cluster.servers.map((server) => server.id)];
  switch (kind) {
    case 'kill-main':
    case 'kill-standby':
    case 'kill-manager': {
      const target = kind === 'kill-main' ? main : kind === 'kill-standby' ? random.pick(standbys) : 'manager';
      if (target === undefined || !cluster.isRunning(target)) return undefined;
      await cluster.kill(target);
      await sleep(durationMs);
      cluster.restart(target);
      return `kill -9 ${target}, restarted after ${durationMs} ms`;
    }
    case 'kill-main-lagging': {
      // The main's appends stop reaching the standbys, then the main dies and what was in flight
      // to them is lost with its connections: whatever it acknowledged must already have been on K
      // standbys.
      if (main === undefined || !cluster.isRunning(main)) return undefined;
      for (const standby of standbys) cluster.block(main, standby, { kind: 'blackhole' }, true);
      const heldMs = random.int(200, 800);
      await sleep(heldMs);
      await cluster.kill(main);
      for (const standby of standbys) cluster.block(main, standby, { kind: 'reset' }, true);
      cluster.healNetwork();
      await sleep(durationMs);
      cluster.restart(main);
      return `nothing from ${main} reaches the standbys for ${heldMs} ms, then kill -9 ${main} (what was in flight is lost), restarted after ${durationMs} ms`;
    }
    case 'pause-main':
    case 'pause-standby':
    case 'pause-manager': {
      const target = kind === 'pause-main' ? main : kind === 'pause-standby' ? random.pick(standbys) : 'manager';
      if (target === undefined || !cluster.isRunning(target)) return undefined;
      cluster.pause(target);
      await sleep(durationMs);
      cluster.resume(target);
      return `SIGSTOP ${target} for ${durationMs} ms, then SIGCONT`;
    }
    case 'partition-main':
    case 'partition-manager-main':
    case 'partition-one-way': {
      if (main === undefined) return undefined;
      const others = kind === 'partition-manager-main' ? ['manager'] : all.filter((name) => name !== main);
      for (const other of others) cluster.block(main, other, { kind: 'blackhole' }, kind === 'partition-one-way');
      await sleep(durationMs);
      cluster.healNetwork();
      return kind === 'partition-one-way' ? `one-way: nothing from ${main} reaches the others for ${durationMs} ms`
        : `partition ${main} from ${others.join(',')} for ${durationMs} ms`;
    }
    case 'partition-halves':
    case 'partition-bridge': {
      const shuffled = [...all].sort(() => random.float() - 0.5);
      const half = Math.ceil(shuffled.length / 2);
      const left = shuffled.slice(0, half);
      const right = shuffled.slice(half);
      const bridge = kind === 'partition-bridge' ? left.pop() : undefined;
      for (const a of left) for (const b of right) cluster.block(a, b);
      await sleep(durationMs);
      cluster.healNetwork();
      return `partition ${left.join(',')} | ${right.join(',')}${bridge === undefined ? '' : ` bridged by ${bridge}`} for ${durationMs} ms`;
    }
    case 'flap': {
      const target = main ?? random.pick(standbys);
      for (const other of all.filter((name) => name !== target)) cluster.block(target, other, { kind: 'flap', periodMs: random.int(100, 600) });
      await sleep(durationMs);
      cluster.healNetwork();
      return `flapping links of ${target} for ${durationMs} ms`;
    }
    case 'delay': {
      const target = random.pick(all);
      const ms = random.int(20, 200);
      for (const other of all.filter((name) => name !== target)) cluster.block(target, other, { kind: 'delay', ms, jitterMs: ms });
      await sleep(durationMs);
      cluster.healNetwork();
      return `links of ${target} delayed ${ms}–${2 * ms} ms for ${durationMs} ms`;
    }
    case 'torn-tail':
    case 'bit-flip': {
      const target = random.pick(standbys);
      if (!cluster.isRunning(target)) return undefined;
      await cluster.kill(target);
      const damaged = kind === 'torn-tail' ? await cluster.tearTail(target, random.int(1, 40)) : await cluster.flipBit(target, random.int(200, 2000));
      await sleep(durationMs);
      cluster.restart(target);
      return `kill -9 ${target}, ${damaged ? (kind === 'torn-tail' ? 'tore its last record' : 'flipped a bit below its tail') : 'log too short to damage'}, restarted after ${durationMs} ms`;
    }
    case 'disk-eio':
    case 'disk-full': {
      const target = random.pick([...(main === undefined ? [] : [main]), ...standbys]);
      await cluster.setDiskFault(target, kind === 'disk-eio' ? 'fsync-eio' : 'write-enospc');
      await sleep(durationMs);
      await cluster.setDiskFault(target, '');
      // A server whose disk failed stops (it cannot trust what it wrote); bring it back.
      cluster.restart(target);
      return `${kind === 'disk-eio' ? 'fsync fails with EIO' : 'writes fail with ENOSPC'} on ${target} for ${durationMs} ms`;
    }
  }
  return undefined;
}

/**
 * Read every server's log from disk (after the processes stopped) and compare them. One log is in
 * memory at a time: each is reduced to compact entry encodings (encodeLogEntry) before the next
 * is read.
 */
async function compareServerLogs(servers: { id: string; dataDir: string }[]): Promise<{ identical: boolean; compared: number; difference?: string }> {
  const logs = [];
  for (const server of servers) {
    try {
      const opened = await openFileLog(server.dataDir);
      const entries = opened.recovered.entries.map(encodeLogEntry);
      logs.push({ server: server.id, firstSeq: opened.recovered.firstSeq, entries });
      await opened.log.close();
    } catch (error) {
      return { identical: false, compared: 0, difference: `cannot read the log of ${server.id}: ${(error as Error).message}` };
    }
  }
  return compareLogs(logs);
}

export function formatReport(report: ChaosReport): string {
  const lines = [
    `Mainstay chaos run: ${report.ok ? 'PASSED' : 'FAILED'}`,
    `  ${report.servers} servers, K = ${report.ackQuorum}, ${report.seconds} s, seed ${report.seed}`,
    `  operations: ${Object.entries(report.operations).map(([kind, c]) => `${kind} ok ${c.ok} / fail ${c.fail} / unknown ${c.info}`).join('; ')}`,
    `  faults: ${Object.entries(report.faults).map(([kind, count]) => `${kind} ${count}`).join(', ') || 'none'}`,
    `  failovers: ${report.failovers} (epochs ${report.epochs.join(',')})`,
    `  from a fault that took the main away to the first write acknowledged by a new main: ${report.recovery.count === 0 ? 'no such fault' : `p50 ${report.recovery.p50} ms, p99 ${report.recovery.p99} ms, max ${report.recovery.max} ms over ${report.recovery.count}`}${report.recovery.missing > 0 ? ` (${report.recovery.missing} without a new main before the next fault)` : ''}`,
    `  longest time without an acknowledged write: ${report.longestUnavailableMs} ms`,
    `  longest stall of the harness's event loop (clients, proxies, nemesis): ${report.harnessStallMaxMs} ms`,
    `  acknowledged writes: ${report.acknowledgedWrites}; acknowledged writes lost: ${report.lists.lost.length} list appends (registers: see linearizability)`,
    `  linearizability: ${report.linearizability}`,
    `  lists: lost ${report.lists.lost.length}, duplicated ${report.lists.duplicated.length}, reordered ${report.lists.reordered.length}, unexpected ${report.lists.unexpected.length}; unknown appends resolved: ${report.lists.unknownApplied} applied, ${report.lists.unknownNotApplied} not`,
    `  final reads on every server: ${report.finalReads.checked} checked, ${report.finalReads.mismatches.length} differ; converged: ${report.converged}`,
    `  committed logs identical: ${report.logs.identical} (${report.logs.compared} entries compared)${report.logs.difference === undefined ? '' : `: ${report.logs.difference}`}`,
  ];
  for (const problem of report.problems) lines.push(`  PROBLEM: ${problem}`);
  return `${lines.join('\n')}\n`;
}
