// Linearizability checker for per-key read/write/compare-and-set registers.
//
// The history is split by key (registers are independent, so a history is linearizable iff
// every per-key sub-history is), and each sub-history is checked with the Wing–Gong–Lowe
// search: call and return entries sorted by time in a doubly linked list; the search walks the
// list from the front, tentatively linearizes a call (unlinking it and its return), and
// backtracks when it reaches the return of an operation it has not linearized. Lowe's
// memoization prunes any (set of linearized operations, register state) pair that has already
// been explored: it failed before, so it will fail again (see StateCache).
//
// Operations with outcome 'info' (unknown result) are given a return at +Infinity, so they never
// force a backtrack: the search succeeds as soon as every 'ok' operation is linearized, whether
// or not the pending 'info' operations were placed. Since info operations stay open forever they
// would multiply the search space (every subset of them, at every point), so the search only
// places them where a linearization in a normal form would (see `admissible`).
//
// Pure: no I/O, no clock, no randomness.

import { assert } from '../lib/assert.ts';

export type RegisterValue = string | null; // null = key absent (the initial state of every key)

export interface HistoryOperation {
  process: number; // client process id
  key: string;
  kind: 'read' | 'write' | 'cas';
  /** write: value written; cas: new value; read with outcome ok: value read (null = absent). */
  value: RegisterValue;
  /** cas only: the value it expects. */
  expected?: RegisterValue;
  /** cas with outcome ok: true if it swapped, false if it found another value (and changed nothing). */
  swapped?: boolean;
  invokeTime: number;
  /** Completion time; ignored for outcome 'info' (which is open until the end of time). */
  completeTime: number;
  /** ok: completed with a known result; fail: definitely did not take effect; info: unknown — may have taken effect at any point after invoke, or never. */
  outcome: 'ok' | 'fail' | 'info';
}

export interface KeyVerdict {
  key: string;
  linearizable: boolean;
  operations: number;
  statesExplored: number;
  /** when not linearizable: a short human-readable explanation, e.g. the longest linearizable prefix and the ops that could not be placed */
  explanation?: string;
}

export interface Verdict {
  linearizable: boolean;
  keys: KeyVerdict[];
}

const DEFAULT_MAX_STATES_PER_KEY = 5_000_000;

export function checkLinearizability(
  history: readonly HistoryOperation[],
  options?: { maxStatesPerKey?: number },
): Verdict {
  const maxStates = options?.maxStatesPerKey ?? DEFAULT_MAX_STATES_PER_KEY;
  assert(maxStates > 0, 'maxStatesPerKey must be positive');

  const byKey = new Map<string, HistoryOperation[]>();
  for (const op of history) {
    validate(op);
    let ops = byKey.get(op.key);
    if (ops === undefined) {
      ops = [];
      byKey.set(op.key, ops);
    }
    // 'fail' did not happen; an 'info' read returned nothing, so it constrains nothing.
    if (op.outcome === 'fail') continue;
    if (op.outcome === 'info' && op.kind === 'read') continue;
    ops.push(op);
  }

  const keys: KeyVerdict[] = [];
  for (const key of [...byKey.keys()].sort()) {
    keys.push(checkKey(key, byKey.get(key) ?? [], maxStates));
  }
  return { linearizable: keys.every((k) => k.linearizable), keys };
}

