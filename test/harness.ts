// A real cluster for integration tests, fault tests and benchmarks: a manager and N servers as
// separate processes on loopback ports chosen by the OS, data in a temporary folder, with
// kill -9, restart, and helpers to wait for a main and talk HTTP. Every wait is bounded.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { CommandOutput } from '../src/cli/backup.ts';

const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

export interface ClusterOptions {
  servers?: number;
  ackQuorum?: number;
  failoverAfterMs?: number;
  heartbeatMs?: number;
  /** Extra flags for every server. */
  serverFlags?: string[];
  /** Keep process output (for debugging a failing test). */
  verbose?: boolean;
}

export interface ProcessInfo {
  name: string;
  args: string[];
  child: ChildProcess | undefined;
  output: string[];
}

export interface ServerInfo extends ProcessInfo {
  id: string;
  httpPort: number;
  peerPort: number;
  url: string;
  dataDir: string;
}

import { freePorts } from '../src/runtime/ports.ts';

export { freePorts };

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(25);
  }
  throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}${lastError === undefined ? '' : ` (last error: ${(lastError as Error).message})`}`);
}

export interface HttpResult {
  status: number;
  headers: Headers;
  text: string;
  json(): unknown;
}

export async function http(url: string, init: RequestInit & { timeoutMs?: number } = {}): Promise<HttpResult> {
  const response = await fetch(url, { ...init, signal: AbortSignal.timeout(init.timeoutMs ?? 5000) });
  const text = await response.text();
  return { status: response.status, headers: response.headers, text, json: () => JSON.parse(text) as unknown };
}

export class TestCluster {
  readonly managerUrl: string;
  readonly servers: ServerInfo[];
  readonly manager: ProcessInfo;
  private closed = false;

  private constructor(readonly dataDir: string, manager: ProcessInfo, managerUrl: string, servers: ServerInfo[], private readonly verbose: boolean) {
    this.manager = manager;
    this.managerUrl = managerUrl;
    this.servers = servers;
  }

  static async start(options: ClusterOptions = {}): Promise<TestCluster> {
    const count = options.servers ?? 3;
    const dataDir = await mkdtemp(join(tmpdir(), 'mainstay-test-'));
    const ports = await freePorts(2 + count * 2);
    const [managerHttp, managerPeer] = ports as [number, number];
    const serverInfo = (id: string, httpPort: number, peerPort: number): ServerInfo => {
      const serverDir = join(dataDir, id);
      return {
        id, name: id, httpPort, peerPort, url: `http://127.0.0.1:${httpPort}`, dataDir: serverDir, child: undefined, output: [],
        args: ['server', '--id', id, '--data-dir', serverDir, '--listen-http', `127.0.0.1:${httpPort}`, '--listen-peer', `127.0.0.1:${peerPort}`,
          '--manager', `127.0.0.1:${managerPeer}`, '--heartbeat-ms', String(options.heartbeatMs ?? 50), ...(options.serverFlags ?? [])],
      };
    };
    const servers: ServerInfo[] = Array.from({ length: count }, (_, i) => serverInfo(`s${i + 1}`, ports[2 + i * 2] as number, ports[3 + i * 2] as number));
    const list = servers.map((server) => `${server.id}=127.0.0.1:${server.httpPort}/127.0.0.1:${server.peerPort}`).join(',');
    const manager: ProcessInfo = {
      name: 'manager', child: undefined, output: [],
      args: ['manager', '--data-dir', join(dataDir, 'manager'), '--listen-http', `127.0.0.1:${managerHttp}`, '--listen-peer', `127.0.0.1:${managerPeer}`,
        '--servers', list, '--ack-quorum', String(options.ackQuorum ?? 1), '--failover-after-ms', String(options.failoverAfterMs ?? 1000),
        '--heartbeat-ms', String(options.heartbeatMs ?? 50)],
    };
    const cluster = new TestCluster(dataDir, manager, `http://127.0.0.1:${managerHttp}`, servers, options.verbose ?? false);
    cluster.serverInfo = serverInfo;
    cluster.launch(manager);
    for (const server of servers) cluster.launch(server);
    try {
      await cluster.waitForMain();
    } catch (error) {
      // Do not leave the processes running (they would keep the test runner alive): stop them,
      // and say how each one ended.
      const tails = [manager, ...servers].map((info) => `[${info.name}${info.child === undefined ? ', exited' : ''}] ${cluster.logs(info).trim().split('\n').slice(-3).join('\n')}`);
      await cluster.close();
      throw new Error(`${(error as Error).message}\n${tails.join('\n')}`, { cause: error });
    }
    return cluster;
  }

  /** Builds a server's ports, data folder and command line (set by start). */
  private serverInfo: ((id: string, httpPort: number, peerPort: number) => ServerInfo) | undefined;

  /**
   * Start one more server process, not in the manager's --servers: it points at the manager but
   * is not a member until added (POST /v1/servers). It joins `servers`, so close() stops it too.
   * Resolves once it answers /healthz.
   */
  async startExtraServer(id: string, timeoutMs = 15_000): Promise<ServerInfo> {
    if (this.closed) throw new Error('The cluster is closed');
    if (this.servers.some((server) => server.id === id)) throw new Error(`A server ${id} already exists`);
    const [httpPort, peerPort] = await freePorts(2) as [number, number];
    const server = (this.serverInfo as (id: string, httpPort: number, peerPort: number) => ServerInfo)(id, httpPort, peerPort);
    this.servers.push(server);
    this.launch(server);
    await this.waitForServer(server, timeoutMs);
    return server;
  }

  private launch(info: ProcessInfo): void {
    const child = spawn(process.execPath, ['--import', 'tsx', entry, ...info.args], { stdio: ['ignore', 'pipe', 'pipe'] });
    info.child = child;
    const keep = (chunk: Buffer): void => {
      const text = chunk.toString();
      info.output.push(text);
      if (info.output.length > 2000) info.output.splice(0, 1000);
      if (this.verbose) process.stderr.write(`[${info.name}] ${text}`);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.on('exit', () => {
      if (info.child === child) info.child = undefined;
    });
  }

  server(id: string): ServerInfo {
    const server = this.servers.find((candidate) => candidate.id === id);
    if (server === undefined) throw new Error(`No server ${id}`);
    return server;
  }

  async cluster(): Promise<{ epoch: number; main: string | null; phase: string; servers: { id: string; status: { acting: string; commitSeq: number; appliedSeq: number; lastSeq: number; incomplete: boolean } | null }[] }> {
    return (await http(`${this.managerUrl}/v1/cluster`, { timeoutMs: 2000 })).json() as never;
  }

  /** Wait until the manager has appointed a main that reports acting as main; return its id. */
  async waitForMain(timeoutMs = 15_000, not?: string): Promise<ServerInfo> {
    const id = await waitFor('a main', timeoutMs, async () => {
      const view = await this.cluster();
      if (view.main === null || view.main === not || view.phase !== 'stable') return undefined;
      const status = view.servers.find((server) => server.id === view.main)?.status;
      if (status?.acting !== 'main') return undefined;
      const direct = (await http(`${this.server(view.main).url}/v1/status`, { timeoutMs: 1000 })).json() as { role: string };
      return direct.role === 'main' ? view.main : undefined;
    });
    return this.server(id);
  }

  /** SIGKILL a process (no chance to flush or say goodbye). */
  async kill(info: ProcessInfo): Promise<void> {
    const child = info.child;
    if (child === undefined) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
  }

  async stop(info: ProcessInfo): Promise<void> {
    const child = info.child;
    if (child === undefined) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(10_000).then(() => child.kill('SIGKILL'))]);
    await exited;
  }

  restart(info: ProcessInfo): void {
    if (info.child !== undefined) throw new Error(`${info.name} is still running`);
    this.launch(info);
  }

  /** Wait until a server answers /v1/status. */
  async waitForServer(server: ServerInfo, timeoutMs = 15_000): Promise<void> {
    await waitFor(`${server.id} to serve`, timeoutMs, async () => ((await http(`${server.url}/healthz`, { timeoutMs: 500 })).status === 200 ? true : undefined));
  }

  logs(info: ProcessInfo): string {
    return info.output.join('');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([this.manager, ...this.servers].map((info) => this.kill(info)));
    await rm(this.dataDir, { recursive: true, force: true });
  }
}

/** Output of an in-process CLI command that a test keeps instead of printing. */
export function capture(): CommandOutput & { text: () => string } {
  const chunks: string[] = [];
  const sink = (): Writable => new Writable({ write(chunk: Buffer, _encoding, done) { chunks.push(chunk.toString()); done(); } });
  return { stdout: sink(), stderr: sink(), text: () => chunks.join('') };
}
