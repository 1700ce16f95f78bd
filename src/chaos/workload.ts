// The chaos harness's clients: each runs one operation at a time against the cluster, through the
// client library (sessions make retried writes exactly-once), and records every operation with
// its invoke and completion times and its outcome — ok, fail (definitely not applied) or info
// (unknown) — for the checkers:
// - per-key registers: linearizable reads, writes of values never written before, and
//   compare-and-set (a read, then a write conditional on the version read: every value is unique,
//   so a version names a value), checked by the Wing–Gong–Lowe checker;
// - list-append: a read-modify-write of a comma-separated list under If-Match, retried on a
//   conflict, checked for lost, duplicated and reordered elements (checks.ts).
// Every loop is bounded by time and every operation by the client's deadline.

import { connect, MainstayError, PreconditionFailedError, type Client } from '../client/client.ts';
import type { Random } from '../lib/random.ts';
import type { HistoryOperation, RegisterValue } from '../sim/linearizability.ts';
import type { Ack, ListAppend } from './checks.ts';
import { ListReadLog } from './checks.ts';

export interface WorkloadOptions {
  /** Base URLs of the servers (through the fault proxies). */
  endpoints: string[];
  clients: number;
  registerKeys: number;
  listKeys: number;
  /** Deadline of one operation, retries included. */
  operationTimeoutMs: number;
  random: Random;
  /** ms since the run started. */
  now: () => number;
  /** Called with every completed operation (for the JSONL history). */
  record: (line: Record<string, unknown>) => void;
}

export interface OperationCounts {
  ok: number;
  fail: number;
  info: number;
}

const appendAttemptsMax = 8;

export class Workload {
  readonly history: HistoryOperation[] = [];
  readonly listReads = new ListReadLog();
  readonly listAppends: ListAppend[] = [];
  /** Every acknowledged write (register write, swapped cas, list append) with its epoch. */
  readonly acks: Ack[] = [];
  readonly counts = new Map<string, OperationCounts>();
  private readonly clients: Client[];
  private stopped = false;

  constructor(private readonly options: WorkloadOptions) {
    this.clients = Array.from({ length: options.clients }, (_, i) => connect({
      endpoints: options.endpoints, clientId: `chaos-${i}-${Date.now().toString(36)}`,
      timeoutMs: options.operationTimeoutMs, attemptTimeoutMs: Math.min(2000, options.operationTimeoutMs), backoffMsMax: 250,
    }));
  }

  /** Run every client until `untilMs` (on the run's clock). */
  async run(untilMs: number): Promise<void> {
    await Promise.all(this.clients.map((client, process) => this.loop(client, process, untilMs)));
  }

  stop(): void {
    this.stopped = true;
  }

  close(): void {
    for (const client of this.clients) client.close();
  }

  /** Reads every register once more, linearizably, into the history (after healing). */
  async finalRegisters(): Promise<number> {
    let read = 0;
    for (let i = 0; i < this.options.registerKeys; i++) {
      if ((await this.read(this.clients[0] as Client, 0, `reg${i}`)) !== undefined) read++;
    }
    return read;
  }

  /** Reads every list key once more, linearizably, with long retries (after healing). */
  async finalLists(): Promise<Map<string, string[]>> {
    const client = this.clients[0] as Client;
    const finals = new Map<string, string[]>();
    for (let i = 0; i < this.options.listKeys; i++) {
      const key = `list${i}`;
      const found = await client.get(key);
      finals.set(key, parseList(found?.text()));
    }
    return finals;
  }

  private count(kind: string, outcome: keyof OperationCounts): void {
    let counts = this.counts.get(kind);
    if (counts === undefined) {
      counts = { ok: 0, fail: 0, info: 0 };
      this.counts.set(kind, counts);
    }
    counts[outcome]++;
  }

  private async loop(client: Client, process: number, untilMs: number): Promise<void> {
    const random = this.options.random;
    let written = 0;
    while (!this.stopped && this.options.now() < untilMs) {
      const pick = random.float();
      if (pick < 0.3) await this.read(client, process, `reg${random.int(0, this.options.registerKeys - 1)}`);
      else if (pick < 0.6) await this.write(client, process, `reg${random.int(0, this.options.registerKeys - 1)}`, `p${process}w${written++}`);
      else if (pick < 0.75) await this.cas(client, process, `reg${random.int(0, this.options.registerKeys - 1)}`, `p${process}c${written++}`);
      else if (pick < 0.93) await this.append(client, process, `list${random.int(0, this.options.listKeys - 1)}`, `p${process}a${written++}`);
      else await this.readList(client, `list${random.int(0, this.options.listKeys - 1)}`);
    }
  }

