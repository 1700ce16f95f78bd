// The CLI's client commands, built on the client library (so they find the main, follow
// NOT_MAIN and retry exactly-once like any application would), and the operator commands that
// ask the manager for a switchover or a membership or K change.

import { once } from 'node:events';
import process from 'node:process';
import { connect, MainstayError, type WatchOptions } from '../client/client.ts';
import { ConfigError, parseOptions, type OptionSpec } from '../runtime/config.ts';

export const clientCommands = ['put', 'get', 'del', 'list', 'txn', 'watch', 'status', 'switchover', 'add-server', 'remove-server', 'set-ack-quorum'];

const options: OptionSpec[] = [
  { name: 'endpoint', type: 'string', default: 'http://127.0.0.1:7000', description: 'Manager or server URL(s), comma separated.' },
  { name: 'if-version', type: 'integer', min: 0, description: 'Only if the key\'s version is this (0 = absent).' },
  { name: 'if-absent', type: 'boolean', description: 'Only if the key does not exist.' },
  { name: 'consistency', type: 'string', description: 'linearizable (default) or local.' },
  { name: 'min-seq', type: 'integer', min: 0, description: 'Local reads: wait until this seq is applied.' },
  { name: 'limit', type: 'integer', min: 1, max: 1000, description: 'Most keys to list.' },
  { name: 'from-seq', type: 'integer', min: 0, description: 'watch: the changes after this seq (default: those committed from now on).' },
  { name: 'to', type: 'string', description: 'Switchover target server id.' },
  { name: 'address', type: 'string', description: 'add-server: the server\'s client HTTP base URL (http://host:port).' },
  { name: 'peer-address', type: 'string', description: 'add-server: host:port of the server\'s peer listener.' },
  { name: 'priority', type: 'integer', min: -1_000_000, max: 1_000_000, description: 'add-server: failover tie-break, higher wins (default 0).' },
  { name: 'json', type: 'boolean', default: false, description: 'Print JSON.' },
];

function split(argv: string[]): { positional: string[]; flags: string[] } {
  const positional: string[] = [];
  const flags: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const argument = argv[i] as string;
    if (!argument.startsWith('--')) {
      positional.push(argument);
      continue;
    }
    flags.push(argument);
    const spec = options.find((option) => option.name === argument.slice(2));
    if (spec !== undefined && spec.type !== 'boolean' && !argument.includes('=') && i + 1 < argv.length) flags.push(argv[++i] as string);
  }
  return { positional, flags };
}

function need(positional: string[], count: number, usage: string): void {
  if (positional.length !== count) throw new ConfigError(`Usage: mainstay ${usage}`);
}

