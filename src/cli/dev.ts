// `mainstay dev`: a manager and N servers as separate processes on this machine, data under one
// folder, logs prefixed by process and made readable; prints what runs where and how to restart
// each process by hand after a `kill -9`; Ctrl-C stops everything.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import process from 'node:process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { ConfigError, parseOptions, type OptionSpec } from '../runtime/config.ts';

const devOptions: OptionSpec[] = [
  { name: 'servers', type: 'integer', default: 3, min: 1, max: 9, description: 'How many servers.' },
  { name: 'ack-quorum', type: 'integer', default: 1, min: 0, max: 8, description: 'K.' },
  { name: 'data-dir', type: 'string', default: 'data', description: 'Folder for every process\'s data.' },
  { name: 'host', type: 'string', default: '127.0.0.1', description: 'Address to listen on.' },
  { name: 'manager-port', type: 'integer', default: 7000, min: 1, max: 65_000, description: 'Manager HTTP port; its peer port is this + 200.' },
  { name: 'http-port', type: 'integer', default: 7101, min: 1, max: 65_000, description: 'First server HTTP port; peer ports are these + 100.' },
  { name: 'failover-after-ms', type: 'integer', default: 1000, min: 50, max: 600_000, description: 'Failover delay.' },
];

interface Planned {
  name: string;
  args: string[];
}

export async function runDev(argv: string[]): Promise<void> {
  const options = parseOptions(devOptions, argv, {});
  const count = Number(options.servers);
  const ackQuorum = Number(options['ack-quorum']);
  if (ackQuorum > count - 1) throw new ConfigError(`--ack-quorum ${ackQuorum} needs at least ${ackQuorum + 1} servers`);
  const host = String(options.host);
  const dataDir = resolve(String(options['data-dir']));
  const managerHttp = Number(options['manager-port']);
  const managerPeer = managerHttp + 200;
  const firstHttp = Number(options['http-port']);
  await mkdir(dataDir, { recursive: true });

  const servers = Array.from({ length: count }, (_, i) => ({ id: `s${i + 1}`, http: firstHttp + i, peer: firstHttp + 100 + i }));
  const serverList = servers.map((server) => `${server.id}=${host}:${server.http}/${host}:${server.peer}`).join(',');
  const planned: Planned[] = [
    {
      name: 'manager',
      args: ['manager', '--data-dir', `${dataDir}/manager`, '--listen-http', `${host}:${managerHttp}`, '--listen-peer', `${host}:${managerPeer}`,
        '--servers', serverList, '--ack-quorum', String(ackQuorum), '--failover-after-ms', String(options['failover-after-ms']), '--pretty'],
    },
    ...servers.map((server) => ({
      name: server.id,
      args: ['server', '--id', server.id, '--data-dir', `${dataDir}/${server.id}`, '--listen-http', `${host}:${server.http}`,
        '--listen-peer', `${host}:${server.peer}`, '--manager', `${host}:${managerPeer}`, '--pretty'],
    })),
  ];

  const entry = fileURLToPath(new URL('./main.ts', import.meta.url));
  const nodeArguments = [...process.execArgv, entry];
  const command = (item: Planned): string => `node ${process.execArgv.join(' ')} ${entry} ${item.args.map((arg) => (/[\s,=]/.test(arg) ? `'${arg}'` : arg)).join(' ')}`;

  process.stdout.write(`\nMainstay dev cluster: ${count} servers, K = ${ackQuorum}, data in ${dataDir}\n\n`);
  process.stdout.write(`  manager   http://${host}:${managerHttp}   (cluster map: GET /v1/cluster; peers on ${host}:${managerPeer})\n`);
  for (const server of servers) process.stdout.write(`  ${server.id.padEnd(8)}  http://${host}:${server.http}   (peer ${host}:${server.peer})\n`);
  process.stdout.write(`\nTry:\n  curl -X PUT http://${host}:${firstHttp}/v1/kv/a -d hello     (a standby answers 421 with the main's address)\n`);
  process.stdout.write(`  curl http://${host}:${firstHttp}/v1/kv/a\n  npm run mainstay -- status\n`);
  process.stdout.write('\nTo restart a process by hand after kill -9, run its command from this folder:\n');
  for (const item of planned) process.stdout.write(`  ${item.name}: ${command(item)}\n`);
  process.stdout.write('\nCtrl-C stops everything.\n\n');

  const children = new Map<string, ChildProcess>();
  const startedAt = Date.now();
  let stopping = false;
  for (const item of planned) {
    const child = spawn(process.execPath, [...nodeArguments, ...item.args], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.set(item.name, child);
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream }).on('line', (line) => process.stdout.write(`[${item.name.padEnd(7)}] ${line}\n`));
    }
    child.on('exit', (code, signal) => {
      children.delete(item.name);
      if (!stopping && code !== 0 && code !== null && Date.now() - startedAt < 5000) {
        process.stdout.write(`[${item.name.padEnd(7)}] failed to start (code ${code}); stopping the cluster. See its message above.\n`);
        process.exitCode = 1;
        stop();
        return;
      }
      if (!stopping) process.stdout.write(`[${item.name.padEnd(7)}] exited (${signal ?? `code ${code}`}); restart it with: ${command(item)}\n`);
      if (stopping && children.size === 0) process.exit();
    });
  }
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    process.stdout.write('\nStopping every process...\n');
    for (const child of children.values()) child.kill('SIGTERM');
    if (children.size === 0) process.exit();
    setTimeout(() => {
      for (const child of children.values()) child.kill('SIGKILL');
      process.exit(0);
    }, 5000).unref();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}
