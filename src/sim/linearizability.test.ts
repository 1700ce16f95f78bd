import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Random } from '../lib/random.ts';
import { checkLinearizability, type HistoryOperation, type RegisterValue } from './linearizability.ts';

// ---------------------------------------------------------------------------------------------
// Brute force oracle: every subset of the info writes/cas, every ordering of the chosen
// operations that respects real-time order, replayed against a sequential register.

function bruteForceKey(ops: readonly HistoryOperation[]): boolean {
  const ok = ops.filter((o) => o.outcome === 'ok');
  const info = ops.filter((o) => o.outcome === 'info' && o.kind !== 'read');
  const end = (o: HistoryOperation): number => (o.outcome === 'info' ? Infinity : o.completeTime);
  const precedes = (a: HistoryOperation, b: HistoryOperation): boolean => end(a) < b.invokeTime;

  for (let mask = 0; mask < 1 << info.length; mask++) {
    const chosen = [...ok, ...info.filter((_, i) => (mask >> i) & 1)];
    const used = chosen.map(() => false);
    const search = (placed: number, state: RegisterValue): boolean => {
      if (placed === chosen.length) return true;
      for (let i = 0; i < chosen.length; i++) {
        if (used[i]) continue;
        const op = chosen[i]!;
        // Every operation that precedes this one in real time must already be placed.
        if (chosen.some((other, j) => !used[j] && j !== i && precedes(other, op))) continue;
        let next: RegisterValue;
        if (op.kind === 'read') {
          if (op.value !== state) continue;
          next = state;
        } else if (op.kind === 'write') {
          next = op.value;
        } else if (op.outcome === 'info') {
          // Took effect with an unknown result: it swapped iff the state matched.
          next = state === op.expected ? op.value : state;
        } else if (op.swapped) {
          if (state !== op.expected) continue;
          next = op.value;
        } else {
          if (state === op.expected) continue;
          next = state;
        }
        used[i] = true;
        const found = search(placed + 1, next);
        used[i] = false;
        if (found) return true;
      }
      return false;
    };
    if (search(0, null)) return true;
  }
  return false;
}

function bruteForce(history: readonly HistoryOperation[]): boolean {
  const keys = new Set(history.map((o) => o.key));
  return [...keys].every((k) => bruteForceKey(history.filter((o) => o.key === k)));
}

// ---------------------------------------------------------------------------------------------
// Random history generators

const keyNames = ['x', 'y'] as const;
const readValues: RegisterValue[] = [null, 'a', 'b', 'c'];
const writeValues: RegisterValue[] = ['a', 'b', 'c'];

const opSpec = fc.record({
  process: fc.integer({ min: 0, max: 2 }),
  key: fc.integer({ min: 0, max: 1 }),
  kind: fc.constantFrom('read' as const, 'write' as const, 'cas' as const),
  value: fc.constantFrom(...readValues),
  written: fc.constantFrom(...writeValues),
  expected: fc.constantFrom(...readValues),
  expectCurrent: fc.boolean(),
  swapped: fc.boolean(),
  outcome: fc.constantFrom('ok' as const, 'ok' as const, 'ok' as const, 'fail' as const, 'info' as const),
  tookEffect: fc.boolean(),
  gap: fc.integer({ min: 0, max: 4 }),
  lead: fc.integer({ min: 0, max: 14 }),
  duration: fc.integer({ min: 1, max: 14 }),
});
type OpSpec = typeof opSpec extends fc.Arbitrary<infer T> ? T : never;

/** Arbitrary operations with arbitrary results; each process runs one operation at a time. */
function randomHistory(keys: number, specs: readonly OpSpec[]): HistoryOperation[] {
  const clock = [0, 0, 0];
  return specs.map((s) => {
    const invokeTime = clock[s.process]! + s.gap;
    const completeTime = invokeTime + Math.max(1, s.duration >> 1);
    clock[s.process] = completeTime;
    const op: HistoryOperation = {
      process: s.process, key: keyNames[s.key % keys]!, kind: s.kind,
      value: s.kind === 'read' ? s.value : s.written, invokeTime, completeTime, outcome: s.outcome,
    };
    if (s.kind === 'cas') {
      op.expected = s.expected;
      op.swapped = s.swapped;
    }
    return op;
  });
}

/**
 * A real sequential execution: operation i takes effect at time 10*i, inside a random interval
 * around that point, and reports the result it really had. Failed operations have no effect;
 * info operations may or may not have had one. `corruption` optionally falsifies one result.
 */