export async function runClientCommand(command: string, argv: string[]): Promise<void> {
  const { positional, flags } = split(argv);
  const parsed = parseOptions(options, flags, process.env);
  const endpoints = String(parsed.endpoint).split(',').map((item) => item.trim()).filter((item) => item !== '');
  const client = connect({ endpoints });
  const print = (value: unknown): void => {
    process.stdout.write(typeof value === 'string' ? `${value}\n` : `${JSON.stringify(value, null, parsed.json === true ? 0 : 2)}\n`);
  };
  try {
    switch (command) {
      case 'put': {
        need(positional, 2, 'put KEY VALUE [--if-version N | --if-absent]');
        const putOptions: { ifVersion?: number; ifAbsent?: boolean } = {};
        if (parsed['if-version'] !== undefined) putOptions.ifVersion = Number(parsed['if-version']);
        if (parsed['if-absent'] === true) putOptions.ifAbsent = true;
        print(await client.put(positional[0] as string, positional[1] as string, putOptions));
        return;
      }
      case 'get': {
        need(positional, 1, 'get KEY [--consistency local|linearizable] [--min-seq N]');
        const getOptions: { consistency?: 'local' | 'linearizable'; minSeq?: number } = {};
        if (parsed.consistency !== undefined) {
          if (parsed.consistency !== 'local' && parsed.consistency !== 'linearizable') throw new ConfigError('--consistency must be local or linearizable');
          getOptions.consistency = parsed.consistency;
        }
        if (parsed['min-seq'] !== undefined) getOptions.minSeq = Number(parsed['min-seq']);
        const item = await client.get(positional[0] as string, getOptions);
        if (item === undefined) {
          process.stderr.write(`mainstay: key ${JSON.stringify(positional[0])} not found\n`);
          process.exitCode = 3;
          return;
        }
        if (parsed.json === true) print({ value: item.text(), version: item.version });
        else print(item.text());
        return;
      }
      case 'del': {
        need(positional, 1, 'del KEY [--if-version N]');
        const deleteOptions: { ifVersion?: number } = {};
        if (parsed['if-version'] !== undefined) deleteOptions.ifVersion = Number(parsed['if-version']);
        print(await client.delete(positional[0] as string, deleteOptions));
        return;
      }
      case 'list': {
        if (positional.length > 1) throw new ConfigError('Usage: mainstay list [PREFIX] [--limit N]');
        const listOptions: { limit?: number } = {};
        if (parsed.limit !== undefined) listOptions.limit = Number(parsed.limit);
        const items = await client.list(positional[0] ?? '', listOptions);
        if (parsed.json === true) print(items);
        else for (const item of items) print(`${item.key}\t${item.version}\t${new TextDecoder().decode(item.value)}`);
        return;
      }
      case 'txn': {
        need(positional, 1, 'txn JSON');
        let body: unknown;
        try {
          body = JSON.parse(positional[0] as string);
        } catch (error) {
          throw new ConfigError(`Cannot parse the transaction JSON: ${(error as Error).message}`);
        }
        print(await client.txn(body as Parameters<typeof client.txn>[0]));
        return;
      }
      case 'watch':
        if (positional.length > 1) throw new ConfigError('Usage: mainstay watch [PREFIX] [--from-seq N]');
        return await watch(client, positional[0] ?? '', parsed['from-seq'] === undefined ? undefined : Number(parsed['from-seq']));
      case 'status':
        return await printStatus(endpoints, parsed.json === true);
      case 'switchover':
        return await switchover(endpoints, parsed.to === undefined ? undefined : String(parsed.to));
      case 'add-server': {
        const usage = 'add-server ID --address http://host:port --peer-address host:port [--priority N]';
        need(positional, 1, usage);
        if (parsed.address === undefined || parsed['peer-address'] === undefined) throw new ConfigError(`add-server needs --address and --peer-address. Usage: mainstay ${usage}`);
        const body: Record<string, unknown> = { id: positional[0], address: String(parsed.address), peerAddress: String(parsed['peer-address']) };
        if (parsed.priority !== undefined) body.priority = Number(parsed.priority);
        return await operate(endpoints, 'add-server', 'POST', '/v1/servers', body, parsed.json === true,
          `It joins as a learner and becomes a standby once it has caught up: follow it with mainstay status.`);
      }
      case 'remove-server': {
        need(positional, 1, 'remove-server ID');
        const id = positional[0] as string;
        return await operate(endpoints, 'remove-server', 'DELETE', `/v1/servers/${encodeURIComponent(id)}`, undefined, parsed.json === true,
          `A standby is removed once the main confirms the new configuration: follow it with mainstay status. `
          + `Then stop the ${id} process: it is not told it was removed, and would keep serving local reads from a state no longer updated.`);
      }
      case 'set-ack-quorum': {
        need(positional, 1, 'set-ack-quorum K');
        const text = positional[0] as string;
        if (!/^\d+$/.test(text)) throw new ConfigError(`K must be a whole number, 0 or more (got ${JSON.stringify(text)}). Usage: mainstay set-ack-quorum K`);
        return await operate(endpoints, 'set-ack-quorum', 'PUT', '/v1/ack-quorum', { ackQuorum: Number(text) }, parsed.json === true,
          `Raising K takes full effect once the main confirms it: follow it with mainstay status.`);
      }
    }
  } catch (error) {
    if (error instanceof MainstayError) {
      process.stderr.write(`mainstay: ${error.code}: ${error.message}${error.definite ? '' : ' (the write may still have been applied)'}\n`);
      process.exitCode = 1;
      return;
    }
    throw error;
  } finally {
    client.close();
  }
}

