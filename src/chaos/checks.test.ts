import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkLists, compareLogs, longestGap, percentiles, recoveryTimes } from './checks.ts';

describe('chaos checks', () => {
  it('passes a clean list history and resolves unknown appends from the final list', () => {
    const finals = new Map([['l', ['a', 'b', 'c']]]);
    const verdict = checkLists(
      [{ key: 'l', elements: [], time: 1 }, { key: 'l', elements: ['a'], time: 2 }, { key: 'l', elements: ['a', 'b'], time: 3 }],
      [{ key: 'l', element: 'a', outcome: 'ok' }, { key: 'l', element: 'b', outcome: 'info' }, { key: 'l', element: 'c', outcome: 'ok' }, { key: 'l', element: 'd', outcome: 'info' }],
      finals,
    );
    assert.equal(verdict.ok, true);
    assert.equal(verdict.unknownApplied, 1);
    assert.equal(verdict.unknownNotApplied, 1);
  });

  it('finds lost, duplicated, reordered and unexpected elements', () => {
    const lost = checkLists([], [{ key: 'l', element: 'a', outcome: 'ok' }], new Map([['l', []]]));
    assert.deepEqual(lost.lost, ['l:a']);
    assert.equal(lost.ok, false);
    const duplicated = checkLists([], [{ key: 'l', element: 'a', outcome: 'ok' }], new Map([['l', ['a', 'a']]]));
    assert.deepEqual(duplicated.duplicated, ['a']);
    assert.equal(duplicated.ok, false);
    const reordered = checkLists([{ key: 'l', elements: ['b', 'a'], time: 5 }], [{ key: 'l', element: 'a', outcome: 'ok' }, { key: 'l', element: 'b', outcome: 'ok' }], new Map([['l', ['a', 'b']]]));
    assert.equal(reordered.reordered.length, 1);
    assert.equal(reordered.ok, false);
    const unexpected = checkLists([], [{ key: 'l', element: 'a', outcome: 'fail' }], new Map([['l', ['a']]]));
    assert.deepEqual(unexpected.unexpected, ['l:a']);
    assert.equal(unexpected.ok, false);
  });

  it('measures recovery after each fault by the first write of a later epoch', () => {
    const acks = [{ time: 10, epoch: 1 }, { time: 120, epoch: 1 }, { time: 900, epoch: 2 }, { time: 2000, epoch: 3 }];
    assert.deepEqual(recoveryTimes([{ time: 100, epoch: 1 }, { time: 1500, epoch: 2 }], acks), [800, 500]);
    assert.deepEqual(recoveryTimes([{ time: 2500, epoch: 3 }], acks), [undefined]);
    const p = percentiles([5, 1, 3, 2, 4]);
    assert.deepEqual(p, { count: 5, p50: 3, p99: 5, max: 5 });
  });

  it('finds the longest stretch without an acknowledged write', () => {
    assert.deepEqual(longestGap([100, 200, 900, 1000], 0, 1100), { ms: 700, from: 200 });
    assert.deepEqual(longestGap([], 0, 50), { ms: 50, from: 0 });
  });

  it('compares committed logs where they overlap and names the first difference', () => {
    const same = compareLogs([{ server: 'a', firstSeq: 1, entries: ['x', 'y', 'z'] }, { server: 'b', firstSeq: 2, entries: ['y', 'z', 'w'] }]);
    assert.deepEqual(same, { identical: true, compared: 2 });
    const differ = compareLogs([{ server: 'a', firstSeq: 1, entries: ['x', 'y'] }, { server: 'b', firstSeq: 1, entries: ['x', 'q'] }]);
    assert.equal(differ.identical, false);
    assert.match(differ.difference as string, /differ at seq 2/);
  });
});