function sequentialHistory(keys: number, specs: readonly OpSpec[], corruption: number): HistoryOperation[] {
  const state = new Map<string, RegisterValue>();
  const history = specs.map((s, i) => {
    const key = keyNames[s.key % keys]!;
    const current = state.get(key) ?? null;
    const at = 10 * (i + 1);
    const op: HistoryOperation = {
      process: s.process, key, kind: s.kind, value: null,
      invokeTime: at - s.lead, completeTime: at + s.duration, outcome: s.outcome,
    };
    const effective = s.outcome === 'ok' || (s.outcome === 'info' && s.tookEffect);
    if (s.kind === 'read') {
      op.value = s.outcome === 'ok' ? current : s.value;
    } else if (s.kind === 'write') {
      op.value = s.written;
      if (effective) state.set(key, s.written);
    } else {
      op.value = s.written;
      op.expected = s.expectCurrent ? current : s.expected;
      op.swapped = current === op.expected;
      if (effective && op.swapped) state.set(key, s.written);
    }
    return op;
  });
  if (corruption > 0 && history.length > 0) {
    const victim = history[corruption % history.length]!;
    if (victim.kind === 'cas') victim.swapped = !victim.swapped;
    else victim.value = readValues[(readValues.indexOf(victim.value) + 1 + (corruption % 3)) % readValues.length]!;
  }
  return history;
}

const historyArbitrary = fc.oneof(
  fc.tuple(fc.integer({ min: 1, max: 2 }), fc.array(opSpec, { minLength: 1, maxLength: 7 }))
    .map(([keys, specs]) => randomHistory(keys, specs)),
  fc.tuple(fc.integer({ min: 1, max: 2 }), fc.array(opSpec, { minLength: 1, maxLength: 7 }),
    fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 1, max: 20 })))
    .map(([keys, specs, corruption]) => sequentialHistory(keys, specs, corruption)),
);

test('WGL agrees with brute force on thousands of small random histories', () => {
  let linearizable = 0;
  let notLinearizable = 0;
  let withInfo = 0;
  const runs = 4000;
  fc.assert(
    fc.property(historyArbitrary, (history) => {
      const expected = bruteForce(history);
      const verdict = checkLinearizability(history);
      assert.equal(verdict.linearizable, expected, JSON.stringify(history));
      assert.equal(verdict.linearizable, verdict.keys.every((k) => k.linearizable));
      for (const k of verdict.keys) {
        assert.equal(k.explanation === undefined, k.linearizable);
        assert.equal(k.linearizable, bruteForceKey(history.filter((o) => o.key === k.key)));
      }
      if (expected) linearizable++;
      else notLinearizable++;
      if (history.some((o) => o.outcome === 'info' && o.kind !== 'read')) withInfo++;
    }),
    { numRuns: runs, seed: 0x5eed },
  );
  console.log(`linearizability property: ${linearizable} linearizable, ${notLinearizable} not, ` +
    `${withInfo} with info writes/cas, of ${runs}`);
  assert.ok(linearizable >= runs / 10, `too few linearizable cases: ${linearizable}`);
  assert.ok(notLinearizable >= runs / 10, `too few non-linearizable cases: ${notLinearizable}`);
  assert.ok(withInfo >= runs / 10, `too few cases with info operations: ${withInfo}`);
});

test('WGL agrees with brute force on histories heavy in info operations', () => {
  // One key, up to 9 operations, most of them writes/cas of unknown outcome: exercises the
  // pruning of info operations (normal form, interchangeable duplicates, covering).
  const infoSpec = opSpec.map((s) => ({
    ...s, key: 0, kind: s.kind === 'read' && s.swapped ? 'write' as const : s.kind,
    outcome: s.outcome === 'fail' ? 'info' as const : s.outcome,
  }));
  const arbitrary = fc.oneof(
    fc.array(infoSpec, { minLength: 1, maxLength: 9 }).map((specs) => randomHistory(1, specs)),
    fc.tuple(fc.array(infoSpec, { minLength: 1, maxLength: 9 }), fc.integer({ min: 0, max: 20 }))
      .map(([specs, corruption]) => sequentialHistory(1, specs, corruption)),
  );
  let linearizable = 0;
  const runs = 2000;
  fc.assert(
    fc.property(arbitrary, (history) => {
      const expected = bruteForce(history);
      assert.equal(checkLinearizability(history).linearizable, expected, JSON.stringify(history));
      if (expected) linearizable++;
    }),
    { numRuns: runs, seed: 0x1f0 },
  );
  console.log(`info-heavy property: ${linearizable} linearizable, ${runs - linearizable} not, of ${runs}`);
  assert.ok(linearizable >= runs / 10 && runs - linearizable >= runs / 10);
});

// ---------------------------------------------------------------------------------------------
// Hand-written histories

function op(
  process: number, kind: HistoryOperation['kind'], value: RegisterValue, invokeTime: number, completeTime: number,
  extra: Partial<HistoryOperation> = {},
): HistoryOperation {
  return { process, key: 'k', kind, value, invokeTime, completeTime, outcome: 'ok', ...extra };
}

