// The chaos harness's own checks, besides linearizability (src/sim/linearizability.ts): the
// list-append workload (lost, duplicated and reordered elements), time to recover after a fault,
// the longest stretch without an acknowledged write, and whether every server's committed log is
// the same. Pure: the harness hands them what it recorded.

import { createHash } from 'node:crypto';

export interface ListRead {
  key: string;
  /** The list as read (linearizable read of the key). */
  elements: string[];
  /** When the read completed (ms since the run started). */
  time: number;
}

export interface ListAppend {
  key: string;
  element: string;
  /** ok: acknowledged; fail: definitely not applied; info: unknown. */
  outcome: 'ok' | 'fail' | 'info';
}

export interface ListVerdict {
  /** Acknowledged appends missing from the final list. */
  lost: string[];
  /** Elements found more than once in some read or in the final list. */
  duplicated: string[];
  /** Reads that are not a prefix of the final list (elements reordered, or a later read lost some). */
  reordered: { key: string; time: number; read: string[] }[];
  /** Elements in the final list that were never appended, or whose append definitely failed. */
  unexpected: string[];
  /** Appends with an unknown outcome that are in the final list (resolved: applied) or not. */
  unknownApplied: number;
  unknownNotApplied: number;
  ok: boolean;
}

/** Every read must be a prefix of the final list of its key; every acknowledged append is in it, once. */
/**
 * The list reads a check needs, kept in bounded memory: every read must be a prefix of the final
 * list, so all reads of a key are prefixes of one another. Per key this keeps the longest read so
 * far, and any read that is not prefix-ordered with it (one of the two is then not a prefix of the
 * final list: checkLists reports it). A run of N reads of lists of length L costs O(keys · L), not
 * O(N · L), which made long runs hold gigabytes.
 */
export class ListReadLog {
  private readonly longest = new Map<string, ListRead>();
  private readonly conflicting: ListRead[] = [];
  count = 0;

  add(read: ListRead): void {
    this.count++;
    const longest = this.longest.get(read.key);
    if (longest === undefined || isPrefix(longest.elements, read.elements)) this.longest.set(read.key, read);
    else if (!isPrefix(read.elements, longest.elements)) this.conflicting.push(read);
  }

  /** The reads kept: for checkLists, which finds the same problems in them as in all the reads. */
  retained(): ListRead[] {
    return [...this.longest.values(), ...this.conflicting];
  }
}

function isPrefix(short: readonly string[], long: readonly string[]): boolean {
  return short.length <= long.length && short.every((element, i) => long[i] === element);
}

export function checkLists(reads: readonly ListRead[], appends: readonly ListAppend[], finals: ReadonlyMap<string, readonly string[]>): ListVerdict {
  const verdict: ListVerdict = { lost: [], duplicated: [], reordered: [], unexpected: [], unknownApplied: 0, unknownNotApplied: 0, ok: true };
  const duplicated = new Set<string>();
  const noteDuplicates = (elements: readonly string[]): void => {
    const seen = new Set<string>();
    for (const element of elements) {
      if (seen.has(element)) duplicated.add(element);
      seen.add(element);
    }
  };
  for (const [, elements] of finals) noteDuplicates(elements);
  for (const read of reads) {
    noteDuplicates(read.elements);
    const final = finals.get(read.key) ?? [];
    const prefix = read.elements.length <= final.length && read.elements.every((element, i) => final[i] === element);
    if (!prefix) verdict.reordered.push({ key: read.key, time: read.time, read: read.elements });
  }
  const appended = new Map<string, ListAppend>();
  for (const append of appends) appended.set(`${append.key}\u0000${append.element}`, append);
  for (const append of appends) {
    const present = (finals.get(append.key) ?? []).includes(append.element);
    if (append.outcome === 'ok' && !present) verdict.lost.push(`${append.key}:${append.element}`);
    if (append.outcome === 'info') {
      if (present) verdict.unknownApplied++;
      else verdict.unknownNotApplied++;
    }
  }
  for (const [key, elements] of finals) {
    for (const element of elements) {
      const append = appended.get(`${key}\u0000${element}`);
      if (append === undefined || append.outcome === 'fail') verdict.unexpected.push(`${key}:${element}`);
    }
  }
  verdict.duplicated = [...duplicated].sort();
  verdict.ok = verdict.lost.length === 0 && verdict.duplicated.length === 0 && verdict.reordered.length === 0 && verdict.unexpected.length === 0;
  return verdict;
}

