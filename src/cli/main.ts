// The `mainstay` command: runs a manager or a server process, a whole local cluster (`dev`), and
// the client commands (put, get, del, list, txn, watch, status, switchover). Errors are printed in one
// line with what to do, and set a non-zero exit code.

import process from 'node:process';
import { pino, type Logger } from 'pino';
import { defaultServerLimits, defaultServerTimings } from '../core/server.ts';
import { ConfigError, managerOptions, optionsReference, parseHostPort, parseOptions, parseServerList, serverHttpLimits, serverOptions } from '../runtime/config.ts';
import { runClientCommand, clientCommands } from './client-commands.ts';
import { runDev } from './dev.ts';

const usage = `Usage: mainstay <command> [options]

Processes:
  manager      run the manager (see: mainstay help manager)
  server       run a server (see: mainstay help server)
  dev          run a manager and three servers on this machine, data in ./data

Data:
  backup --out FILE [--endpoint URL] [--force]    stream a consistent snapshot from a server (the main preferred)
  restore --in FILE (--data-dir DIR | --id ID) [--log-archive DIR --to-seq N]
                                                  build a new server data directory from a backup,
                                                  rolled forward to seq N from a log archive

Client (options: --endpoint URL, default http://127.0.0.1:7000):
  put KEY VALUE [--if-version N | --if-absent]
  get KEY [--consistency local|linearizable] [--min-seq N]
  del KEY [--if-version N]
  list [PREFIX] [--limit N]
  txn JSON            atomic compares and operations (see the README)
  watch [PREFIX] [--from-seq N]
                      one JSON line per committed change, in seq order, resuming on
                      another server if one fails; Ctrl-C stops
  status              every server: role, epoch, lastSeq, commitSeq, lag, health
  switchover [--to ID]

Membership and K (asks the manager at --endpoint; a refusal prints why and exits with 1):
  add-server ID --address http://host:port --peer-address host:port [--priority N]
                      joins as a learner, becomes a standby once caught up
  remove-server ID    not the main: switch over first
  set-ack-quorum K    K standbys must hold a write before it is acknowledged

  help [manager|server]
`;

