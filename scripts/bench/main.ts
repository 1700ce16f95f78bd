// `npm run bench -- [options]`: throughput, latency and CPU per operation of a local Mainstay
// cluster under a fixed number of clients (each with one request in flight), and with --compare
// of etcd and Redis at the same durability, in the same run, on the same machine; plus the floor
// (this disk's fsync and the loopback round trip). See docs/BENCHMARKS.md.

import { execFileSync } from 'node:child_process';
import { readdir, writeFile } from 'node:fs/promises';
import { cpus, release } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { cleanUp, cleanUpOnSignals, count, cpuSpentMs, sampleCpu, sleep } from './common.ts';
import { etcdVersion, startEtcd } from './etcd.ts';
import { measureFloor, type Floor } from './floor.ts';
import { runLoad, type RunResult, type RunningSystem, type Workload } from './load.ts';
import { httpClientKinds, startMainstay, type HttpClientKind } from './mainstay.ts';
import { formatProfileSummary, summarizeProfile, type ProfileSummary } from './profile-summary.ts';
import { redisVersion, startRedis } from './redis.ts';
import { analyzeTimeline, formatTimeline, readTrace } from './timeline.ts';

const usage = `Usage: npm run bench -- [options]

  --compare                 also run etcd and Redis (same as --systems mainstay,etcd,redis)
  --systems LIST            mainstay, etcd, redis (default mainstay)
  --runs LIST               workloads as CLIENTSxWRITE%, e.g. 64x100,1x100,64x0 (the default)
  --clients LIST            with --writes: every combination (overrides --runs), e.g. 1,16,64,256
  --writes LIST             write percentages, e.g. 100,0,50
  --keys LIST               key-space sizes, e.g. 10k,1M,10M (default 10k)
  --servers LIST            cluster sizes, e.g. 3,5 (default 3)
  --duration SECONDS        measured window of each run (default 15)
  --warmup SECONDS          warm-up before it, not counted (default 3)
  --value-bytes N           value size (default 100)
  --ack-quorum K            Mainstay's K (default 1)
  --http-client KIND        how clients talk to Mainstay: wire (the binary protocol), undici,
                            agent or fetch (HTTP) (default wire)
  --wire-connections N      wire connections the clients share (default 1)
  --compare-http-clients    run Mainstay once with each client kind
  --no-sessions             Mainstay writes without Mainstay-Client-Id/Request-Id
  --etcd-channels N         gRPC channels the etcd clients share (default 1)
  --cpu-prof DIR            write CPU profiles of Mainstay's servers to DIR and summarise the main's per run
  --timeline DIR            trace Mainstay's servers' steps into DIR and print the stages of a round per run
  --server-flags "FLAGS"    extra flags for every Mainstay server
  --operations-max N        bound on the operations of one run (default 20000000)
  --no-floor                skip the fsync and round-trip measurements
  --json FILE               also write every result as JSON
  --help`;

// `--server-flags "--flag value"`: parseArgs takes a separate value that starts with a dash for an
// option of its own, so the pair is joined as `--server-flags=…`.
const args = process.argv.slice(2);
for (let i = 0; i < args.length - 1; i++) if (args[i] === '--server-flags') args.splice(i, 2, `--server-flags=${args[i + 1] as string}`);

const parseOptions = { args, options: {
  compare: { type: 'boolean', default: false },
  systems: { type: 'string' },
  runs: { type: 'string', default: '64x100,1x100,64x0' },
  clients: { type: 'string' },
  writes: { type: 'string' },
  keys: { type: 'string', default: '10k' },
  servers: { type: 'string', default: '3' },
  duration: { type: 'string', default: '15' },
  warmup: { type: 'string', default: '3' },
  'value-bytes': { type: 'string', default: '100' },
  'ack-quorum': { type: 'string', default: '1' },
  'http-client': { type: 'string', default: 'wire' },
  'wire-connections': { type: 'string', default: '1' },
  'compare-http-clients': { type: 'boolean', default: false },
  'no-sessions': { type: 'boolean', default: false },
  'etcd-channels': { type: 'string', default: '1' },
  'cpu-prof': { type: 'string' },
  timeline: { type: 'string' },
  'server-flags': { type: 'string', default: '' },
  'operations-max': { type: 'string', default: '20000000' },
  'no-floor': { type: 'boolean', default: false },
  json: { type: 'string' },
  help: { type: 'boolean', default: false },
} } as const;
let parsed: ReturnType<typeof parseArgs<typeof parseOptions>>;
try {
  parsed = parseArgs(parseOptions);
} catch (error) {
  fail((error as Error).message);
}
const { values } = parsed;
if (values.help) {
  console.log(usage);
  process.exit(0);
}