function rejects(history: HistoryOperation[]): string {
  const verdict = checkLinearizability(history);
  assert.equal(verdict.linearizable, false);
  assert.equal(bruteForce(history), false, 'oracle disagrees');
  const explanation = verdict.keys.find((k) => !k.linearizable)?.explanation;
  assert.ok(explanation !== undefined && explanation.length > 0);
  return explanation;
}

function accepts(history: HistoryOperation[]): void {
  const verdict = checkLinearizability(history);
  assert.equal(verdict.linearizable, true, JSON.stringify(verdict));
  assert.equal(bruteForce(history), true, 'oracle disagrees');
}

test('rejects a stale read after a completed write', () => {
  const explanation = rejects([
    op(1, 'write', 'a', 0, 10),
    op(1, 'write', 'b', 20, 30),
    op(2, 'read', 'a', 40, 50),
  ]);
  assert.match(explanation, /read "a"/);
});

test('rejects a read of a value never written', () => {
  rejects([op(1, 'write', 'a', 0, 10), op(2, 'read', 'z', 5, 15)]);
  rejects([op(2, 'read', 'z', 5, 15)]);
});

test('rejects sequential reads that see new then old', () => {
  rejects([
    op(1, 'write', 'a', 0, 10),
    op(1, 'write', 'b', 20, 100), // concurrent with both reads
    op(2, 'read', 'b', 30, 40),
    op(3, 'read', 'a', 50, 60),
  ]);
});

test('rejects a lost write', () => {
  rejects([
    op(1, 'write', 'a', 0, 10),
    op(2, 'write', 'b', 5, 15),
    op(3, 'read', 'b', 20, 30), // b after a: fine so far
    op(1, 'write', 'c', 40, 50),
    op(3, 'read', 'b', 60, 70), // c was lost
  ]);
  rejects([op(1, 'write', 'a', 0, 10), op(2, 'write', 'b', 20, 30), op(1, 'read', 'a', 40, 50)]);
});

test('rejects a cas that swapped when the state was different', () => {
  rejects([
    op(1, 'write', 'a', 0, 10),
    op(2, 'cas', 'c', 20, 30, { expected: 'b', swapped: true }),
  ]);
  rejects([op(2, 'cas', 'c', 20, 30, { expected: 'b', swapped: true })]);
  // ... and one that did not swap although the state matched
  rejects([
    op(1, 'write', 'b', 0, 10),
    op(2, 'cas', 'c', 20, 30, { expected: 'b', swapped: false }),
  ]);
});

test('rejects a read of a value whose write failed', () => {
  rejects([
    op(1, 'write', 'a', 0, 10, { outcome: 'fail' }),
    op(2, 'read', 'a', 5, 20),
  ]);
});

test('accepts concurrent write and read seeing either value', () => {
  for (const seen of ['a', 'b']) {
    accepts([
      op(1, 'write', 'a', 0, 10),
      op(2, 'write', 'b', 20, 40),
      op(3, 'read', seen, 25, 35),
    ]);
  }
  accepts([op(1, 'write', 'a', 0, 10), op(2, 'read', null, 5, 15)]);
  accepts([op(1, 'write', 'a', 0, 10), op(2, 'read', 'a', 10, 15)]); // touching intervals overlap
});

test('accepts an info write whose effect is observed later', () => {
  accepts([
    op(1, 'write', 'a', 0, 10),
    op(2, 'write', 'b', 20, 30, { outcome: 'info' }),
    op(3, 'read', 'a', 40, 50),
    op(3, 'read', 'b', 1000, 1010),
    op(3, 'read', 'b', 1020, 1030),
  ]);
  // But it cannot take effect before it was invoked.
  rejects([
    op(3, 'read', 'b', 0, 10),
    op(2, 'write', 'b', 20, 30, { outcome: 'info' }),
  ]);
  // Nor take effect twice.
  rejects([
    op(2, 'write', 'b', 0, 5, { outcome: 'info' }),
    op(3, 'read', 'b', 10, 20),
    op(1, 'write', 'a', 30, 40),
    op(3, 'read', 'b', 50, 60),
  ]);
});

test('accepts an info write that is never observed, and an info cas', () => {
  accepts([
    op(1, 'write', 'a', 0, 10),
    op(2, 'write', 'b', 20, 30, { outcome: 'info' }),
    op(3, 'read', 'a', 40, 50),
    op(3, 'read', 'a', 60, 70),
  ]);
  accepts([
    op(1, 'write', 'a', 0, 10),
    op(2, 'cas', 'b', 20, 30, { outcome: 'info', expected: 'a' }),
    op(3, 'read', 'b', 40, 50),
  ]);
  // An info cas cannot swap from a value it did not expect.
  rejects([
    op(1, 'write', 'a', 0, 10),
    op(2, 'cas', 'b', 20, 30, { outcome: 'info', expected: 'z' }),
    op(3, 'read', 'b', 40, 50),
  ]);
});