function logger(options: Record<string, unknown>, name: string): Logger {
  const level = String(options['log-level']);
  if (options.pretty === true) {
    return pino({ level, name }, pino.transport({ target: 'pino-pretty', options: { colorize: process.stdout.isTTY, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname' } }));
  }
  return pino({ level, name });
}

async function runManager(argv: string[]): Promise<void> {
  const options = parseOptions(managerOptions, argv, process.env);
  const log = logger(options, 'manager');
  const { startManagerProcess } = await import('../runtime/manager-process.ts');
  const servers = parseServerList(String(options.servers));
  const ackQuorum = Number(options['ack-quorum']);
  if (ackQuorum > servers.length - 1) throw new ConfigError(`--ack-quorum ${ackQuorum} needs at least ${ackQuorum + 1} servers (a main and ${ackQuorum} standbys); --servers lists ${servers.length}`);
  const manager = await startManagerProcess({
    initialEpoch: Number(options['initial-epoch']),
    dataDir: String(options['data-dir']),
    listenHttp: parseHostPort(String(options['listen-http']), '--listen-http'),
    listenPeer: parseHostPort(String(options['listen-peer']), '--listen-peer'),
    servers, ackQuorum,
    heartbeatMs: Number(options['heartbeat-ms']),
    failoverAfterMs: Number(options['failover-after-ms']),
    logger: log,
  });
  stopOnSignals(log, () => manager.close());
}

async function runServer(argv: string[]): Promise<void> {
  const options = parseOptions(serverOptions, argv, process.env);
  const id = String(options.id);
  const log = logger(options, id);
  const { startServerProcess } = await import('../runtime/server-process.ts');
  const heartbeatMs = Number(options['heartbeat-ms']);
  const server = await startServerProcess({
    id,
    dataDir: options['data-dir'] === undefined ? `data/${id}` : String(options['data-dir']),
    listenHttp: parseHostPort(String(options['listen-http']), '--listen-http'),
    listenPeer: parseHostPort(String(options['listen-peer']), '--listen-peer'),
    manager: parseHostPort(String(options.manager), '--manager'),
    timings: {
      ...defaultServerTimings, heartbeatMs,
      contactTimeoutMs: Math.max(defaultServerTimings.contactTimeoutMs, heartbeatMs * 5),
      retransmitMs: Math.max(defaultServerTimings.retransmitMs, heartbeatMs * 4),
      writeTimeoutMs: Number(options['write-timeout-ms']),
      readTimeoutMs: Number(options['read-timeout-ms']),
    },
    limits: {
      ...defaultServerLimits,
      batchEntriesMax: Number(options['batch-entries-max']),
      batchBytesMax: Number(options['batch-bytes-max']),
      inflightEntriesMax: Math.max(Number(options['inflight-entries-max']), Number(options['batch-entries-max'])),
      pendingRequestsMax: Number(options['pending-requests-max']),
      sessionsMax: Number(options['sessions-max']),
      logRetentionEntries: Number(options['log-retention-entries']),
      snapshotChunkItemsMax: Number(options['snapshot-chunk-items']),
      snapshotChunkBytesMax: Number(options['snapshot-chunk-bytes']),
      snapshotChunksInflightMax: Number(options['snapshot-chunks-inflight']),
    },
    httpLimits: serverHttpLimits(options),
    segmentBytesMax: Number(options['segment-bytes-max']),
    stateCommitDelayMs: Number(options['state-commit-delay-ms']),
    ...(options['log-archive-dir'] === undefined ? {} : { logArchiveDir: String(options['log-archive-dir']) }),
    ...(options['trace-steps'] === undefined ? {} : { traceStepsFile: String(options['trace-steps']) }),
    logger: log,
  });
  stopOnSignals(log, () => server.close());
}

function stopOnSignals(log: Logger, close: () => Promise<void>): void {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'Stopping');
    setTimeout(() => {
      log.error('Did not stop within 15 s; exiting anyway');
      process.exit(1);
    }, 15_000).unref();
    close().then(() => {
      log.flush();
      process.exit(0);
    }, (error: unknown) => {
      log.error({ err: error }, 'Error while stopping');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(usage);
      return;
    case 'help':
      if (rest[0] === 'manager') process.stdout.write(`mainstay manager options:\n\n${optionsReference(managerOptions)}\n`);
      else if (rest[0] === 'server') process.stdout.write(`mainstay server options:\n\n${optionsReference(serverOptions)}\n`);
      else process.stdout.write(usage);
      return;
    case 'manager':
      return runManager(rest);
    case 'server':
      return runServer(rest);
    case 'dev':
      return runDev(rest);
    case 'backup': {
      const { runBackup } = await import('./backup.ts');
      await runBackup(rest);
      return;
    }
    case 'restore': {
      const { runRestore } = await import('./backup.ts');
      await runRestore(rest);
      return;
    }
    default:
      if (clientCommands.includes(command)) return runClientCommand(command, rest);
      throw new ConfigError(`Unknown command "${command}"; run mainstay help`);
  }
}

main(process.argv.slice(2)).catch((error: unknown) => {
  if (error instanceof ConfigError) {
    process.stderr.write(`mainstay: ${error.message}\n`);
    process.exit(2);
  }
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE') {
    const address = (error as { address?: string; port?: number });
    process.stderr.write(`mainstay: ${address.address}:${address.port} is already in use: is another Mainstay process (or cluster) running? Stop it or choose other ports.\n`);
    process.exit(1);
  }
  const message = error instanceof Error ? `${error.name === 'Error' ? '' : `${error.name}: `}${error.message}` : String(error);
  process.stderr.write(`mainstay: ${message}\n`);
  process.exit(1);
});
