// The load generator: a fixed number of clients, each with one request in flight, choosing keys
// uniformly over the key space and writes with a given probability; a warm-up whose operations
// are not counted, then a measured window in which it counts completed operations, records their
// latencies in a histogram and reads the CPU time of every process of the system under test (and
// of itself). Every loop is bounded by time and by a count of operations.

import type { Histogram } from 'hdr-histogram-js';
import { KeyChooser, cpuSpentMs, keyName, latencyHistogram, percentileMs, sampleCpu, sleep, valueOf } from './common.ts';

/** One client's handle on the system under test. Each one has at most one operation in flight. */
export interface Connection {
  put(key: string, value: Buffer): Promise<void>;
  get(key: string): Promise<void>;
}

/** The clients of one run; `close` ends their connections (and fails operations still in flight). */
export interface ClientSet {
  connections: Connection[];
  close(): Promise<void>;
}

/** A started cluster of one system, loaded with `keys` keys. */
export interface RunningSystem {
  readonly system: string;
  readonly servers: number;
  readonly keys: number;
  /** The server that serves the clients (Mainstay's main), for profiles. */
  readonly mainId?: string;
  /** Every process of the cluster (their descendants count too). */
  pids(): number[];
  openClients(count: number, runLabel: string): Promise<ClientSet>;
  /** Checked after each run: a reason the run is not comparable (a failover happened), or undefined. */
  check?(): Promise<string | undefined>;
  stop(): Promise<void>;
}

export interface Workload {
  clients: number;
  /** Share of operations that are writes, 0–100; the rest are reads. */
  writePercent: number;
  warmupMs: number;
  durationMs: number;
  valueBytes: number;
  /** Bound on operations of the whole run (warm-up included), besides the time. */
  operationsMax: number;
  /** How long clients may take to finish their last operation after the window closed. */
  drainTimeoutMs: number;
}

export interface RunResult {
  system: string;
  servers: number;
  clients: number;
  keys: number;
  writePercent: number;
  valueBytes: number;
  /** Operations completed inside the measured window. */
  operations: number;
  errors: number;
  firstError?: string;
  seconds: number;
  operationsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  meanMs: number;
  /** CPU time of every process of the cluster during the window, per operation. */
  clusterCpuMsPerOperation: number;
  /** Cluster CPU during the window over its length: how many cores the cluster kept busy. */
  clusterCores: number;
  /** CPU time of the bench process itself (the clients) per operation. */
  benchCpuMsPerOperation: number;
  /** The window on CLOCK_MONOTONIC in microseconds (the clock of `node --cpu-prof` profiles). */
  windowMonotonicUs: [number, number];
  /** Set when the run is not comparable (a failover happened during it). */
  warning?: string;
}

const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);

