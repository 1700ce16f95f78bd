// Redis under test: a primary and S − 1 replicas on loopback (the Debian package redis-server),
// each with `appendonly yes` and `appendfsync always` (the write is in the append-only file and
// fsynced before the reply), every write followed by `WAIT 1` (a replica has the write) — the
// "durable on the main and one standby" promise closest to Mainstay's K = 1. Each client has its
// own ioredis connection: WAIT blocks the connection it is sent on, so clients cannot share one.
// A write is SET and WAIT pipelined in one round trip; a read is GET on the primary.

import { execFileSync } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { count, freePorts, keyName, launch, removeDirectory, stopProcess, tail, temporaryDirectory, valueOf, waitFor, type Started } from './common.ts';
import type { ClientSet, Connection, RunningSystem } from './load.ts';

/** How long WAIT waits for a replica, in ms; a write not confirmed in time counts as an error. */
const waitTimeoutMs = 5000;
const preloadBatchKeys = 1000;
const preloadPipelineBatches = 50;

export interface RedisOptions {
  servers: number;
  keys: number;
  valueBytes: number;
  log: (line: string) => void;
}

export function redisVersion(): string {
  try {
    return /v=(\S+)/.exec(execFileSync('redis-server', ['--version'], { encoding: 'utf8' }))?.[1] ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

function connect(port: number): Redis {
  const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, enableAutoPipelining: false, maxRetriesPerRequest: 1, connectTimeout: 5000 });
  // Connection errors also fail the commands in flight, which the load generator counts; without
  // a listener ioredis would print each one.
  client.on('error', () => {});
  return client;
}

export async function startRedis(options: RedisOptions): Promise<RunningSystem> {
  const directory = await temporaryDirectory('mainstay-bench-redis-');
  const processes: Started[] = [];
  const admin: Redis[] = [];
  try {
    const ports = await freePorts(options.servers);
    const primaryPort = ports[0] as number;
    let started = performance.now();
    for (const [i, port] of ports.entries()) {
      const name = i === 0 ? 'primary' : `replica${i}`;
      const dir = join(directory, name);
      await mkdir(dir);
      processes.push(launch(name, 'redis-server', [
        '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--daemonize', 'no', '--loglevel', 'warning',
        '--appendonly', 'yes', '--appendfsync', 'always', '--save', '', '--protected-mode', 'no',
        // Replicas sync at once (the default waits 5 s for more replicas to share a transfer).
        '--repl-diskless-sync-delay', '0',
        ...(i === 0 ? [] : ['--replicaof', '127.0.0.1', String(primaryPort)]),
      ]));
    }
    const primary = connect(primaryPort);
    admin.push(primary);
    try {
      await waitFor('the Redis primary', 30_000, async () => {
        if (primary.status !== 'ready') await primary.connect();
        return (await primary.ping()) === 'PONG' ? true : undefined;
      }, 100, processes);
      await waitFor(`${options.servers - 1} Redis replicas online`, 60_000, async () => {
        const info = await primary.info('replication');
        const online = info.split('\n').filter((line) => /^slave\d+:.*state=online/.test(line)).length;
        return online === options.servers - 1 ? true : undefined;
      }, 100, processes);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${processes.map((started) => tail(started)).join('\n')}`, { cause: error });
    }
    options.log(`  redis: a primary and ${options.servers - 1} replicas up in ${((performance.now() - started) / 1000).toFixed(1)} s`);

    started = performance.now();
    const values = Array.from({ length: 16 }, (_, i) => valueOf(i, options.valueBytes));
    for (let first = 0; first < options.keys; first += preloadBatchKeys * preloadPipelineBatches) {
      const pipeline = primary.pipeline();
      for (let batch = first; batch < Math.min(first + preloadBatchKeys * preloadPipelineBatches, options.keys); batch += preloadBatchKeys) {
        const pairs: (string | Buffer)[] = [];
        for (let index = batch; index < Math.min(batch + preloadBatchKeys, options.keys); index++) pairs.push(keyName(index), values[index & 15] as Buffer);
        pipeline.mset(...pairs);
      }
      const results = await pipeline.exec();
      const failed = results?.find(([error]) => error !== null);
      if (failed !== undefined) throw new Error(`Redis preload: ${(failed[0] as Error).message}`);
    }
    const replicas = await primary.wait(options.servers - 1, 120_000);
    if (replicas < options.servers - 1) throw new Error(`Redis preload: only ${replicas} replicas confirmed it`);
    if (options.keys > 0) options.log(`  redis: loaded ${count(options.keys)} keys in ${((performance.now() - started) / 1000).toFixed(1)} s`);

    return {
      system: 'redis',
      servers: options.servers,
      keys: options.keys,
      pids: () => processes.map((started) => started.pid),
      openClients: async (clients): Promise<ClientSet> => {
        const redisClients = Array.from({ length: clients }, () => connect(primaryPort));
        await Promise.all(redisClients.map((client) => client.connect()));
        const connections = redisClients.map((client): Connection => ({
          async put(key, value) {
            const results = await client.pipeline().set(key, value).wait(1, waitTimeoutMs).exec();
            const [setResult, waitResult] = results ?? [];
            if (setResult === undefined || waitResult === undefined) throw new Error(`redis: no answer to SET and WAIT for ${key}`);
            if (setResult[0] !== null) throw setResult[0];
            if (waitResult[0] !== null) throw waitResult[0];
            if ((waitResult[1] as number) < 1) throw new Error(`redis: WAIT 1 timed out for ${key}`);
          },
          async get(key) {
            if (await client.getBuffer(key) === null) throw new Error(`redis: ${key} is absent`);
          },
        }));
        return { connections, close: async () => { for (const client of redisClients) client.disconnect(); } };
      },
      async check() {
        for (const started of processes) if (started.child.exitCode !== null || started.child.signalCode !== null) return `redis ${started.name} exited`;
        return undefined;
      },
      async stop() {
        for (const client of admin) client.disconnect();
        await Promise.all(processes.map((started) => stopProcess(started)));
        await removeDirectory(directory);
      },
    };
  } catch (error) {
    for (const client of admin) client.disconnect();
    await Promise.all(processes.map((started) => stopProcess(started)));
    await removeDirectory(directory);
    throw error;
  }
}
