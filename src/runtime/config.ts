// Configuration of the manager and server processes: one table of options that serves command-
// line flags, environment variables (MAINSTAY_<NAME>), an optional JSON config file, defaults,
// validation with clear errors, and the reference in the README (`mainstay help config`).
// Precedence: flag > environment > config file > default.

import { readFileSync } from 'node:fs';
import type { Server } from 'node:net';
import type { HttpApiLimits } from '../server/http-api.ts';
import { defaultHttpApiLimits } from '../server/http-api.ts';

export type OptionType = 'string' | 'integer' | 'boolean';

export interface OptionSpec {
  name: string;
  type: OptionType;
  default?: string | number | boolean;
  description: string;
  min?: number;
  max?: number;
  required?: boolean;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const common: OptionSpec[] = [
  { name: 'config', type: 'string', description: 'JSON file with any of these options (keys as written here).' },
  { name: 'log-level', type: 'string', default: 'info', description: 'debug, info, warn or error.' },
  { name: 'pretty', type: 'boolean', default: false, description: 'Human-readable logs instead of JSON lines.' },
  { name: 'heartbeat-ms', type: 'integer', default: 100, min: 5, max: 10_000, description: 'How often status, heartbeats and the cluster map are sent.' },
];

export const managerOptions: OptionSpec[] = [
  ...common,
  { name: 'data-dir', type: 'string', default: 'data/manager', description: 'Where the manager persists its epoch, main, members and K.' },
  { name: 'listen-http', type: 'string', default: '127.0.0.1:7000', description: 'host:port of the manager HTTP API and dashboard.' },
  { name: 'listen-peer', type: 'string', default: '127.0.0.1:7200', description: 'host:port where servers reach the manager.' },
  { name: 'servers', type: 'string', required: true, description: 'The initial members: id=httpHost:httpPort/peerHost:peerPort, comma separated (used when the data dir is new).' },
  { name: 'ack-quorum', type: 'integer', default: 1, min: 0, max: 64, description: 'K: standbys that must have a write durably before it commits (used when the data dir is new).' },
  { name: 'failover-after-ms', type: 'integer', default: 1000, min: 50, max: 600_000, description: 'How long a main may be unreachable before it is failed over.' },
  { name: 'initial-epoch', type: 'integer', default: 0, min: 0, max: 0xfffffffe, description: 'For a new cluster started on restored data: the backup\'s epoch (the first main is appointed above it).' },
];

export const serverOptions: OptionSpec[] = [
  ...common,
  { name: 'id', type: 'string', required: true, description: 'This server\'s id, as listed in the manager\'s --servers.' },
  { name: 'data-dir', type: 'string', description: 'Where the log and state live (default data/<id>).' },
  { name: 'listen-http', type: 'string', default: '127.0.0.1:7101', description: 'host:port of the client HTTP API.' },
  { name: 'listen-peer', type: 'string', default: '127.0.0.1:7201', description: 'host:port where the manager and other servers reach this server.' },
  { name: 'manager', type: 'string', default: '127.0.0.1:7200', description: 'host:port of the manager\'s peer listener.' },
  { name: 'write-timeout-ms', type: 'integer', default: 5000, min: 10, max: 600_000, description: 'A write not committed within this time fails with definite:false.' },
  { name: 'read-timeout-ms', type: 'integer', default: 5000, min: 10, max: 600_000, description: 'A read not served within this time fails.' },
  { name: 'key-bytes-max', type: 'integer', default: 1024, min: 1, max: 1978, description: 'Longest key, in UTF-8 bytes (LMDB allows at most 1978).' },
  { name: 'value-bytes-max', type: 'integer', default: 1_048_576, min: 1, max: 16 * 1_048_576, description: 'Largest value, in bytes (at most 16 MiB: a transaction of two such values must fit one 64 MiB replication message).' },
  { name: 'batch-entries-max', type: 'integer', default: 512, min: 1, max: 1_000_000, description: 'Most entries in one replication message.' },
  { name: 'batch-bytes-max', type: 'integer', default: 1_048_576, min: 1024, max: 16 * 1_048_576, description: 'Most bytes of entries in one replication message, roughly (an entry larger than this goes alone; at most 16 MiB, so that a batch of multi-byte keys still fits a 64 MiB message).' },
  { name: 'inflight-entries-max', type: 'integer', default: 8192, min: 1, max: 10_000_000, description: 'Most entries sent to one standby and not yet acknowledged.' },
  { name: 'pending-requests-max', type: 'integer', default: 65_536, min: 1, max: 10_000_000, description: 'Most client requests waiting; more are refused with 429.' },
  { name: 'sessions-max', type: 'integer', default: 100_000, min: 1, max: 100_000_000, description: 'Most client sessions remembered for exactly-once retries.' },
  { name: 'log-retention-entries', type: 'integer', default: 100_000, min: 1, max: 1_000_000_000, description: 'Entries kept in the log below the last one for lagging standbys; older ones are compacted (removed a segment at a time) once the state holds them. A standby further behind receives a snapshot.' },
  { name: 'snapshot-chunk-items', type: 'integer', default: 4096, min: 1, max: 1_000_000, description: 'Most keys per chunk of a snapshot sent to a standby.' },
  { name: 'snapshot-chunk-bytes', type: 'integer', default: 1_048_576, min: 1024, max: 16 * 1_048_576, description: 'About the most bytes of keys and values per chunk of a snapshot sent to a standby (a larger single value goes alone).' },
  { name: 'snapshot-chunks-inflight', type: 'integer', default: 4, min: 1, max: 1024, description: 'Snapshot chunks sent to a standby ahead of its acknowledgement.' },
  { name: 'segment-bytes-max', type: 'integer', default: 64 * 1_048_576, min: 4096, max: 4 * 1024 * 1_048_576, description: 'Size at which a log segment file is closed and a new one started.' },
  { name: 'state-commit-delay-ms', type: 'integer', default: 1000, min: 0, max: 60_000, description: 'How long applied writes gather before they go to the state store (LMDB) in one transaction; the log makes them durable, so longer costs only memory and replay time.' },
  { name: 'trace-steps', type: 'string', description: 'For performance work: append a timeline of this server\'s steps (requests, appends, acknowledgements, sends, durability, answers) to this file; `npm run bench -- --timeline DIR` reads it. Unset: nothing is traced.' },
  { name: 'log-archive-dir', type: 'string', description: 'Folder where log segments are archived before compaction deletes them, in a subfolder named by --id (a hard link on the same file system, else a copy; durable before the deletion). With a backup, it lets mainstay restore --to-seq N roll forward to any later seq. Unset: nothing is archived.' },
];

export type ParsedOptions = Record<string, string | number | boolean | undefined>;

function environmentName(name: string): string {
  return `MAINSTAY_${name.toUpperCase().replace(/-/g, '_')}`;
}

function convert(spec: OptionSpec, raw: unknown, source: string): string | number | boolean {
  if (spec.type === 'boolean') {
    if (typeof raw === 'boolean') return raw;
    if (raw === 'true' || raw === '1' || raw === '') return true;
    if (raw === 'false' || raw === '0') return false;
    throw new ConfigError(`Cannot parse ${spec.name} from ${source}: expected true or false, got ${JSON.stringify(raw)}`);
  }
  if (spec.type === 'integer') {
    const value = typeof raw === 'number' ? raw : Number(raw);
    if (!Number.isInteger(value)) throw new ConfigError(`Cannot parse ${spec.name} from ${source}: expected an integer, got ${JSON.stringify(raw)}`);
    if (spec.min !== undefined && value < spec.min) throw new ConfigError(`${spec.name} must be at least ${spec.min} (got ${value} from ${source})`);
    if (spec.max !== undefined && value > spec.max) throw new ConfigError(`${spec.name} must be at most ${spec.max} (got ${value} from ${source})`);
    return value;
  }
  if (typeof raw !== 'string') throw new ConfigError(`Cannot parse ${spec.name} from ${source}: expected a string`);
  return raw;
}

/** Parse `--name value` / `--name=value` / `--flag` arguments against the specs. */
export function parseOptions(specs: OptionSpec[], argv: string[], environment: NodeJS.ProcessEnv): ParsedOptions {
  const byName = new Map(specs.map((spec) => [spec.name, spec]));
  const fromFlags = new Map<string, unknown>();
  for (let i = 0; i < argv.length; i++) {
    const argument = argv[i] as string;
    if (!argument.startsWith('--')) throw new ConfigError(`Unexpected argument ${JSON.stringify(argument)}; options start with --`);
    const [name, inline] = argument.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    const spec = byName.get(name);
    if (spec === undefined) throw new ConfigError(`Unknown option --${name}; see mainstay help`);
    if (inline !== undefined) fromFlags.set(name, inline);
    else if (spec.type === 'boolean') fromFlags.set(name, true);
    else {
      const next = argv[++i];
      if (next === undefined) throw new ConfigError(`Option --${name} needs a value`);
      fromFlags.set(name, next);
    }
  }
  let fromFile: Record<string, unknown> = {};
  const configPath = (fromFlags.get('config') ?? environment[environmentName('config')]) as string | undefined;
  if (configPath !== undefined) {
    let text: string;
    try {
      text = readFileSync(configPath, 'utf8');
    } catch (error) {
      throw new ConfigError(`Cannot read config file ${configPath}: ${(error as Error).message}`);
    }
    try {
      fromFile = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      throw new ConfigError(`Cannot parse config file ${configPath}: ${(error as Error).message}`);
    }
    if (typeof fromFile !== 'object' || fromFile === null || Array.isArray(fromFile)) throw new ConfigError(`Config file ${configPath} must hold a JSON object`);
    for (const key of Object.keys(fromFile)) {
      if (!byName.has(key)) throw new ConfigError(`Unknown option "${key}" in config file ${configPath}`);
    }
  }
  const result: ParsedOptions = {};
  for (const spec of specs) {
    const flag = fromFlags.get(spec.name);
    const environmentValue = environment[environmentName(spec.name)];
    const fileValue = fromFile[spec.name];
    let value: string | number | boolean | undefined;
    if (flag !== undefined) value = convert(spec, flag, `--${spec.name}`);
    else if (environmentValue !== undefined) value = convert(spec, environmentValue, environmentName(spec.name));
    else if (fileValue !== undefined) value = convert(spec, fileValue, 'the config file');
    else value = spec.default;
    if (value === undefined && spec.required === true) throw new ConfigError(`Missing required option --${spec.name} (or ${environmentName(spec.name)})`);
    result[spec.name] = value;
  }
  return result;
}

export interface HostPort {
  host: string;
  port: number;
}

export function parseHostPort(text: string, what: string): HostPort {
  const match = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text.trim());
  if (match === null) throw new ConfigError(`Cannot parse ${what} "${text}": expected host:port`);
  const port = Number(match[2]);
  if (port > 65_535) throw new ConfigError(`Cannot parse ${what} "${text}": port above 65535`);
  return { host: (match[1] as string).replace(/^\[|\]$/g, ''), port };
}