test('accepts ok cas histories and ignores fail and info reads', () => {
  accepts([
    op(1, 'cas', 'a', 0, 10, { expected: null, swapped: true }),
    op(2, 'cas', 'b', 20, 30, { expected: null, swapped: false }),
    op(3, 'read', 'a', 40, 50),
    op(3, 'read', 'zzz', 60, 70, { outcome: 'fail' }),
    op(3, 'read', 'yyy', 60, 70, { outcome: 'info' }),
    op(1, 'write', 'q', 60, 70, { outcome: 'fail' }),
    op(3, 'read', 'a', 80, 90),
  ]);
});

test('keys are independent', () => {
  const verdict = checkLinearizability([
    { ...op(1, 'write', 'a', 0, 10), key: 'x' },
    { ...op(2, 'read', 'a', 20, 30), key: 'y' },
    { ...op(2, 'read', 'a', 20, 30), key: 'x' },
    { ...op(2, 'read', null, 20, 30), key: 'z', outcome: 'fail' },
  ]);
  assert.equal(verdict.linearizable, false);
  assert.deepEqual(verdict.keys.map((k) => [k.key, k.linearizable, k.operations]),
    [['x', true, 2], ['y', false, 1], ['z', true, 0]]);
  assert.equal(checkLinearizability([]).linearizable, true);
});

test('throws instead of giving up silently when the state budget is exceeded', () => {
  const history = [op(1, 'write', 'a', 0, 10), op(2, 'write', 'b', 0, 10), op(3, 'read', 'c', 0, 10)];
  assert.throws(() => checkLinearizability(history, { maxStatesPerKey: 1 }), /exceeded 1 states/);
  assert.equal(checkLinearizability(history).linearizable, false);
});

// ---------------------------------------------------------------------------------------------
// Larger histories

/** Processes each run one operation at a time; each takes effect at a random instant within its interval. */
function simulate(seed: number, count: number, processes: number, values: readonly string[], infoRate: number): HistoryOperation[] {
  const random = new Random(seed);
  const clock = new Array<number>(processes).fill(0);
  const pending: { op: HistoryOperation; at: number; effective: boolean }[] = [];
  for (let i = 0; i < count; i++) {
    const p = random.int(0, processes - 1);
    const invokeTime = clock[p]! + random.int(0, 5);
    const completeTime = invokeTime + random.int(1, 30);
    clock[p] = completeTime;
    const kind = random.pick(['read', 'read', 'write', 'cas'] as const);
    const info = kind !== 'read' && random.chance(infoRate);
    const op: HistoryOperation = {
      process: p, key: 'k', kind, value: null, invokeTime, completeTime, outcome: info ? 'info' : 'ok',
    };
    pending.push({ op, at: invokeTime + random.float() * (completeTime - invokeTime), effective: !info || random.chance(0.5) });
  }
  pending.sort((a, b) => a.at - b.at);
  let state: RegisterValue = null;
  let n = 0;
  for (const { op, effective } of pending) {
    const fresh = values.length > 0 ? random.pick(values) : `v${n++}`;
    if (op.kind === 'read') op.value = state;
    else if (op.kind === 'write') {
      op.value = fresh;
      if (effective) state = fresh;
    } else {
      op.expected = random.chance(0.7) ? state : random.pick([null, ...values, 'v0']);
      op.value = fresh;
      op.swapped = state === op.expected;
      if (effective && op.swapped) state = fresh;
    }
  }
  return pending.map((p) => p.op);
}

test('300 operations with 5 concurrent processes from a real execution are linearizable', () => {
  for (const [seed, values] of [[1, ['a', 'b', 'c']], [2, []], [3, ['a', 'b']]] as const) {
    const history = simulate(seed, 300, 5, values, 0.1);
    const verdict = checkLinearizability(history);
    const k = verdict.keys[0]!;
    console.log(`seed ${seed}: ${k.operations} operations, ${k.statesExplored} states explored`);
    assert.equal(verdict.linearizable, true, k.explanation ?? "");
    assert.equal(k.operations, 300);
  }
});

test('a corrupted large history is rejected with an explanation', () => {
  const history = simulate(4, 300, 5, ['a', 'b', 'c'], 0.05);
  // Make a late read return a value that no write ever wrote.
  const victim = history.findLast((o) => o.kind === 'read' && o.outcome === 'ok')!;
  victim.value = 'never-written';
  const verdict = checkLinearizability(history);
  assert.equal(verdict.linearizable, false);
  const explanation = verdict.keys[0]!.explanation!;
  console.log(explanation);
  assert.match(explanation, /never-written/);
});