export async function runLoad(system: RunningSystem, workload: Workload, runLabel: string): Promise<RunResult> {
  const clientSet = await system.openClients(workload.clients, runLabel);
  const histogram: Histogram = latencyHistogram();
  let operations = 0;
  let errors = 0;
  let firstError: string | undefined;
  let started = 0;
  const startedAt = performance.now();
  let windowStart = Number.POSITIVE_INFINITY;
  let windowEnd = Number.POSITIVE_INFINITY;
  const stopAt = startedAt + workload.warmupMs + workload.durationMs;
  const values = Array.from({ length: 16 }, (_, i) => valueOf(i, workload.valueBytes));

  const client = async (index: number, connection: Connection): Promise<void> => {
    const chooser = new KeyChooser(index * 7919 + runLabel.length, system.keys);
    let own = 0;
    while (started < workload.operationsMax) {
      const write = chooser.percent(workload.writePercent);
      const key = keyName(chooser.next());
      started++;
      const begin = performance.now();
      if (begin >= stopAt) break;
      let failed = false;
      try {
        if (write) await connection.put(key, values[own++ & 15] as Buffer);
        else await connection.get(key);
      } catch (error) {
        failed = true;
        firstError ??= (error as Error).message;
      }
      const end = performance.now();
      if (end >= windowStart && end <= windowEnd) {
        if (failed) errors++;
        else {
          operations++;
          histogram.recordValue(Math.max(1, Math.round((end - begin) * 1000)));
        }
      }
      // A failing system answers at once: do not spin on it.
      if (failed) await sleep(10);
    }
  };

  // The window: CPU samples first, then the instant, so that the CPU read covers the window.
  let cpuBefore = sampleCpu(system.pids());
  let benchCpuBefore = process.cpuUsage();
  let monotonicStart = 0;
  let monotonicEnd = 0;
  let clusterCpuMs = 0;
  let benchCpuMs = 0;
  const windowOpens = setTimeout(() => {
    cpuBefore = sampleCpu(system.pids());
    benchCpuBefore = process.cpuUsage();
    monotonicStart = monotonicUs();
    windowStart = performance.now();
  }, workload.warmupMs);
  const windowCloses = setTimeout(() => {
    windowEnd = performance.now();
    monotonicEnd = monotonicUs();
    const benchCpu = process.cpuUsage(benchCpuBefore);
    benchCpuMs = (benchCpu.user + benchCpu.system) / 1000;
    clusterCpuMs = cpuSpentMs(cpuBefore, sampleCpu(system.pids()));
  }, workload.warmupMs + workload.durationMs);

  const running = Promise.all(clientSet.connections.map((connection, index) => client(index, connection)));
  let drained = false;
  try {
    await Promise.race([
      running.then(() => { drained = true; }),
      sleep(workload.warmupMs + workload.durationMs + workload.drainTimeoutMs),
    ]);
  } finally {
    clearTimeout(windowOpens);
    clearTimeout(windowCloses);
    // Closing fails whatever is still in flight, which ends the stuck clients.
    await clientSet.close();
  }
  if (!drained) {
    errors++;
    firstError ??= `operations still in flight ${workload.drainTimeoutMs} ms after the window closed`;
  }
  // Bounded too: a driver that does not fail its operations on close must not hang the bench.
  await Promise.race([running, sleep(5000)]);
  if (!Number.isFinite(windowEnd)) {
    // The operation bound ended the run before the window closed.
    windowEnd = performance.now();
    monotonicEnd = monotonicUs();
    const benchCpu = process.cpuUsage(benchCpuBefore);
    benchCpuMs = (benchCpu.user + benchCpu.system) / 1000;
    clusterCpuMs = cpuSpentMs(cpuBefore, sampleCpu(system.pids()));
  }
  const seconds = Math.max(0, windowEnd - windowStart) / 1000;
  const result: RunResult = {
    system: system.system,
    servers: system.servers,
    clients: workload.clients,
    keys: system.keys,
    writePercent: workload.writePercent,
    valueBytes: workload.valueBytes,
    operations,
    errors,
    seconds,
    operationsPerSecond: seconds > 0 ? operations / seconds : 0,
    p50Ms: percentileMs(histogram, 50),
    p99Ms: percentileMs(histogram, 99),
    p999Ms: percentileMs(histogram, 99.9),
    maxMs: histogram.totalCount === 0 ? Number.NaN : histogram.maxValue / 1000,
    meanMs: histogram.totalCount === 0 ? Number.NaN : histogram.mean / 1000,
    clusterCpuMsPerOperation: operations > 0 ? clusterCpuMs / operations : Number.NaN,
    clusterCores: seconds > 0 ? clusterCpuMs / 1000 / seconds : Number.NaN,
    benchCpuMsPerOperation: operations > 0 ? benchCpuMs / operations : Number.NaN,
    windowMonotonicUs: [monotonicStart, monotonicEnd],
  };
  if (firstError !== undefined) result.firstError = firstError;
  if (started >= workload.operationsMax) result.warning = `stopped at --operations-max ${workload.operationsMax}`;
  const problem = await system.check?.();
  if (problem !== undefined) result.warning = problem;
  return result;
}