export interface Percentiles {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

export function percentiles(values: readonly number[]): Percentiles {
  if (values.length === 0) return { count: 0, p50: Number.NaN, p99: Number.NaN, max: Number.NaN };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] as number;
  return { count: sorted.length, p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] as number };
}

export interface Ack {
  /** When the acknowledgement arrived (ms since the run started). */
  time: number;
  /** The epoch the write committed in. */
  epoch: number;
}

/**
 * For each fault that takes the main away (at `time`, while the main was of `epoch`), the time to
 * the first write acknowledged in a later epoch; undefined when none came before the next fault.
 */
export function recoveryTimes(faults: readonly { time: number; epoch: number }[], acks: readonly Ack[]): (number | undefined)[] {
  const sorted = [...acks].sort((a, b) => a.time - b.time);
  return faults.map((fault, i) => {
    const until = faults[i + 1]?.time ?? Infinity;
    const first = sorted.find((ack) => ack.time >= fault.time && ack.time < until && ack.epoch > fault.epoch);
    return first === undefined ? undefined : first.time - fault.time;
  });
}

/** The longest time in [start, end] with no acknowledged write, and when it began. */
export function longestGap(ackTimes: readonly number[], start: number, end: number): { ms: number; from: number } {
  const times = [start, ...[...ackTimes].filter((time) => time >= start && time <= end).sort((a, b) => a - b), end];
  let best = { ms: 0, from: start };
  for (let i = 1; i < times.length; i++) {
    const gap = (times[i] as number) - (times[i - 1] as number);
    if (gap > best.ms) best = { ms: gap, from: times[i - 1] as number };
  }
  return best;
}

export interface ServerLog {
  server: string;
  /** The seq of entries[0]. */
  firstSeq: number;
  /** Each committed entry, encoded (any stable encoding: equal entries, equal strings; see encodeLogEntry). */
  entries: readonly string[];
}

/** Byte strings (put values) up to this many bytes are encoded whole; longer ones by length and digest. */
export const logEntryBytesShownMax = 64;

/**
 * A stable encoding of a committed log entry for compareLogs, whose size does not grow with the
 * values: equal entries give equal strings, and so do unequal ones only if SHA-256 collides. A
 * byte string up to logEntryBytesShownMax bytes is shown whole, in hex; a longer one as
 * `{ bytes, sha256 }`. The whole values cannot be kept: a list-append value is the whole list, so
 * the log grows with the square of the appends (a 150 s run: 246 MB per server), and encoding
 * every entry of every server in full (2.4 G characters, held at once) ran the harness out of heap.
 * Byte strings are replaced before JSON.stringify sees them: a replacer would get a Buffer (what
 * the file log returns) already turned into `{ type: 'Buffer', data: [...] }` by its toJSON.
 */
export function encodeLogEntry(entry: unknown): string {
  const compact = (value: unknown): unknown => {
    if (value instanceof Uint8Array) {
      const bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
      if (bytes.length <= logEntryBytesShownMax) return bytes.toString('hex');
      return { bytes: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') };
    }
    if (Array.isArray(value)) return value.map(compact);
    if (value !== null && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([name, field]) => [name, compact(field)]));
    return value;
  };
  return JSON.stringify(compact(entry));
}

/** Whether every server's committed log agrees where they overlap; the first difference if not. */
export function compareLogs(logs: readonly ServerLog[]): { identical: boolean; compared: number; difference?: string } {
  let compared = 0;
  for (let i = 1; i < logs.length; i++) {
    const a = logs[0] as ServerLog;
    const b = logs[i] as ServerLog;
    const from = Math.max(a.firstSeq, b.firstSeq);
    const to = Math.min(a.firstSeq + a.entries.length, b.firstSeq + b.entries.length) - 1;
    for (let at = from; at <= to; at++) {
      compared++;
      const x = a.entries[at - a.firstSeq];
      const y = b.entries[at - b.firstSeq];
      if (x !== y) return { identical: false, compared, difference: `${a.server} and ${b.server} differ at seq ${at}: ${x} vs ${y}` };
    }
  }
  return { identical: true, compared };
}
