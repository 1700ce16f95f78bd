import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkLists, compareLogs, ListReadLog, encodeLogEntry, logEntryBytesShownMax, longestGap, percentiles, recoveryTimes } from './checks.ts';

describe('chaos checks', () => {
  it('keeps list reads in bounded memory and still finds every kind of bad read', () => {
    const appends = ['a', 'b', 'c', 'd'].map((element) => ({ key: 'l', element, outcome: 'ok' as const }));
    const finals = new Map([['l', ['a', 'b', 'c', 'd']]]);
    const good = new ListReadLog();
    for (let i = 0; i < 1000; i++) good.add({ key: 'l', elements: ['a', 'b', 'c', 'd'].slice(0, i % 5), time: i });
    assert.equal(good.count, 1000);
    assert.equal(good.retained().length, 1, 'one read per key is kept when all are prefixes of one another');
    assert.equal(checkLists(good.retained(), appends, finals).ok, true);
    // Each bad shape, wherever it comes in the sequence, is still reported.
    const bad: string[][] = [['b', 'a'], ['a', 'c'], ['a', 'b', 'c', 'd', 'e'], ['a', 'a']];
    for (const wrong of bad) {
      for (const at of [0, 3, 999]) {
        const log = new ListReadLog();
        for (let i = 0; i < 1000; i++) log.add({ key: 'l', elements: i === at ? wrong : ['a', 'b', 'c', 'd'].slice(0, i % 5), time: i });
        const verdict = checkLists(log.retained(), appends, finals);
        assert.equal(verdict.ok, false, `${wrong.join(',')} at read ${at}`);
      }
    }
  });

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

  it('encodes log entries compactly whatever the size of their values, and still tells every difference', () => {
    const put = (seq: number, value: Uint8Array): unknown => ({ epoch: 3, seq, write: { type: 'put', key: 'list0', value }, session: { clientId: 'c', requestId: seq } });
    // Short values are shown whole, in hex.
    assert.equal(encodeLogEntry(put(1, new TextEncoder().encode('p1w7'))),
      '{"epoch":3,"seq":1,"write":{"type":"put","key":"list0","value":"70317737"},"session":{"clientId":"c","requestId":1}}');
    // A 1 MB value takes no more room than a small one, and a one-byte change (same length) shows.
    const big = new Uint8Array(1 << 20).fill(0x61);
    const changed = big.slice();
    changed[big.length - 1] = 0x62;
    const encoded = encodeLogEntry(put(2, big));
    assert.ok(encoded.length < 250, encoded);
    assert.match(encoded, /"value":\{"bytes":1048576,"sha256":"[0-9a-f]{64}"\}/);
    assert.equal(encodeLogEntry(put(2, big.slice())), encoded);
    // The file log hands back Buffers, whose toJSON must not get in first.
    assert.equal(encodeLogEntry(put(2, Buffer.from(big))), encoded);
    assert.equal(encodeLogEntry(put(1, Buffer.from('p1w7'))), encodeLogEntry(put(1, new TextEncoder().encode('p1w7'))));
    assert.notEqual(encodeLogEntry(put(2, changed)), encoded);
    // Either side of the threshold, and a view into a larger buffer encodes its own bytes only.
    const edge = new Uint8Array(logEntryBytesShownMax + 1).fill(0x61);
    assert.notEqual(encodeLogEntry(put(3, edge)), encodeLogEntry(put(3, edge.subarray(1))));
    assert.equal(encodeLogEntry(put(3, edge.subarray(1))), encodeLogEntry(put(3, new Uint8Array(logEntryBytesShownMax).fill(0x61))));
    const framed = new Uint8Array(300).fill(0x7a);
    framed.set(big.subarray(0, 100), 100);
    assert.equal(encodeLogEntry(put(4, framed.subarray(100, 200))), encodeLogEntry(put(4, big.slice(0, 100))));
  });

  it('compares the logs of a list-append workload in memory linear in the entries, not in the bytes', () => {
    // The shape that ran the chaos harness out of heap: each append rewrites the whole list, so
    // the values grow with the list and the log with the square of the appends (here 2,000
    // appends, 2,001 entries, 14 MB of values per server; the chaos run's was 246 MB).
    const encoder = new TextEncoder();
    const serverLog = (server: string, lastElement: string): { server: string; firstSeq: number; entries: string[] } => {
      const elements: string[] = [];
      const entries = [encodeLogEntry({ epoch: 1, seq: 1, write: { type: 'epochStart' } })];
      for (let i = 0; i < 2000; i++) {
        elements.push(i === 1999 ? lastElement : `p${i % 6}a${i}`);
        entries.push(encodeLogEntry({ epoch: 1, seq: i + 2, write: { type: 'put', key: 'list0', value: encoder.encode(elements.join(',')) } }));
      }
      return { server, firstSeq: 1, entries };
    };
    const a = serverLog('a', 'p0a1999');
    const characters = a.entries.reduce((sum, entry) => sum + entry.length, 0);
    assert.ok(characters < 2001 * 200, `${characters} characters of encoded entries`);
    assert.deepEqual(compareLogs([a, serverLog('b', 'p0a1999'), serverLog('c', 'p0a1999')]), { identical: true, compared: 4002 });
    // One element differing in the last, longest value is still a difference, at its seq.
    const differ = compareLogs([a, serverLog('b', 'p0a1999'), serverLog('c', 'p1a1999')]);
    assert.equal(differ.identical, false);
    assert.match(differ.difference as string, /^a and c differ at seq 2001: /);
  });
});