function fail(message: string): never {
  console.error(`${message}\n\n${usage}`);
  process.exit(2);
}

function wholeNumber(name: string, text: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const match = /^(\d+(?:\.\d+)?)([kKmM]?)$/.exec(text.trim());
  if (match === null) fail(`--${name}: cannot read "${text}" as a number`);
  const factor = { '': 1, k: 1000, K: 1000, m: 1_000_000, M: 1_000_000 }[match[2] as string] as number;
  const value = Math.round(Number(match[1]) * factor);
  if (value < min || value > max) fail(`--${name}: ${value} is not between ${min} and ${max}`);
  return value;
}
const list = (name: string, text: string, min: number, max?: number): number[] => text.split(',').map((item) => wholeNumber(name, item, min, max));

const systems = (values.systems ?? (values.compare ? 'mainstay,etcd,redis' : 'mainstay')).split(',').map((name) => name.trim());
for (const name of systems) if (!['mainstay', 'etcd', 'redis'].includes(name)) fail(`--systems: unknown system ${name}`);
let workloads: { clients: number; writePercent: number }[];
if (values.clients !== undefined || values.writes !== undefined) {
  const clientsList = list('clients', values.clients ?? '64', 1, 4096);
  const writesList = list('writes', values.writes ?? '100', 0, 100);
  workloads = clientsList.flatMap((clients) => writesList.map((writePercent) => ({ clients, writePercent })));
} else {
  workloads = values.runs.split(',').map((run) => {
    const [clients, writes] = run.split('x');
    if (clients === undefined || writes === undefined) fail(`--runs: "${run}" is not CLIENTSxWRITE%`);
    return { clients: wholeNumber('runs', clients, 1, 4096), writePercent: wholeNumber('runs', writes, 0, 100) };
  });
}
const keySizes = list('keys', values.keys, 1, 100_000_000);
const serverCounts = list('servers', values.servers, 2, 9);
const durationMs = wholeNumber('duration', values.duration, 1, 3600) * 1000;
const warmupMs = wholeNumber('warmup', values.warmup, 0, 600) * 1000;
const valueBytes = wholeNumber('value-bytes', values['value-bytes'], 1, 1_048_576);
const ackQuorum = wholeNumber('ack-quorum', values['ack-quorum'], 0, 8);
const etcdChannels = wholeNumber('etcd-channels', values['etcd-channels'], 1, 256);
const wireConnections = wholeNumber('wire-connections', values['wire-connections'], 1, 1024);
const operationsMax = wholeNumber('operations-max', values['operations-max'], 1);
if (!(httpClientKinds as string[]).includes(values['http-client'])) fail(`--http-client: one of ${httpClientKinds.join(', ')}`);
const httpClients: HttpClientKind[] = values['compare-http-clients'] ? httpClientKinds : [values['http-client'] as HttpClientKind];
const cpuProfileDir = values['cpu-prof'] === undefined ? undefined : resolve(values['cpu-prof']);
const timelineDir = values.timeline === undefined ? undefined : resolve(values.timeline);
const serverFlags = values['server-flags'].split(' ').filter((flag) => flag !== '');
for (const servers of serverCounts) if (ackQuorum > servers - 1) fail(`--ack-quorum ${ackQuorum} needs at least ${ackQuorum + 1} servers`);

const log = (line: string): void => console.log(line);

// ---------------------------------------------------------------- the machine

function commandOutput(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

function describeMachine(): Record<string, string> {
  return {
    cores: String(cpus().length),
    cpu: cpus()[0]?.model ?? 'unknown',
    kernel: release(),
    node: process.version,
    etcd: systems.includes('etcd') ? etcdVersion() : 'not run',
    redis: systems.includes('redis') ? redisVersion() : 'not run',
    disk: commandOutput('df', ['-h', '--output=source,fstype,size', resolve(process.env.TMPDIR ?? '/tmp')]).split('\n').slice(1).join(' ').replace(/\s+/g, ' '),
  };
}

const loadAverage = (): string => commandOutput('cat', ['/proc/loadavg']).split(' ').slice(0, 3).join(' ');

// ---------------------------------------------------------------- the table

const mix = (writePercent: number): string => (writePercent === 100 ? '100% w' : writePercent === 0 ? '100% r' : `${writePercent}% w`);
const fixed = (value: number, digits: number): string => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const milliseconds = (value: number): string => (!Number.isFinite(value) ? '-' : value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2));

interface Row extends RunResult {
  label: string;
  ratios: Record<string, { throughput: number; p50: number; p99: number }>;
}

