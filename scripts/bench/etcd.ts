// etcd under test: S members on loopback (the Debian package etcd-server), data in a temporary
// folder, driven through the etcd3 client (gRPC) aimed at the leader, so that writes are not
// forwarded by a follower (etcd's best case). Reads are linearizable (etcd3's default). etcd
// fsyncs its write-ahead log before a member acknowledges an entry, and commits an entry once a
// majority has it: with 3 members that is the leader and one more, durable on both — the same
// promise as Mainstay's K = 1.

import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';
import { count, freePorts, httpJson, keyName, launch, removeDirectory, stopProcess, tail, temporaryDirectory, valueOf, waitFor, type Started } from './common.ts';
import type { ClientSet, Connection, RunningSystem } from './load.ts';

/** Puts per preload transaction: etcd's default --max-txn-ops. */
const preloadTxnOps = 128;
const preloadConcurrency = 8;

export interface EtcdOptions {
  servers: number;
  keys: number;
  valueBytes: number;
  /** gRPC channels (Etcd3 instances) the clients share; one is how the client is meant to be used. */
  channels: number;
  log: (line: string) => void;
}

export function etcdVersion(): string {
  try {
    return execFileSync('etcd', ['--version'], { encoding: 'utf8' }).split('\n')[0]?.replace('etcd Version: ', '') ?? 'unknown';
  } catch {
    return 'not installed';
  }
}

export async function startEtcd(options: EtcdOptions): Promise<RunningSystem> {
  const directory = await temporaryDirectory('mainstay-bench-etcd-');
  const processes: Started[] = [];
  try {
    const ports = await freePorts(options.servers * 2);
    const members = Array.from({ length: options.servers }, (_, i) => ({
      name: `e${i + 1}`, clientUrl: `http://127.0.0.1:${ports[i * 2]}`, peerUrl: `http://127.0.0.1:${ports[i * 2 + 1]}`,
    }));
    const initialCluster = members.map((member) => `${member.name}=${member.peerUrl}`).join(',');
    let started = performance.now();
    for (const member of members) {
      processes.push(launch(member.name, 'etcd', [
        '--name', member.name, '--data-dir', join(directory, member.name),
        '--listen-client-urls', member.clientUrl, '--advertise-client-urls', member.clientUrl,
        '--listen-peer-urls', member.peerUrl, '--initial-advertise-peer-urls', member.peerUrl,
        '--initial-cluster', initialCluster, '--initial-cluster-token', 'mainstay-bench', '--initial-cluster-state', 'new',
        '--logger', 'zap', '--log-level', 'warn',
        // Room for 10 million keys (the default quota is 2 GB).
        '--quota-backend-bytes', String(8 * 1024 ** 3),
      ]));
    }
    const health = async (url: string): Promise<boolean | undefined> =>
      ((await httpJson(`${url}/health`, { timeoutMs: 2000 })).body as { health?: string }).health === 'true' ? true : undefined;
    let leaderUrl: string;
    try {
      for (const member of members) await waitFor(`etcd ${member.name} to be healthy`, 60_000, () => health(member.clientUrl), 50, processes);
      leaderUrl = await waitFor('an etcd leader', 30_000, async () => {
        for (const member of members) {
          const status = (await httpJson(`${member.clientUrl}/v3/maintenance/status`, { method: 'POST', body: '{}', timeoutMs: 2000 })).body as { header?: { member_id?: string }; leader?: string };
          if (status.leader !== undefined && status.leader === status.header?.member_id) return member.clientUrl;
        }
        return undefined;
      }, 50, processes);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${processes.map((started) => tail(started)).join('\n')}`, { cause: error });
    }
    options.log(`  etcd: ${options.servers} members up in ${((performance.now() - started) / 1000).toFixed(1)} s; leader ${leaderUrl}`);

    // The key space, in transactions of 128 puts through the JSON gateway.
    started = performance.now();
    const values = Array.from({ length: 16 }, (_, i) => valueOf(i, options.valueBytes).toString('base64'));
    let next = 0;
    const loader = async (): Promise<void> => {
      while (next < options.keys) {
        const first = next;
        next = Math.min(first + preloadTxnOps, options.keys);
        const success = [];
        for (let index = first; index < next; index++) {
          success.push({ requestPut: { key: Buffer.from(keyName(index)).toString('base64'), value: values[index & 15] } });
        }
        const answer = await httpJson(`${leaderUrl}/v3/kv/txn`, { method: 'POST', body: JSON.stringify({ success }), timeoutMs: 30_000 });
        if (answer.status !== 200) throw new Error(`etcd preload: HTTP ${answer.status} ${JSON.stringify(answer.body).slice(0, 200)}`);
      }
    };
    await Promise.all(Array.from({ length: preloadConcurrency }, loader));
    if (options.keys > 0) options.log(`  etcd: loaded ${count(options.keys)} keys in ${((performance.now() - started) / 1000).toFixed(1)} s`);

    return {
      system: 'etcd',
      servers: options.servers,
      keys: options.keys,
      pids: () => processes.map((started) => started.pid),
      openClients: async (clients): Promise<ClientSet> => {
        const channels = Array.from({ length: Math.min(options.channels, clients) }, () => new Etcd3({ hosts: leaderUrl }));
        const connections = Array.from({ length: clients }, (_, i): Connection => {
          const client = channels[i % channels.length] as Etcd3;
          return {
            async put(key, value) {
              await client.put(key).value(value).exec();
            },
            async get(key) {
              if (await client.get(key).buffer() === null) throw new Error(`etcd: ${key} is absent`);
            },
          };
        });
        // A round trip on each channel before the clock starts: gRPC connects lazily.
        await Promise.all(channels.map((channel) => channel.get(keyName(0)).buffer()));
        return { connections, close: async () => { for (const channel of channels) channel.close(); } };
      },
      async check() {
        for (const started of processes) if (started.child.exitCode !== null || started.child.signalCode !== null) return `etcd ${started.name} exited`;
        return undefined;
      },
      async stop() {
        await Promise.all(processes.map((started) => stopProcess(started)));
        await removeDirectory(directory);
      },
    };
  } catch (error) {
    await Promise.all(processes.map((started) => stopProcess(started)));
    await removeDirectory(directory);
    throw error;
  }
}