function validate(op: HistoryOperation): void {
  const where = `operation of process ${op.process} on key ${JSON.stringify(op.key)}`;
  assert(op.kind === 'read' || op.kind === 'write' || op.kind === 'cas', `unknown kind in ${where}`);
  assert(op.outcome === 'ok' || op.outcome === 'fail' || op.outcome === 'info', `unknown outcome in ${where}`);
  assert(op.value === null || typeof op.value === 'string', `value must be a string or null in ${where}`);
  assert(Number.isFinite(op.invokeTime), `invokeTime must be finite in ${where}`);
  if (op.outcome !== 'info') {
    assert(Number.isFinite(op.completeTime), `completeTime must be finite in ${where}`);
    assert(op.invokeTime <= op.completeTime, `completeTime precedes invokeTime in ${where}`);
  }
  if (op.kind === 'cas') {
    assert(op.expected === null || typeof op.expected === 'string', `cas needs an expected value in ${where}`);
    if (op.outcome === 'ok') assert(typeof op.swapped === 'boolean', `ok cas needs swapped in ${where}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Per-key search

/** An operation prepared for the search; register values are interned as small integers. */
interface Op {
  source: HistoryOperation;
  id: number; // position in the (per-key) history
  bit: number; // ok only: index in the bitset of linearized ok operations
  kind: 'read' | 'write' | 'cas';
  info: boolean;
  value: number; // read: value seen; write: value written; cas: new value
  expected: number; // cas only
  swapped: boolean; // cas only; for info cas the search only places it when it would swap
  invoke: number;
  complete: number; // +Infinity for info
  group: number; // info only: class of identical info operations (same kind, value, expected)
  rank: number; // info only: position within its group, by invoke time
}

/** A node of the WGL entry list: the call or the return of an operation. */
interface Entry {
  op: Op;
  isCall: boolean;
  match: Entry | null; // call -> its return
  prev: Entry | null;
  next: Entry | null;
}

const ABSENT = 0; // interned id of null

/** Applies `op` to `state`; returns the new state or -1 if op cannot happen in `state`. */
function step(op: Op, state: number): number {
  switch (op.kind) {
    case 'read':
      return op.value === state ? state : -1;
    case 'write':
      return op.value;
    case 'cas':
      if (op.swapped) return state === op.expected ? op.value : -1;
      return state !== op.expected ? state : -1;
  }
}

const NO_NEED = 0xffffffff;

/**
 * The state after placing `op` next, or -1 if the search does not place it here.
 *
 * Besides the register semantics, this prunes info operations to a normal form that loses no
 * linearization. Take any linearization using as few info operations as possible: each info
 * operation in it changes the state (else drop it), is not last (else drop it), and is not
 * directly followed by a write (which would erase its effect: drop it) nor by an operation that
 * works just as well without it (a read or non-swapping cas that leaves the state alone can be
 * moved before it; moving an info operation later never breaks real-time order, as nothing has to
 * follow it). So the operation after an info one is either an info cas that needs its result, or
 * an ok operation that was impossible in the state before it (`need`). And of identical info
 * operations only the earliest invoked unused one is taken (see the groups above).
 */
function admissible(op: Op, state: number, need: number, groupUsed: readonly number[]): number {
  if (op.info) {
    if (groupUsed[op.group] !== op.rank) return -1;
    if (op.kind === 'write') {
      if (need !== NO_NEED || op.value === state) return -1;
      return op.value;
    }
    // info cas: only useful if it swaps, to a different value.
    if (state !== op.expected || op.value === state) return -1;
    return op.value;
  }
  if (need !== NO_NEED && step(op, need) >= 0) return -1;
  return step(op, state);
}

function checkKey(key: string, sources: readonly HistoryOperation[], maxStates: number): KeyVerdict {
  const values: RegisterValue[] = [null];
  const valueIds = new Map<string, number>();
  const intern = (v: RegisterValue | undefined): number => {
    if (v === null || v === undefined) return ABSENT;
    let id = valueIds.get(v);
    if (id === undefined) {
      id = values.length;
      values.push(v);
      valueIds.set(v, id);
    }
    return id;
  };

  const ops: Op[] = sources.map((s, id) => ({
    source: s,
    id,
    kind: s.kind,
    info: s.outcome === 'info',
    value: intern(s.value),
    expected: s.kind === 'cas' ? intern(s.expected) : ABSENT,
    swapped: s.kind === 'cas' ? (s.outcome === 'info' ? true : s.swapped === true) : false,
    invoke: s.invokeTime,
    complete: s.outcome === 'info' ? Number.POSITIVE_INFINITY : s.completeTime,
    bit: -1,
    group: -1,
    rank: -1,
  }));
  let okCount = 0;
  for (const op of ops) if (!op.info) op.bit = okCount++;

  // Identical info operations are interchangeable once invoked, and one invoked earlier can go
  // anywhere a later one can; so the search only ever uses the earliest unused one of a group.
  const groups = new Map<string, Op[]>();
  for (const op of ops) {
    if (!op.info) continue;
    const name = `${op.kind} ${op.value} ${op.expected}`;
    let members = groups.get(name);
    if (members === undefined) {
      members = [];
      groups.set(name, members);
    }
    members.push(op);
  }
  const groupUsed: number[] = [];
  for (const members of groups.values()) {
    members.sort((a, b) => (a.invoke !== b.invoke ? (a.invoke < b.invoke ? -1 : 1) : a.id - b.id));
    members.forEach((op, rank) => {
      op.group = groupUsed.length;
      op.rank = rank;
    });
    groupUsed.push(0);
  }

  // Build the entry list: sorted by time; at equal times calls come first, so operations that
  // merely touch (one completes at the instant the other is invoked) count as concurrent.
  const events: Entry[] = [];
  for (const op of ops) {
    const ret: Entry = { op, isCall: false, match: null, prev: null, next: null };
    const call: Entry = { op, isCall: true, match: ret, prev: null, next: null };
    events.push(call, ret);
  }
  const time = (e: Entry): number => (e.isCall ? e.op.invoke : e.op.complete);
  events.sort((a, b) => {
    const ta = time(a);
    const tb = time(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    if (a.isCall !== b.isCall) return a.isCall ? -1 : 1;
    return a.op.id - b.op.id;
  });
  const sentinel: Op = { source: sources[0] as HistoryOperation, id: -1, kind: 'read', info: true, value: ABSENT,
    expected: ABSENT, swapped: false, invoke: Number.NEGATIVE_INFINITY, complete: Number.NEGATIVE_INFINITY,
    bit: -1, group: -1, rank: -1 };
  const head: Entry = { op: sentinel, isCall: false, match: null, prev: null, next: null };
  let tail = head;
  for (const e of events) {
    tail.next = e;
    e.prev = tail;
    tail = e;
  }

  const lift = (call: Entry): void => {
    // Unlink the call and its return; their prev/next pointers are kept for unlift.
    (call.prev as Entry).next = call.next;
    if (call.next !== null) call.next.prev = call.prev;
    const ret = call.match as Entry;
    (ret.prev as Entry).next = ret.next;
    if (ret.next !== null) ret.next.prev = ret.prev;
  };
  const unlift = (call: Entry): void => {
    // Exact reverse of lift (dancing links).
    const ret = call.match as Entry;
    (ret.prev as Entry).next = ret;
    if (ret.next !== null) ret.next.prev = ret;
    (call.prev as Entry).next = call;
    if (call.next !== null) call.next.prev = call;
  };

  // The memo key is the set of ok operations linearized (a bitset over them), the register state,
  // `need`, and how many of each group of info operations are used (which, as each group is
  // used in order, says which ones). See StateCache for how info usage is compared.
  const okBits = new Uint32Array(Math.max(1, Math.ceil(okCount / 32)));
  const cache = new StateCache(okBits.length, groupUsed.length);

  let state = ABSENT;
  // When the last operation placed is an info one, the state before it; otherwise NO_NEED.
  let need = NO_NEED;
  let okLinearized = 0;
  const stack: { entry: Entry; state: number; need: number; memo: number }[] = [];
  // Diagnostics: the deepest point the search reached (most ok operations linearized).
  let bestOk = 0;
  let bestPath: Op[] = [];
  let bestState = ABSENT;

  // Each node of the search tries the ok calls of the window first and then, in a second pass,
  // the info calls: configurations using fewer info operations get explored (and cached) first,
  // which lets them cover the ones using more.
  const hasInfo = groupUsed.length > 0;
  let infoPass = false;
  let entry: Entry | null = head.next;
  let linearizable = true;
  while (okLinearized < okCount) {
    assert(entry !== null && !(entry.op.info && !entry.isCall),
      'linearizability search ran past the last ok return');
    if (entry.isCall) {
      const op = entry.op;
      const next = op.info === infoPass ? admissible(op, state, need, groupUsed) : -1;
      if (next >= 0) {
        const nextNeed = op.info ? state : NO_NEED;
        if (op.info) groupUsed[op.group] = (groupUsed[op.group] as number) + 1;
        else okBits[op.bit >>> 5] = (okBits[op.bit >>> 5] as number) | (1 << (op.bit & 31));
        const memo = cache.visit(okBits, next, nextNeed, groupUsed);
        if (memo >= 0) {
          if (cache.size > maxStates) {
            throw new Error(`linearizability check of key ${JSON.stringify(key)} exceeded ` +
              `${maxStates} states (${ops.length} operations); the verdict is unknown`);
          }
          stack.push({ entry, state, need, memo });
          state = next;
          need = nextNeed;
          if (!op.info) okLinearized++;
          lift(entry);
          if (!op.info && okLinearized > bestOk) {
            bestOk = okLinearized;
            bestPath = stack.map((f) => f.entry.op);
            bestState = state;
          }
          entry = head.next;
          infoPass = false;
          continue;
        }
        if (op.info) groupUsed[op.group] = (groupUsed[op.group] as number) - 1;
        else okBits[op.bit >>> 5] = (okBits[op.bit >>> 5] as number) & ~(1 << (op.bit & 31));
      }
      entry = entry.next;
    } else if (hasInfo && !infoPass) {
      entry = head.next;
      infoPass = true;
    } else {
      // The return of an operation not yet linearized: undo the latest choice and try the next.
      const frame = stack.pop();
      if (frame === undefined) {
        linearizable = false;
        break;
      }
      cache.leave(frame.memo);
      const op = frame.entry.op;
      state = frame.state;
      need = frame.need;
      if (op.info) {
        groupUsed[op.group] = (groupUsed[op.group] as number) - 1;
      } else {
        okLinearized--;
        okBits[op.bit >>> 5] = (okBits[op.bit >>> 5] as number) & ~(1 << (op.bit & 31));
      }
      unlift(frame.entry);
      entry = frame.entry.next;
      infoPass = op.info;
    }
  }

  const verdict: KeyVerdict = {
    key,
    linearizable,
    operations: ops.length,
    statesExplored: cache.size,
  };
  if (!linearizable) {
    verdict.explanation = explain(key, ops, okCount, values, bestPath, bestState);
  }
  return verdict;
}

function explain(
  key: string,
  ops: readonly Op[],
  okCount: number,
  values: readonly RegisterValue[],
  path: readonly Op[],
  state: number,
): string {
  const placed = new Set(path);
  const pending = ops.filter((op) => !placed.has(op));
  const pendingInfo = pending.filter((op) => op.info).length;
  // The ok operations that could have come next: not preceded in real time by a pending one.
  let horizon = Number.POSITIVE_INFINITY;
  for (const op of pending) if (op.complete < horizon) horizon = op.complete;
  const candidates = pending.filter((op) => !op.info && op.invoke <= horizon);
  const blocking = candidates.filter((op) => op.complete === horizon);

  const show = (v: number): string => JSON.stringify(values[v] ?? null);
  const describe = (op: Op): string => {
    const s = op.source;
    const end = op.info ? '∞)' : `${s.completeTime}]`;
    let what: string;
    switch (op.kind) {
      case 'read': what = `read ${show(op.value)}`; break;
      case 'write': what = `write ${show(op.value)}`; break;
      case 'cas': what = `cas ${show(op.expected)}->${show(op.value)}` +
        (op.info ? '' : op.swapped ? ' swapped' : ' not swapped'); break;
    }
    return `p${s.process} ${what}${op.info ? ' (info)' : ''} [${s.invokeTime},${end}`;
  };

  const okPlaced = path.filter((op) => !op.info).length;
  const shown = 8;
  const order = path.length <= shown
    ? path.map(describe).join('; ')
    : `... ${path.slice(-shown).map(describe).join('; ')}`;
  const infoNote = pendingInfo === 0 ? ''
    : ` (with or without the ${pendingInfo} unused info operation${pendingInfo === 1 ? '' : 's'})`;
  return `key ${JSON.stringify(key)}: not linearizable. At most ${okPlaced} of ${okCount} ok operations ` +
    `can be linearized` + (path.length > 0 ? `, e.g. in an order ending: ${order}` : '') +
    `; the register then holds ${show(state)}, and ` +
    (candidates.length === 1
      ? `the only ok operation that could come next cannot${infoNote}: ${describe(candidates[0] as Op)}`
      : `none of the ok operations that could come next can${infoNote}: ${candidates.map(describe).join('; ')}` +
        ` (one had to take effect before ${blocking.map(describe).join('; ')} returned)`) +
    '.';
}

// ---------------------------------------------------------------------------------------------
// Memo cache
//
// Lowe's cache of explored configurations, with one refinement for info operations: a
// configuration is known to fail if one with the same ok operations, register state and `need`
// failed while using, in every group, at most as many info operations (an unused info operation
// can always be left unused, and an earlier one can stand in for a later one). Only finished
// configurations prune this way, not those on the current path, so every pruned configuration
// is covered by one whose exploration actually completed. Without info operations this is
// exactly Lowe's cache.
//
// Storage: an open-addressing hash table of exact keys (ok bitset, state, need) in flat arrays;
// each key has a linked list of entries, one per configuration explored, holding its usage vector.

class StateCache {
  private readonly stride: number;
  private keys: Uint32Array; // keyCount * stride words: ok bitset words, state, need
  private keyHead: Int32Array; // key -> first entry + 1; 0 = none
  private keyCount = 0;
  private table: Int32Array; // hash slot -> key + 1; 0 = empty
  private mask: number;
  private usage: Uint32Array; // size * groups words
  private entryNext: Int32Array; // entry -> next entry of the same key + 1; 0 = none
  private onPath: Uint8Array;
  /** Configurations explored so far. */
  size = 0;

  constructor(private readonly words: number, private readonly groups: number) {
    this.stride = words + 2;
    this.keys = new Uint32Array(this.stride * 1024);
    this.keyHead = new Int32Array(1024);
    this.table = new Int32Array(2048);
    this.mask = this.table.length - 1;
    this.usage = new Uint32Array(Math.max(1, groups) * 1024);
    this.entryNext = new Int32Array(1024);
    this.onPath = new Uint8Array(1024);
  }

  /**
   * Records a configuration about to be explored and returns its entry, or -1 if a finished
   * entry already covers it.
   */
  visit(bits: Uint32Array, state: number, need: number, used: readonly number[]): number {
    const key = this.findOrAddKey(bits, state, need);
    const g = this.groups;
    // Walk the key's entries: prune if one covers this configuration; drop those this one covers.
    let prevLink = -1; // -1: the list head
    let link = this.keyHead[key] as number;
    while (link !== 0) {
      const e = link - 1;
      const next = this.entryNext[e] as number;
      if (this.onPath[e] === 0) {
        let atMost = true;
        let atLeast = true;
        for (let i = 0; i < g; i++) {
          const u = this.usage[e * g + i] as number;
          const v = used[i] as number;
          if (u > v) atMost = false;
          if (u < v) atLeast = false;
        }
        if (atMost) return -1;
        if (atLeast) {
          if (prevLink < 0) this.keyHead[key] = next;
          else this.entryNext[prevLink] = next;
          link = next;
          continue;
        }
      }
      prevLink = e;
      link = next;
    }

    const e = this.size;
    if (e >= this.entryNext.length) {
      this.entryNext = grow(this.entryNext, e + 1);
      this.onPath = grow(this.onPath, e + 1);
    }
    if ((e + 1) * g > this.usage.length) this.usage = grow(this.usage, (e + 1) * g);
    for (let i = 0; i < g; i++) this.usage[e * g + i] = used[i] as number;
    this.onPath[e] = 1;
    this.entryNext[e] = this.keyHead[key] as number;
    this.keyHead[key] = e + 1;
    this.size++;
    return e;
  }

  /** Marks an entry's exploration finished (failed). */
  leave(entry: number): void {
    this.onPath[entry] = 0;
  }

  private findOrAddKey(bits: Uint32Array, state: number, need: number): number {
    let slot = this.hash(bits, state, need, 0) & this.mask;
    while (true) {
      const key = (this.table[slot] as number) - 1;
      if (key < 0) break;
      if (this.equals(key, bits, state, need)) return key;
      slot = (slot + 1) & this.mask;
    }
    const key = this.keyCount;
    if ((key + 1) * this.stride > this.keys.length) this.keys = grow(this.keys, (key + 1) * this.stride);
    if (key >= this.keyHead.length) this.keyHead = grow(this.keyHead, key + 1);
    const base = key * this.stride;
    this.keys.set(bits, base);
    this.keys[base + this.words] = state;
    this.keys[base + this.words + 1] = need;
    this.keyHead[key] = 0;
    this.keyCount++;
    this.table[slot] = key + 1;
    if (this.keyCount * 2 > this.table.length) this.rehash();
    return key;
  }

  private equals(key: number, bits: Uint32Array, state: number, need: number): boolean {
    const base = key * this.stride;
    if (this.keys[base + this.words] !== state || this.keys[base + this.words + 1] !== need) return false;
    for (let i = 0; i < this.words; i++) {
      if (this.keys[base + i] !== bits[i]) return false;
    }
    return true;
  }

  private hash(bits: ArrayLike<number>, state: number, need: number, offset: number): number {
    let h = Math.imul(state ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(need, 0x27d4eb2f);
    for (let i = 0; i < this.words; i++) {
      h = Math.imul(h ^ (bits[offset + i] as number), 0xcc9e2d51);
      h = (h << 15) | (h >>> 17);
      h = Math.imul(h, 0x1b873593);
    }
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    return h >>> 0;
  }

  private rehash(): void {
    this.table = new Int32Array(this.table.length * 2);
    this.mask = this.table.length - 1;
    for (let key = 0; key < this.keyCount; key++) {
      const base = key * this.stride;
      const state = this.keys[base + this.words] as number;
      const need = this.keys[base + this.words + 1] as number;
      let slot = this.hash(this.keys, state, need, base) & this.mask;
      while (this.table[slot] !== 0) slot = (slot + 1) & this.mask;
      this.table[slot] = key + 1;
    }
  }
}

function grow<T extends Uint32Array | Int32Array | Uint8Array>(array: T, minLength: number): T {
  let length = Math.max(1, array.length);
  while (length < minLength) length *= 2;
  const grown = new (array.constructor as new (length: number) => T)(length);
  grown.set(array);
  return grown;
}
