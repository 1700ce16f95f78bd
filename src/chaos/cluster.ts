// The cluster under test for the chaos harness: a manager and N servers as separate processes on
// 127.0.0.1, with every link through a fault-injecting proxy (proxy.ts): one in front of each
// server's peer port (servers and the manager connect there), one in front of the manager's peer
// port (servers connect there), and one in front of each server's HTTP port (clients connect
// there). The manager's member list advertises the proxies, so every process — and every client
// following a "the main is over there" answer — goes through them. The harness itself watches
// the manager's HTTP API directly.
//
// Servers run with the test-only storage faults (src/storage/fault-fs.ts): their log keeps
// unsynced writes in memory, so kill -9 is a power cut for the log, and a control file per server
// makes fsync fail with EIO or writes with ENOSPC on demand.

import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { reservePorts } from '../runtime/ports.ts';
import { crc32, parseSegmentName, scanLog } from '../storage/log-format.ts';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ChaosProxy, type Fault } from './proxy.ts';

const entry = fileURLToPath(new URL('../cli/main.ts', import.meta.url));
const host = '127.0.0.1';

export interface ChaosClusterOptions {
  dataDir: string;
  servers: number;
  ackQuorum: number;
  /** Extra flags for every server (e.g. a planted bug). */
  serverFlags?: string[];
  managerFlags?: string[];
  env?: NodeJS.ProcessEnv;
}

interface Process {
  name: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  child: ChildProcess | undefined;
  paused: boolean;
  log: WriteStream;
}

export interface ChaosServer extends Process {
  id: string;
  dataDir: string;
  faultsFile: string;
  /** Through its proxy. */
  url: string;
  httpProxy: ChaosProxy;
  peerProxy: ChaosProxy;
}

export class ChaosCluster {
  readonly servers: ChaosServer[] = [];
  manager!: Process;
  managerUrl = '';
  managerProxy!: ChaosProxy;
  private closed = false;

  private constructor(private readonly options: ChaosClusterOptions) {}

  static async start(options: ChaosClusterOptions): Promise<ChaosCluster> {
    const cluster = new ChaosCluster(options);
    await cluster.launchAll();
    return cluster;
  }

  private async launchAll(): Promise<void> {
    const { dataDir } = this.options;
    await mkdir(dataDir, { recursive: true });
    const reserved = await reservePorts(2 + 2 * this.options.servers, host);
    const [managerHttp, managerPeer] = reserved.ports as [number, number];
    this.managerProxy = await ChaosProxy.start({ name: 'manager-peer', target: { host, port: managerPeer }, identify: 'hello' });
    this.managerUrl = `http://${host}:${managerHttp}`;
    const members: string[] = [];
    for (let i = 1; i <= this.options.servers; i++) {
      const id = `s${i}`;
      const httpPort = reserved.ports[2 * i] as number;
      const peerPort = reserved.ports[2 * i + 1] as number;
      const httpProxy = await ChaosProxy.start({ name: `${id}-http`, target: { host, port: httpPort }, identify: 'none' });
      const peerProxy = await ChaosProxy.start({ name: `${id}-peer`, target: { host, port: peerPort }, identify: 'hello' });
      const serverDir = join(dataDir, id);
      const faultsFile = join(dataDir, `faults-${id}`);
      await writeFile(faultsFile, '');
      members.push(`${id}=${host}:${httpProxy.address.port}/${host}:${peerProxy.address.port}`);
      this.servers.push({
        id, name: id, dataDir: serverDir, faultsFile, url: `http://${host}:${httpProxy.address.port}`, httpProxy, peerProxy,
        child: undefined, paused: false, log: createWriteStream(join(dataDir, `${id}.log`), { flags: 'a' }),
        env: { ...process.env, ...this.options.env, MAINSTAY_TEST_FAULTS: 'power-loss', MAINSTAY_TEST_FAULTS_FILE: faultsFile },
        args: ['server', '--id', id, '--data-dir', serverDir, '--listen-http', `${host}:${httpPort}`, '--listen-peer', `${host}:${peerPort}`,
          '--manager', `${host}:${this.managerProxy.address.port}`, ...(this.options.serverFlags ?? [])],
      });
    }
    this.manager = {
      name: 'manager', child: undefined, paused: false, log: createWriteStream(join(dataDir, 'manager.log'), { flags: 'a' }),
      env: { ...process.env, ...this.options.env },
      args: ['manager', '--data-dir', join(dataDir, 'manager'), '--listen-http', `${host}:${managerHttp}`, '--listen-peer', `${host}:${managerPeer}`,
        '--servers', members.join(','), '--ack-quorum', String(this.options.ackQuorum), ...(this.options.managerFlags ?? [])],
    };
    await reserved.release();
    this.launch(this.manager);
    for (const server of this.servers) this.launch(server);
  }

  private launch(info: Process): void {
    const child = spawn(process.execPath, ['--import', 'tsx', entry, ...info.args], { stdio: ['ignore', 'pipe', 'pipe'], env: info.env });
    info.child = child;
    info.paused = false;
    child.stdout?.pipe(info.log, { end: false });
    child.stderr?.pipe(info.log, { end: false });
    child.on('exit', () => {
      if (info.child === child) info.child = undefined;
    });
  }