/**
 * Prints one JSON line per committed change of keys with the prefix, in seq order, until Ctrl-C
 * (or SIGTERM); the client resumes on another server when a stream ends, and says so on stderr.
 */
async function watch(client: ReturnType<typeof connect>, prefix: string, fromSeq: number | undefined): Promise<void> {
  const stop = new AbortController();
  const onSignal = (): void => stop.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const options: WatchOptions = {
    prefix, signal: stop.signal,
    onChange: async (change) => {
      // A slow reader of stdout slows the stream down rather than filling memory.
      if (!process.stdout.write(`${JSON.stringify(change)}\n`)) await once(process.stdout, 'drain');
    },
    onReconnect: (info) => {
      const where = info.after === undefined ? '' : `; resuming after ${info.after}`;
      process.stderr.write(`mainstay: ${info.endpoint === undefined ? '' : `the stream from ${info.endpoint} ended: `}${info.reason}${where}\n`);
    },
  };
  if (fromSeq !== undefined) options.fromSeq = fromSeq;
  try {
    await client.watch(options);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

interface ClusterView {
  epoch: number;
  main: string | null;
  phase: string;
  ackQuorum: number;
  failoverReason?: string;
  configurationChangePending?: boolean;
  jointWith?: { ackQuorum: number; sinceMapVersion: number; members: { id: string; role: string }[] } | null;
  pendingRemoval?: string | null;
  servers: {
    id: string; role: string; address: string; health: string;
    status: { promisedEpoch: number; acting: string; lastSeq: number; commitSeq: number; appliedSeq: number; incomplete: boolean } | null;
  }[];
}

async function fetchCluster(endpoints: string[]): Promise<ClusterView> {
  let lastError: unknown;
  for (const endpoint of endpoints) {
    try {
      const response = await fetch(new URL('/v1/cluster', endpoint), { signal: AbortSignal.timeout(3000) });
      if (response.ok) return await response.json() as ClusterView;
      lastError = new Error(`${endpoint} answered ${response.status}`);
    } catch (error) {
      lastError = error;
    }
  }
  throw new Error(`Cannot reach the manager at ${endpoints.join(', ')}: ${(lastError as Error).message}. Is the cluster running (npm start)?`);
}

async function printStatus(endpoints: string[], json: boolean): Promise<void> {
  const cluster = await fetchCluster(endpoints);
  if (json) {
    process.stdout.write(`${JSON.stringify(cluster)}\n`);
    return;
  }
  const mainCommit = cluster.servers.find((server) => server.id === cluster.main)?.status?.commitSeq ?? 0;
  const rows = [['SERVER', 'ROLE', 'EPOCH', 'LASTSEQ', 'COMMITSEQ', 'LAG', 'HEALTH', 'ADDRESS']];
  for (const server of cluster.servers) {
    const status = server.status;
    let role = server.id === cluster.main ? (status?.acting === 'main' ? 'main' : 'main (starting)') : server.role;
    if (server.id === cluster.pendingRemoval) role += ' (being removed)';
    else if (role === 'learner') role += ' (catching up)';
    rows.push([
      server.id, role + (status?.incomplete === true ? ' (incomplete)' : ''), String(status?.promisedEpoch ?? '-'), String(status?.lastSeq ?? '-'),
      String(status?.commitSeq ?? '-'), status === null ? '-' : String(Math.max(0, mainCommit - status.appliedSeq)), server.health, server.address,
    ]);
  }
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  process.stdout.write(`epoch ${cluster.epoch}, K = ${cluster.ackQuorum}, ${cluster.phase === 'fencing' ? `failover in progress: ${cluster.failoverReason}` : `main ${cluster.main ?? 'none'}`}\n`);
  const pending = pendingChange(cluster);
  if (pending !== undefined) process.stdout.write(`configuration change pending: ${pending}\n`);
  for (const row of rows) process.stdout.write(`${row.map((cell, column) => cell.padEnd(widths[column]!)).join('  ')}\n`);
}

async function switchover(endpoints: string[], to: string | undefined): Promise<void> {
  let lastError = '';
  for (const endpoint of endpoints) {
    try {
      const response = await fetch(new URL('/v1/switchover', endpoint), {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(to === undefined ? {} : { to }),
        signal: AbortSignal.timeout(10_000),
      });
      const body = await response.json() as { error?: { message: string } };
      if (!response.ok) throw new ConfigError(`Switchover refused: ${body.error?.message ?? response.status}`);
      process.stdout.write(`${JSON.stringify(body)}\n`);
      return;
    } catch (error) {
      if (error instanceof ConfigError) throw error;
      lastError = (error as Error).message;
    }
  }
  throw new Error(`Cannot reach the manager at ${endpoints.join(', ')}: ${lastError}`);
}

/** One line describing a configuration change the main has not confirmed yet, if any. */
function pendingChange(cluster: ClusterView): string | undefined {
  const joint = cluster.jointWith ?? null;
  const removing = cluster.pendingRemoval ?? null;
  if (cluster.configurationChangePending !== true && joint === null && removing === null) return undefined;
  const parts: string[] = [];
  if (removing !== null) parts.push(`removing ${removing}`);
  if (joint !== null) {
    if (joint.ackQuorum !== cluster.ackQuorum) parts.push(`K ${joint.ackQuorum} → ${cluster.ackQuorum}`);
    const standbys = joint.members.filter((member) => member.role === 'standby' && member.id !== cluster.main).map((member) => member.id);
    parts.push(`until the main confirms configuration ${joint.sinceMapVersion}, failover also follows the previous one (K = ${joint.ackQuorum}, standbys ${standbys.length === 0 ? 'none' : standbys.join(', ')})`);
  } else {
    parts.push('waiting for the manager to finish it');
  }
  return parts.join('; ');
}

interface ManagerAnswer {
  accepted?: boolean;
  message?: string;
  error?: { code: string; message: string };
}

/**
 * Sends an operator request to the manager (the first endpoint that is one: a server answers 404)
 * and prints its answer. A refusal (409) or a rejected request (400) prints the manager's message
 * and sets exit code 1.
 */
async function operate(endpoints: string[], command: string, method: string, path: string, body: unknown, json: boolean, next: string): Promise<void> {
  const problems: string[] = [];
  for (const endpoint of endpoints) {
    let status: number;
    let answer: ManagerAnswer;
    try {
      const init: RequestInit = { method, signal: AbortSignal.timeout(10_000) };
      if (body !== undefined) {
        init.headers = { 'content-type': 'application/json' };
        init.body = JSON.stringify(body);
      }
      const response = await fetch(new URL(path, endpoint), init);
      status = response.status;
      const text = await response.text();
      try {
        answer = JSON.parse(text) as ManagerAnswer;
      } catch {
        answer = { error: { code: 'UNPARSABLE', message: text.slice(0, 200) } };
      }
    } catch (error) {
      problems.push(`${endpoint}: ${(error as Error).message}`);
      continue;
    }
    if (status === 404 || status === 405 || status === 421) {
      // Not the manager (a server, or something else): try the next endpoint.
      problems.push(`${endpoint} is not the manager (it answered ${status})`);
      continue;
    }
    if (status === 202 && answer.accepted === true) {
      if (json) process.stdout.write(`${JSON.stringify(answer)}\n`);
      else process.stdout.write(`${answer.message ?? 'Accepted'}.\n${next}\n`);
      return;
    }
    const message = answer.error?.message ?? answer.message ?? `HTTP ${status}`;
    if (json) process.stdout.write(`${JSON.stringify(answer)}\n`);
    if (status === 409) process.stderr.write(`mainstay: ${command} refused: ${message}\n`);
    else if (status === 400) process.stderr.write(`mainstay: ${command}: the manager rejected the request: ${message}\n`);
    else process.stderr.write(`mainstay: ${command}: the manager answered ${status}: ${message}\n`);
    process.exitCode = 1;
    return;
  }
  throw new Error(`Cannot reach the manager at ${endpoints.join(', ')} (${problems.join('; ')}). Is the cluster running (npm start)? Operator commands need the manager's URL in --endpoint.`);
}