function compareRows(rows: Row[]): void {
  for (const row of rows) {
    if (row.system !== 'mainstay') continue;
    for (const peer of rows) {
      if (peer.system === 'mainstay' || peer.servers !== row.servers || peer.clients !== row.clients || peer.keys !== row.keys || peer.writePercent !== row.writePercent) continue;
      row.ratios[peer.system] = { throughput: row.operationsPerSecond / peer.operationsPerSecond, p50: row.p50Ms / peer.p50Ms, p99: row.p99Ms / peer.p99Ms };
    }
  }
}

function renderTable(rows: Row[]): string {
  const peers = ['etcd', 'redis'].filter((peer) => rows.some((row) => row.system === peer));
  const header = ['system', 'servers', 'clients', 'keys', 'mix', 'ops/s', 'p50 ms', 'p99 ms', 'p999 ms', 'CPU ms/op', 'client CPU ms/op', 'errors',
    ...peers.map((peer) => `vs ${peer}: ops/s, p50, p99`)];
  const body = rows.map((row) => [
    row.label, String(row.servers), String(row.clients), count(row.keys), mix(row.writePercent), count(row.operationsPerSecond),
    milliseconds(row.p50Ms), milliseconds(row.p99Ms), milliseconds(row.p999Ms), fixed(row.clusterCpuMsPerOperation, 3), fixed(row.benchCpuMsPerOperation, 3),
    String(row.errors) + (row.warning === undefined ? '' : ' !'),
    ...peers.map((peer) => {
      const ratio = row.ratios[peer];
      return ratio === undefined ? '' : `${fixed(ratio.throughput, 2)}×, ${fixed(ratio.p50, 2)}×, ${fixed(ratio.p99, 2)}×`;
    }),
  ]);
  const widths = header.map((title, i) => Math.max(title.length, ...body.map((cells) => (cells[i] as string).length)));
  const line = (cells: string[]): string => `| ${cells.map((cell, i) => (i <= 4 ? cell.padEnd(widths[i] as number) : cell.padStart(widths[i] as number))).join(' | ')} |`;
  return [line(header), `|${widths.map((width, i) => (i <= 4 ? `:${'-'.repeat(width + 1)}` : `${'-'.repeat(width + 1)}:`)).join('|')}|`, ...body.map(line)].join('\n');
}

// ---------------------------------------------------------------- run

/** A measured run's window on the shared monotonic clock, for the CPU profiles and the timeline. */
interface RunWindow {
  label: string;
  fromUs: number;
  toUs: number;
  mainServerId: string;
}

cleanUpOnSignals();
const machine = describeMachine();
const loadBefore = loadAverage();
const startedAt = new Date().toISOString();
log(`Mainstay bench, ${startedAt}: ${machine.cores} cores (${machine.cpu}), Linux ${machine.kernel}, Node.js ${machine.node}, etcd ${machine.etcd}, Redis ${machine.redis}`);
log(`  disk of the data folders: ${machine.disk}; load average before: ${loadBefore}`);
log(`  systems ${systems.join(', ')}; runs ${workloads.map((workload) => `${workload.clients} clients ${mix(workload.writePercent)}`).join(', ')}; keys ${keySizes.map(count).join(', ')}; servers ${serverCounts.join(', ')}; ${durationMs / 1000} s each after ${warmupMs / 1000} s of warm-up; ${valueBytes}-byte values`);

const rows: Row[] = [];
const idle: { system: string; servers: number; keys: number; cores: number }[] = [];
const profiles: { run: string; file: string; summary: ProfileSummary }[] = [];
/** The floor, measured before and after the runs (other work on the disk moves it). */
const floors: Floor[] = [];
let floor: Floor | undefined;

