// What every part of the bench shares: the child processes it starts (and stops, also on failure
// or Ctrl-C), their CPU time read from /proc, latency histograms, keys and values, and bounded
// waiting. Everything here talks to 127.0.0.1 only.

import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { build, type Histogram } from 'hdr-histogram-js';

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** How long a process may take to stop after SIGTERM before it is killed. */
const stopTimeoutMs = 10_000;
/** Lines of a process's output kept, to explain a failure. */
const outputLinesMax = 400;

// ---------------------------------------------------------------- processes

export interface Started {
  name: string;
  child: ChildProcess;
  pid: number;
  output: string[];
  exited: Promise<void>;
}

const running = new Set<Started>();
const temporaryDirectories = new Set<string>();

/** Start a child process that the bench stops at the end (or on failure, or on a signal). */
export function launch(name: string, command: string, args: string[], options: SpawnOptions = {}): Started {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  const output: string[] = [];
  // A spawn failure (command missing) is an 'error' event, not an exit: keep it as output.
  child.once('error', (error) => output.push(`spawn error: ${error.message}`));
  if (child.pid === undefined) {
    const hint = command === 'etcd' || command === 'redis-server' ? '; install it with `bash scripts/bench-peers.sh`' : '';
    throw new Error(`Cannot start ${name}: ${command} was not found or could not run${hint}`);
  }
  const keep = (chunk: Buffer): void => {
    output.push(chunk.toString());
    if (output.length > outputLinesMax) output.splice(0, outputLinesMax / 2);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const started: Started = { name, child, pid: child.pid, output, exited };
  running.add(started);
  void exited.then(() => running.delete(started));
  return started;
}

export function isRunning(started: Started): boolean {
  return started.child.exitCode === null && started.child.signalCode === null;
}

/** SIGTERM, then SIGKILL after stopTimeoutMs; resolves once it has exited. */
export async function stopProcess(started: Started, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (!isRunning(started)) return;
  started.child.kill(signal);
  const killer = setTimeout(() => started.child.kill('SIGKILL'), stopTimeoutMs);
  await started.exited;
  clearTimeout(killer);
}

export function tail(started: Started, lines = 5): string {
  return `[${started.name}${isRunning(started) ? '' : `, exited ${started.child.exitCode ?? started.child.signalCode}`}] `
    + started.output.join('').trim().split('\n').slice(-lines).join('\n');
}

export async function temporaryDirectory(prefix: string): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), prefix));
  temporaryDirectories.add(directory);
  return directory;
}

export async function removeDirectory(directory: string): Promise<void> {
  await rm(directory, { recursive: true, force: true });
  temporaryDirectories.delete(directory);
}

/** Stop every process still running and remove every temporary directory. */
export async function cleanUp(keepDirectories = false): Promise<void> {
  await Promise.all([...running].map((started) => stopProcess(started)));
  if (!keepDirectories) await Promise.all([...temporaryDirectories].map((directory) => removeDirectory(directory)));
}

let interrupted = false;
/** On Ctrl-C or SIGTERM: stop the children, remove the folders, exit. A second signal kills them at once. */
export function cleanUpOnSignals(): void {
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) {
      for (const started of running) started.child.kill('SIGKILL');
      process.exit(130);
    }
    interrupted = true;
    console.error(`\n${signal}: stopping the bench's processes`);
    void cleanUp().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

// ---------------------------------------------------------------- ports and waiting

// The same helper the tests use.
export { freePorts } from '../../test/harness.ts';

/**
 * Probe until it returns a value; throws after timeoutMs with the last error, or at once when
 * any of `watched` has exited (a process that died will not start answering).
 */