  server(id: string): ChaosServer {
    const server = this.servers.find((candidate) => candidate.id === id);
    if (server === undefined) throw new Error(`No server ${id}`);
    return server;
  }

  processNamed(name: string): Process {
    return name === 'manager' ? this.manager : this.server(name);
  }

  isRunning(name: string): boolean {
    return this.processNamed(name).child !== undefined;
  }

  /** SIGKILL: no flush, no goodbye (a power cut for the log, see fault-fs.ts). */
  async kill(name: string): Promise<void> {
    const info = this.processNamed(name);
    const child = info.child;
    if (child === undefined) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
    info.paused = false;
  }

  restart(name: string): void {
    const info = this.processNamed(name);
    if (info.child !== undefined) return;
    this.launch(info);
  }

  pause(name: string): void {
    const info = this.processNamed(name);
    if (info.child === undefined || info.paused) return;
    info.child.kill('SIGSTOP');
    info.paused = true;
  }

  resume(name: string): void {
    const info = this.processNamed(name);
    if (info.child === undefined || !info.paused) return;
    info.child.kill('SIGCONT');
    info.paused = false;
  }

  /** Make the server's disk fail (fsync with EIO, or writes with ENOSPC), or heal it (''). */
  async setDiskFault(id: string, fault: '' | 'fsync-eio' | 'write-enospc'): Promise<void> {
    await writeFile(this.server(id).faultsFile, fault);
  }

  /**
   * Block the link from process `from` to process `to` (both directions unless oneWay): the
   * proxy in front of `to` holds what `from` sends, and the proxy in front of `from` what `to`
   * sends. Clients are not processes: use blockClients.
   */
  block(from: string, to: string, fault: Fault = { kind: 'blackhole' }, oneWay = false): void {
    this.proxyInFrontOf(to).setFault(from, fault);
    if (!oneWay) this.proxyInFrontOf(from).setFault(to, fault);
  }

  blockClients(id: string, fault: Fault | undefined): void {
    this.server(id).httpProxy.setFault('*', fault);
  }

  private proxyInFrontOf(name: string): ChaosProxy {
    return name === 'manager' ? this.managerProxy : this.server(name).peerProxy;
  }

  /** Every proxy back to passing everything through. */
  healNetwork(): void {
    this.managerProxy.heal();
    for (const server of this.servers) {
      server.peerProxy.heal();
      server.httpProxy.heal();
    }
  }

  /** The newest segment file of a server's log, if any (for torn and flipped tails). */
  async lastSegment(id: string): Promise<string | undefined> {
    const folder = join(this.server(id).dataDir, 'log');
    const names = (await readdir(folder).catch(() => [] as string[])).filter((name) => name.endsWith('.seg')).sort();
    const last = names[names.length - 1];
    return last === undefined ? undefined : join(folder, last);
  }

  /** Cut the last `bytes` bytes of a stopped server's newest segment (a torn write). */
  async tearTail(id: string, bytes: number): Promise<boolean> {
    const path = await this.lastSegment(id);
    if (path === undefined) return false;
    const size = await recordsEnd(path);
    if (size <= bytes) return false;
    const file = await open(path, 'r+');
    try {
      await file.truncate(size - bytes);
      await file.sync();
    } finally {
      await file.close();
    }
    return true;
  }

  /** Flip one bit `fromEnd` bytes before the end of a stopped server's newest segment. */
  async flipBit(id: string, fromEnd: number): Promise<boolean> {
    const path = await this.lastSegment(id);
    if (path === undefined) return false;
    const size = await recordsEnd(path);
    if (size <= fromEnd) return false;
    const file = await open(path, 'r+');
    try {
      const byte = Buffer.alloc(1);
      await file.read(byte, 0, 1, size - fromEnd);
      byte[0] = (byte[0] as number) ^ 0x10;
      await file.write(byte, 0, 1, size - fromEnd);
      await file.sync();
    } finally {
      await file.close();
    }
    return true;
  }

  async close(keepData: boolean): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const info of [this.manager, ...this.servers]) {
      if (info.paused) this.resume(info.name);
    }
    await Promise.all([this.manager, ...this.servers].map((info) => this.kill(info.name)));
    await Promise.all([this.managerProxy, ...this.servers.flatMap((server) => [server.httpProxy, server.peerProxy])].map((proxy) => proxy.close()));
    for (const info of [this.manager, ...this.servers]) info.log.end();
    if (!keepData) await rm(this.options.dataDir, { recursive: true, force: true });
  }
}

/**
 * Where a segment's valid records end, by the recovery scan: the preallocated zeros after them are
 * not its tail (and a record may itself end in zero bytes, so the last non-zero byte is no guide).
 */
async function recordsEnd(path: string): Promise<number> {
  const bytes = await readFile(path);
  const firstSeq = parseSegmentName(basename(path));
  if (firstSeq === undefined) return 0;
  return scanLog([{ firstSeq, bytes }], crc32).kept[0]?.validBytes ?? 0;
}