async function floorNow(when: string): Promise<Floor> {
  log(`\nThe floor ${when}: fsync and loopback round trip`);
  const measured = await measureFloor();
  log(`  fsync (4 KiB appended + fdatasync): p50 ${milliseconds(measured.fsyncAppendP50Ms)} ms, p99 ${milliseconds(measured.fsyncAppendP99Ms)} ms; 128 B appended: p50 ${milliseconds(measured.fsyncSmallAppendP50Ms)} ms; 4 KiB overwritten in place: p50 ${milliseconds(measured.fsyncOverwriteP50Ms)} ms`);
  log(`  loopback TCP round trip: p50 ${milliseconds(measured.tcpRoundTripP50Ms)} ms, p99 ${milliseconds(measured.tcpRoundTripP99Ms)} ms; an HTTP PUT to a Node.js server that does nothing: p50 ${milliseconds(measured.httpRoundTripP50Ms)} ms`);
  log(`  floor = fsync (appended) + round trip = ${milliseconds(measured.floorMs)} ms`);
  return measured;
}
let exitCode = 0;
try {
  if (!values['no-floor']) floors.push(await floorNow('before the runs'));
  for (const servers of serverCounts) {
    for (const keys of keySizes) {
      const variants: { system: string; label: string; httpClient?: HttpClientKind }[] = systems.flatMap((system) => (system === 'mainstay'
        ? httpClients.map((httpClient) => ({ system, httpClient, label: httpClients.length > 1 ? `mainstay (${httpClient})` : 'mainstay' }))
        : [{ system, label: system }]));
      for (const variant of variants) {
        log(`\n${variant.label}: ${servers} servers, ${count(keys)} keys`);
        const profileDir = cpuProfileDir === undefined || variant.system !== 'mainstay' ? undefined
          : join(cpuProfileDir, `${servers}servers-${keys}keys${variant.httpClient === undefined ? '' : `-${variant.httpClient}`}`);
        const traceDir = timelineDir === undefined || variant.system !== 'mainstay' ? undefined
          : join(timelineDir, `${servers}servers-${keys}keys${variant.httpClient === undefined ? '' : `-${variant.httpClient}`}`);
        let system: RunningSystem;
        if (variant.system === 'mainstay') {
          system = await startMainstay({ servers, ackQuorum, keys, valueBytes, httpClient: variant.httpClient as HttpClientKind, wireConnections, sessions: !values['no-sessions'], serverFlags, log,
            ...(profileDir === undefined ? {} : { cpuProfileDir: profileDir }), ...(traceDir === undefined ? {} : { traceStepsDir: traceDir }) });
        } else if (variant.system === 'etcd') {
          system = await startEtcd({ servers, keys, valueBytes, channels: etcdChannels, log });
        } else {
          system = await startRedis({ servers, keys, valueBytes, log });
        }
        const runWindows: RunWindow[] = [];
        try {
          // What the cluster burns doing nothing (heartbeats, timers): part of every CPU figure.
          const before = sampleCpu(system.pids());
          await sleep(2000);
          const idleCores = cpuSpentMs(before, sampleCpu(system.pids())) / 2000;
          idle.push({ system: variant.label, servers, keys, cores: idleCores });
          log(`  idle cluster: ${fixed(idleCores, 3)} cores`);
          for (const workload of workloads) {
            const full: Workload = { ...workload, warmupMs, durationMs, valueBytes, operationsMax, drainTimeoutMs: 20_000 };
            const runLabel = `${variant.system}-${servers}s-${keys}k-${workload.clients}c-${workload.writePercent}w-${rows.length}`;
            const result = await runLoad(system, full, runLabel);
            const row: Row = { ...result, label: variant.label, ratios: {} };
            rows.push(row);
            log(`  ${String(workload.clients).padStart(3)} clients ${mix(workload.writePercent)}: ${count(result.operationsPerSecond)} ops/s, p50 ${milliseconds(result.p50Ms)} ms, p99 ${milliseconds(result.p99Ms)} ms, p999 ${milliseconds(result.p999Ms)} ms, `
              + `cluster ${fixed(result.clusterCpuMsPerOperation, 3)} CPU ms/op (${fixed(result.clusterCores, 2)} cores), client ${fixed(result.benchCpuMsPerOperation, 3)} CPU ms/op, ${result.errors} errors`
              + `${result.firstError === undefined ? '' : ` (first: ${result.firstError})`}${result.warning === undefined ? '' : `; WARNING: ${result.warning}`}`);
            if ((profileDir !== undefined || traceDir !== undefined) && system.mainId !== undefined) {
              runWindows.push({ label: `${count(workload.clients)} clients ${mix(workload.writePercent)}`, fromUs: result.windowMonotonicUs[0], toUs: result.windowMonotonicUs[1], mainServerId: system.mainId });
            }
          }
        } finally {
          await system.stop();
        }
        if (traceDir !== undefined) {
          // The servers wrote their traces out as they stopped.
          const ids = (await readdir(traceDir)).filter((file) => file.endsWith('.steps')).map((file) => file.slice(0, -'.steps'.length));
          const traces = new Map(await Promise.all(ids.map(async (id) => [id, await readTrace(join(traceDir, `${id}.steps`))] as const)));
          for (const run of runWindows) {
            const main = traces.get(run.mainServerId) ?? [];
            const standbys = [...traces].filter(([id]) => id !== run.mainServerId).map(([, events]) => events);
            log(`\nTimeline of ${run.label} (${traceDir}):\n${formatTimeline(analyzeTimeline(main, standbys, run.fromUs, run.toUs))}`);
          }
        }
        if (profileDir !== undefined) {
          await writeFile(join(profileDir, 'windows.json'), `${JSON.stringify(runWindows, null, 2)}\n`);
          // The main's main thread: the bench aims every client at the main.
          for (const run of runWindows) {
            const serverDir = join(profileDir, run.mainServerId);
            const name = (await readdir(serverDir)).find((file) => /^CPU\.\d+\.\d+\.\d+\.0\.\d+\.cpuprofile$/.test(file));
            if (name === undefined) throw new Error(`No profile of ${run.mainServerId}'s main thread in ${serverDir}`);
            const file = join(serverDir, name);
            const summary = summarizeProfile(file, { fromUs: run.fromUs, toUs: run.toUs, top: 10 });
            profiles.push({ run: `${variant.label}, ${servers} servers, ${count(keys)} keys, ${run.label}`, file, summary });
            log(`\nCPU profile of the main (${file}) during ${run.label}:\n${formatProfileSummary(summary)}`);
          }
        }
      }
    }
  }
  if (!values['no-floor']) floors.push(await floorNow('after the runs'));
} catch (error) {
  console.error(error);
  exitCode = 1;
} finally {
  await cleanUp();
}
if (floors.length > 0) {
  // The mean of the measurements before and after the runs, field by field.
  const mean = (field: keyof Floor): number => floors.reduce((sum, measured) => sum + measured[field], 0) / floors.length;
  floor = {
    fsyncAppendP50Ms: mean('fsyncAppendP50Ms'), fsyncAppendP99Ms: mean('fsyncAppendP99Ms'), fsyncSmallAppendP50Ms: mean('fsyncSmallAppendP50Ms'),
    fsyncOverwriteP50Ms: mean('fsyncOverwriteP50Ms'), tcpRoundTripP50Ms: mean('tcpRoundTripP50Ms'), tcpRoundTripP99Ms: mean('tcpRoundTripP99Ms'),
    httpRoundTripP50Ms: mean('httpRoundTripP50Ms'), floorMs: mean('floorMs'),
  };
}