export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, pauseMs = 50, watched: Started[] = []): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    const dead = watched.find((started) => !isRunning(started));
    if (dead !== undefined) throw new Error(`${dead.name} exited while waiting for ${what}`);
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(pauseMs);
  }
  throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}${lastError === undefined ? '' : ` (last error: ${(lastError as Error).message})`}`);
}

/** A small HTTP request for setup and status probes (not for the measured load). */
export async function httpJson(url: string, init: RequestInit & { timeoutMs?: number } = {}): Promise<{ status: number; body: unknown }> {
  const response = await fetch(url, { ...init, signal: AbortSignal.timeout(init.timeoutMs ?? 5000) });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON: keep the text.
  }
  return { status: response.status, body };
}

// ---------------------------------------------------------------- CPU time from /proc

const clockTicksPerSecond = 100;

/** utime + stime of one process (all its threads), in milliseconds; undefined once it is gone. */
function processCpuMs(pid: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) is in parentheses and may contain spaces: count from its end.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // fields[0] is field 3 (state), so utime (field 14) is fields[11] and stime (15) fields[12].
  return (Number(fields[11]) + Number(fields[12])) * 1000 / clockTicksPerSecond;
}

/** Every process below the given ones (children, grandchildren…), found by parent id. */
function withDescendants(roots: number[]): number[] {
  const parents = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const text = readFileSync(`/proc/${name}/stat`, 'utf8');
      const parent = Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1]);
      const children = parents.get(parent) ?? [];
      children.push(Number(name));
      parents.set(parent, children);
    } catch {
      // It exited meanwhile.
    }
  }
  const all = new Set<number>();
  const visit = (pid: number): void => {
    if (all.has(pid)) return;
    all.add(pid);
    for (const child of parents.get(pid) ?? []) visit(child);
  };
  for (const root of roots) visit(root);
  return [...all];
}

/** CPU milliseconds of each process (and its descendants) at one moment. */
export type CpuSample = Map<number, number>;

export function sampleCpu(roots: number[]): CpuSample {
  const sample: CpuSample = new Map();
  for (const pid of withDescendants(roots)) {
    const ms = processCpuMs(pid);
    if (ms !== undefined) sample.set(pid, ms);
  }
  return sample;
}

/** CPU milliseconds spent between two samples (a process born in between counts from 0). */
export function cpuSpentMs(before: CpuSample, after: CpuSample): number {
  let total = 0;
  for (const [pid, ms] of after) total += ms - (before.get(pid) ?? 0);
  return total;
}

// ---------------------------------------------------------------- latency

/** Latencies in microseconds, 3 significant digits, up to two minutes. */
export function latencyHistogram(): Histogram {
  return build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3, autoResize: true });
}

export function percentileMs(histogram: Histogram, percentile: number): number {
  return histogram.totalCount === 0 ? Number.NaN : histogram.getValueAtPercentile(percentile) / 1000;
}

// ---------------------------------------------------------------- keys and values

/** The key of index i (0-based), the same in every system: fixed width, so every key has one length. */
export function keyName(index: number): string {
  return `key${String(index).padStart(10, '0')}`;
}

/** A printable value of `bytes` bytes, different per seed. */
export function valueOf(seed: number, bytes: number): Buffer {
  const value = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) value[i] = 97 + ((seed + i * 7) % 26);
  return value;
}

/** A small, fast PRNG (xorshift32) for key choice and the read/write mix; seeded per client so runs repeat. */
export class KeyChooser {
  private state: number;
  constructor(seed: number, private readonly keyCount: number) {
    this.state = (Math.imul(seed + 1, 2654435761) >>> 0) || 1;
  }
  private next32(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
  /** A key index, uniform over [0, keyCount): 2^32 draws spread over at most a few ten million keys. */
  next(): number {
    return Math.floor(this.next32() / 4_294_967_296 * this.keyCount);
  }
  /** True with probability percent / 100. */
  percent(percent: number): boolean {
    if (percent >= 100) return true;
    if (percent <= 0) return false;
    return this.next32() % 10_000 < percent * 100;
  }
}

export const count = (value: number): string => Math.round(value).toLocaleString('en-US');