  private async read(client: Client, process: number, key: string): Promise<{ value: RegisterValue; version: number } | undefined> {
    const invokeTime = this.options.now();
    try {
      const found = await client.get(key);
      const value = found === undefined ? null : found.text();
      const completeTime = this.options.now();
      this.history.push({ process, key, kind: 'read', value, invokeTime, completeTime, outcome: 'ok' });
      this.count('read', 'ok');
      this.options.record({ process, kind: 'read', key, value, invokeTime, completeTime, outcome: 'ok' });
      return { value, version: found?.version ?? 0 };
    } catch (error) {
      // A read that failed changed nothing.
      this.count('read', 'fail');
      this.options.record({ process, kind: 'read', key, invokeTime, completeTime: this.options.now(), outcome: 'fail', error: describe(error) });
      return undefined;
    }
  }

  private async write(client: Client, process: number, key: string, value: string): Promise<void> {
    const invokeTime = this.options.now();
    try {
      const result = await client.put(key, value);
      const completeTime = this.options.now();
      this.history.push({ process, key, kind: 'write', value, invokeTime, completeTime, outcome: 'ok' });
      this.acks.push({ time: completeTime, epoch: result.epoch });
      this.count('write', 'ok');
      this.options.record({ process, kind: 'write', key, value, invokeTime, completeTime, outcome: 'ok', seq: result.seq, epoch: result.epoch });
    } catch (error) {
      const outcome = outcomeOf(error);
      this.history.push({ process, key, kind: 'write', value, invokeTime, completeTime: this.options.now(), outcome });
      this.count('write', outcome);
      this.options.record({ process, kind: 'write', key, value, invokeTime, completeTime: this.options.now(), outcome, error: describe(error) });
    }
  }

  private async cas(client: Client, process: number, key: string, value: string): Promise<void> {
    const current = await this.read(client, process, key);
    if (current === undefined) return;
    const invokeTime = this.options.now();
    const base = { process, key, kind: 'cas' as const, value, expected: current.value, invokeTime };
    try {
      const result = await client.put(key, value, { ifVersion: current.version });
      const completeTime = this.options.now();
      this.history.push({ ...base, swapped: true, completeTime, outcome: 'ok' });
      this.acks.push({ time: completeTime, epoch: result.epoch });
      this.count('cas', 'ok');
      this.options.record({ ...base, swapped: true, completeTime, outcome: 'ok', seq: result.seq, epoch: result.epoch });
    } catch (error) {
      const completeTime = this.options.now();
      if (error instanceof PreconditionFailedError) {
        // Definitely not applied: the value was no longer the one read.
        this.history.push({ ...base, swapped: false, completeTime, outcome: 'ok' });
        this.count('cas', 'ok');
        this.options.record({ ...base, swapped: false, completeTime, outcome: 'ok' });
        return;
      }
      const outcome = outcomeOf(error);
      this.history.push({ ...base, completeTime, outcome });
      this.count('cas', outcome);
      this.options.record({ ...base, completeTime, outcome, error: describe(error) });
    }
  }

  private async readList(client: Client, key: string): Promise<{ elements: string[]; version: number } | undefined> {
    try {
      const found = await client.get(key);
      const elements = parseList(found?.text());
      this.listReads.add({ key, elements, time: this.options.now() });
      this.count('list-read', 'ok');
      return { elements, version: found?.version ?? 0 };
    } catch {
      this.count('list-read', 'fail');
      return undefined;
    }
  }

  private async append(client: Client, process: number, key: string, element: string): Promise<void> {
    const invokeTime = this.options.now();
    let outcome: ListAppend['outcome'] = 'fail';
    let error: unknown;
    for (let attempt = 0; attempt < appendAttemptsMax && !this.stopped; attempt++) {
      const current = await this.readList(client, key);
      if (current === undefined) break;
      try {
        const result = await client.put(key, [...current.elements, element].join(','), { ifVersion: current.version });
        this.acks.push({ time: this.options.now(), epoch: result.epoch });
        outcome = 'ok';
        break;
      } catch (caught) {
        error = caught;
        if (caught instanceof PreconditionFailedError) continue;
        outcome = outcomeOf(caught);
        break;
      }
    }
    this.listAppends.push({ key, element, outcome });
    this.count('append', outcome);
    this.options.record({ process, kind: 'append', key, element, invokeTime, completeTime: this.options.now(), outcome, ...(error === undefined ? {} : { error: describe(error) }) });
  }
}

function parseList(text: string | undefined): string[] {
  return text === undefined || text === '' ? [] : text.split(',');
}

/** fail if the error proves the write was not applied, info otherwise. */
function outcomeOf(error: unknown): 'fail' | 'info' {
  return error instanceof MainstayError && error.definite ? 'fail' : 'info';
}

function describe(error: unknown): string {
  return error instanceof MainstayError ? `${error.code}: ${error.message}` : String(error);
}