const loadAfter = loadAverage();
compareRows(rows);
if (rows.length > 0) {
  log(`\nResults (${durationMs / 1000} s per run after ${warmupMs / 1000} s of warm-up, ${valueBytes}-byte values; load average before ${loadBefore}, after ${loadAfter}):\n`);
  log(renderTable(rows));
  log('\nCPU ms/op: CPU time of every process of the cluster during the window, per operation (idle cost included); client CPU ms/op: the bench process itself.');
  if (rows.some((row) => Object.keys(row.ratios).length > 0)) log('vs PEER: Mainstay ÷ the peer in the same row: throughput (higher is better), p50 and p99 (lower is better).');
  for (const row of rows) if (row.warning !== undefined) log(`! ${row.label} ${row.clients} clients ${mix(row.writePercent)}: ${row.warning}`);
  if (floor !== undefined) {
    for (const row of rows) {
      if (row.clients !== 1 || row.writePercent !== 100) continue;
      const inPlaceFloorMs = floor.fsyncOverwriteP50Ms + floor.tcpRoundTripP50Ms;
      log(`Single-client write p50 of ${row.label} (${row.servers} servers, ${count(row.keys)} keys): ${milliseconds(row.p50Ms)} ms = ${fixed(row.p50Ms / floor.floorMs, 2)} × the floor`
        + ` (fsync of an append ${milliseconds(floor.fsyncAppendP50Ms)} + round trip ${milliseconds(floor.tcpRoundTripP50Ms)} = ${milliseconds(floor.floorMs)} ms);`
        + ` ${fixed(row.p50Ms / inPlaceFloorMs, 2)} × the in-place floor (fsync of an overwrite ${milliseconds(floor.fsyncOverwriteP50Ms)} + round trip = ${milliseconds(inPlaceFloorMs)} ms)`);
    }
  }
}
if (values.json !== undefined) {
  await writeFile(values.json, `${JSON.stringify({ startedAt, machine, loadAverageBefore: loadBefore, loadAverageAfter: loadAfter, floor, floors, idle, results: rows,
    profiles: profiles.map((profile) => ({ run: profile.run, file: profile.file, ...profile.summary })),
    options: { systems, workloads, keySizes, serverCounts, durationMs, warmupMs, valueBytes, ackQuorum, httpClients, wireConnections, sessions: !values['no-sessions'], etcdChannels } }, null, 2)}\n`);
  log(`\nWrote ${values.json}`);
}
process.exitCode = exitCode;