export interface ServerAddressBook {
  id: string;
  http: HostPort;
  peer: HostPort;
}

/** Parse `s1=127.0.0.1:7101/127.0.0.1:7201,s2=…` */
export function parseServerList(text: string): ServerAddressBook[] {
  const servers: ServerAddressBook[] = [];
  for (const part of text.split(',').map((item) => item.trim()).filter((item) => item !== '')) {
    const match = /^([A-Za-z0-9_.-]{1,64})=([^/]+)\/(.+)$/.exec(part);
    if (match === null) throw new ConfigError(`Cannot parse server "${part}": expected id=httpHost:httpPort/peerHost:peerPort`);
    const id = match[1] as string;
    if (id === 'manager') throw new ConfigError('"manager" is reserved and cannot be a server id');
    if (servers.some((server) => server.id === id)) throw new ConfigError(`Server id ${id} is listed twice`);
    servers.push({ id, http: parseHostPort(match[2] as string, `the HTTP address of ${id}`), peer: parseHostPort(match[3] as string, `the peer address of ${id}`) });
  }
  if (servers.length === 0) throw new ConfigError('--servers lists no server');
  return servers;
}

export function formatHostPort(address: HostPort): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/** The options as a Markdown table, for the README and `mainstay help config`. */
export function optionsReference(specs: OptionSpec[]): string {
  const rows = specs.map((spec) => `| \`--${spec.name}\` | \`${environmentName(spec.name)}\` | ${spec.default === undefined ? (spec.required === true ? '(required)' : '') : `\`${spec.default}\``} | ${spec.description} |`);
  return ['| flag | environment | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}

/** Listen on host:port; rejects (e.g. EADDRINUSE) instead of emitting an unhandled error. */
export function listen(server: Server, address: HostPort): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * The client API's limits of a server from its options: a transaction may carry two of the largest
 * values (and at least the default), a request body their encoding.
 */
export function serverHttpLimits(options: ParsedOptions): HttpApiLimits {
  const valueBytesMax = Number(options['value-bytes-max']);
  return {
    ...defaultHttpApiLimits, keyBytesMax: Number(options['key-bytes-max']), valueBytesMax,
    requestBodyBytesMax: Math.max(defaultHttpApiLimits.requestBodyBytesMax, valueBytesMax * 2 + 65_536),
    txnBytesMax: Math.max(defaultHttpApiLimits.txnBytesMax, valueBytesMax * 2),
  };
}
