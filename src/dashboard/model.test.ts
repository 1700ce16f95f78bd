// Tests of the dashboard's model: the safe-candidate rule and failover cost for each way a standby
// can fall short, lag in milliseconds from the main's history, the timeline entries made from the
// manager core's events and from changes between views, and the rate series.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ManagerEvent } from '../core/manager.ts';
import { epoch, serverId } from '../protocol/types.ts';
import type { ClusterServer, ClusterServerStatus, ClusterView } from './model.ts';
import { deriveView, entriesForChanges, entryForEvent, ProgressHistory, RateSeries, Timeline, timelineMax, updateKey } from './model.ts';
import type { RequestCounters } from './prometheus.ts';

function server(id: string, status: Partial<ClusterServerStatus> | null, extra: Partial<ClusterServer> = {}): ClusterServer {
  return {
    id, role: 'standby', priority: 0, address: `http://127.0.0.1:71${id.slice(1)}`, peerAddress: `127.0.0.1:72${id.slice(1)}`,
    health: status === null ? 'unknown' : 'up', statusAgeMs: status === null ? null : 0,
    status: status === null ? null : {
      promisedEpoch: 2, acting: 'standby', lastEpoch: 2, lastSeq: 0, commitSeq: 0, appliedSeq: 0, incomplete: false,
      contacts: ['s1'], mapVersion: 1, confirmedMapVersion: 0, ...status,
    },
    ...extra,
  };
}

function cluster(servers: ClusterServer[], extra: Partial<ClusterView> = {}): ClusterView {
  return {
    epoch: 2, main: 's1', phase: 'stable', ackQuorum: 1, mapVersion: 3, configurationChangePending: false,
    jointWith: null, pendingRemoval: null, servers, ...extra,
  };
}

const main = server('s1', { acting: 'main', lastSeq: 12, commitSeq: 10, appliedSeq: 10, contacts: ['s2', 's3'] }, { role: 'main' });

describe('deriveView: safe failover candidates', () => {
  it('judges every standby by the rule and says what a failover to it would cost', () => {
    const view = cluster([
      main,
      server('s2', { lastSeq: 12, appliedSeq: 11 }),
      server('s3', { lastSeq: 10 }, { priority: 5 }),
      server('s4', { lastSeq: 8 }),
      server('s5', { lastSeq: 12 }, { health: 'down', statusAgeMs: 3000 }),
      server('s6', { lastSeq: 12, incomplete: true }),
      server('s7', { lastSeq: 12, contacts: [] }),
      server('s8', { lastSeq: 12, lastEpoch: 1 }),
      server('s9', { lastSeq: 12, promisedEpoch: 1 }),
      server('s10', { lastSeq: 12 }, { role: 'learner' }),
      server('s11', null),
    ]);
    const derived = deriveView(view, new ProgressHistory(), 1000);
    const verdicts = Object.fromEntries(derived.servers.map((row) => [row.id, row.candidacy]));
    assert.deepEqual(verdicts.s1, { verdict: 'main' });
    assert.deepEqual(verdicts.s2, { verdict: 'safe', lacksEntries: 0 });
    assert.deepEqual(verdicts.s3, { verdict: 'safe', lacksEntries: 2 });
    assert.deepEqual(verdicts.s4, { verdict: 'unsafe', reason: 'Lacks 2 committed entries', lacksEntries: 4, lacksCommitted: 2 });
    assert.deepEqual(verdicts.s5, { verdict: 'unsafe', reason: 'Not reporting', lacksEntries: null, lacksCommitted: null });
    assert.equal(verdicts.s6?.verdict === 'unsafe' && verdicts.s6.reason, 'Its log is incomplete (awaiting repair)');
    assert.equal(verdicts.s7?.verdict === 'unsafe' && verdicts.s7.reason, 'Not in contact with the main s1');
    assert.equal(verdicts.s8?.verdict === 'unsafe' && verdicts.s8.reason, 'Its log ends in epoch 1, the main\'s in epoch 2');
    assert.equal(verdicts.s9?.verdict === 'unsafe' && verdicts.s9.reason, 'It has not joined epoch 2 yet');
    assert.equal(verdicts.s10?.verdict, 'ineligible');
    assert.equal(verdicts.s11?.verdict, 'unsafe');
    // Best first: the latest log, then priority.
    assert.deepEqual(derived.safeCandidates, ['s2', 's3']);
    assert.equal(derived.failoverVerdict, 'A failover now would lose no acknowledged write: 2 standbys hold every committed entry (s2, s3); '
      + 's2, the most complete, would take over with every entry the main logged.');
    const s2 = derived.servers.find((row) => row.id === 's2');
    assert.deepEqual([s2?.lag, s2?.applyBacklog, s2?.inContactWithMain], [{ entries: 0, ms: 0, msAtLeast: false }, 1, true]);
    assert.deepEqual([derived.mainLastSeq, derived.mainCommitSeq], [12, 10]);
  });

  it('compares a standby with what the main had committed when the standby reported', () => {
    const progress = new ProgressHistory();
    progress.record('2/s1', 900, 10, 8);
    progress.record('2/s1', 1000, 12, 10);
    // s2 reported 100 ms ago (at 900), when the main had committed 8: it held all of it then.
    const view = cluster([main, server('s2', { lastSeq: 8 }, { statusAgeMs: 100 })]);
    assert.deepEqual(deriveView(view, progress, 1000).servers[1]?.candidacy, { verdict: 'safe', lacksEntries: 4 });
    // Reported now, the same position lacks two committed entries.
    const fresh = cluster([main, server('s2', { lastSeq: 8 })]);
    assert.equal(deriveView(fresh, progress, 1000).servers[1]?.candidacy.verdict, 'unsafe');
  });

  it('says what a failover would lose with K = 0, and that none is judged during a failover', () => {
    const asynchronous = cluster([main, server('s2', { lastSeq: 7 }), server('s3', { lastSeq: 9 })], { ackQuorum: 0 });
    const derived = deriveView(asynchronous, new ProgressHistory(), 0);
    assert.deepEqual(derived.safeCandidates, []);
    assert.equal(derived.failoverVerdict, 'No standby holds every committed entry: with K = 0, a failover now would lose at least 1 acknowledged write.');
    const fencing = cluster([server('s1', { lastSeq: 12 }), server('s2', { lastSeq: 12 })], { main: null, phase: 'fencing', failoverReason: 'the main s1 restarted' });
    const during = deriveView(fencing, new ProgressHistory(), 0);
    assert.equal(during.failoverVerdict, 'A failover is in progress (epoch 2): the main s1 restarted.');
    assert.ok(during.servers.every((row) => row.candidacy.verdict === 'unsafe'));
  });
});

describe('ProgressHistory', () => {
  it('tells how long ago the main had logged the oldest entry a standby lacks', () => {
    const progress = new ProgressHistory();
    progress.record('2/s1', 1000, 10, 10);
    progress.record('2/s1', 1250, 15, 12);
    progress.record('2/s1', 1500, 20, 20);
    assert.deepEqual(progress.lagMs(20, 1600), { ms: 0, atLeast: false });
    assert.deepEqual(progress.lagMs(12, 1600), { ms: 350, atLeast: false });
    // Lacking entries the main had before the history began: a lower bound.
    assert.deepEqual(progress.lagMs(5, 1600), { ms: 600, atLeast: true });
    assert.equal(progress.commitSeqAt(1300), 12);
    assert.equal(progress.commitSeqAt(999), undefined);
    // A new main starts a new history.
    progress.record('3/s2', 1700, 18, 18);
    assert.deepEqual(progress.lagMs(12, 1800), { ms: 100, atLeast: true });
  });
});

describe('timeline entries', () => {
  const event = (value: ManagerEvent): ManagerEvent => value;

  it('tells failovers, switchovers and the first appointment apart, with reason and duration', () => {
    const failover = entryForEvent('info', 'Appointed s2 main of epoch 3 after 240 ms (the main s1 restarted)',
      event({ type: 'appointed', epoch: epoch(3), main: serverId('s2'), reason: 'the main s1 restarted', tookMs: 240 }));
    assert.deepEqual(failover, {
      kind: 'failover', level: 'info', server: 's2', durationMs: 240, title: 'Failover: s2 is the main of epoch 3',
      detail: 'Reason: the main s1 restarted. Took 240 ms from fencing to appointment.',
    });
    const planned = entryForEvent('info', 'x', event({ type: 'appointed', epoch: epoch(4), main: serverId('s3'), reason: 'planned switchover from s2 to s3', tookMs: 30 }));
    assert.equal(planned?.kind, 'switchover');
    const first = entryForEvent('info', 'x', event({ type: 'appointed', epoch: epoch(1), main: serverId('s1'), reason: 'the cluster has no main yet', tookMs: 900 }));
    assert.equal(first?.kind, 'appointment');
    const fenced = entryForEvent('warn', 'x', event({ type: 'failoverStarted', epoch: epoch(3), cause: 'mainRestarted', reason: 'the main s1 restarted' }));
    assert.deepEqual([fenced?.kind, fenced?.detail], ['fence', 'Failover started: the main s1 restarted.']);
    assert.equal(entryForEvent('debug', 'chatter', undefined), undefined);
    assert.deepEqual(entryForEvent('warn', 'Something new', undefined), { kind: 'info', level: 'warn', title: 'Something new', detail: '' });
  });

  it('classifies configuration changes as joins, removals and K changes', () => {
    const kindOf = (change: string): [string | undefined, string | undefined] => {
      const entry = entryForEvent('info', 'x', event({ type: 'configurationChanged', change, mapVersion: 5 }));
      return [entry?.kind, entry?.server];
    };
    assert.deepEqual(kindOf('added s4 as a learner'), ['join', 's4']);
    assert.deepEqual(kindOf('promoted the learner s4 to standby (lag 0 entries)'), ['join', 's4']);
    assert.deepEqual(kindOf('demoted s3 to learner; it is removed once the main confirms the new configuration'), ['removal', 's3']);
    assert.deepEqual(kindOf('the main confirmed configuration 6; removed s3'), ['removal', 's3']);
    assert.deepEqual(kindOf('removed the learner s5'), ['removal', 's5']);
    assert.deepEqual(kindOf('K changed from 1 to 2; the old rule also applies until the main confirms'), ['quorum', undefined]);
    assert.deepEqual(kindOf('the main confirmed configuration 7'), ['configuration', undefined]);
  });

  it('notes servers that stop or resume reporting and incomplete logs', () => {
    const before = cluster([main, server('s2', { lastSeq: 12 }), server('s3', { lastSeq: 12 })]);
    const after = cluster([main, server('s2', { lastSeq: 12 }, { health: 'down', statusAgeMs: 1200 }), server('s3', { lastSeq: 12, incomplete: true })]);
    assert.deepEqual(entriesForChanges(undefined, before), []);
    assert.deepEqual(entriesForChanges(before, after).map((entry) => [entry.kind, entry.title]), [
      ['health', 's2 stopped reporting'], ['incomplete', 's3 reports an incomplete log'],
    ]);
    assert.deepEqual(entriesForChanges(after, before).map((entry) => entry.title), ['s2 is reporting again', 's3\'s log is complete again']);
  });

  it('updates a failover\'s tally of fence replies in place and keeps a bounded number of entries', () => {
    const timeline = new Timeline();
    const wait = (have: number): ManagerEvent => ({ type: 'fenceQuorumWait', epoch: epoch(2), have, need: 2 });
    const first = timeline.add(10, entryForEvent('warn', 'w', wait(0)) as never, updateKey(wait(0)));
    const second = timeline.add(20, entryForEvent('warn', 'w', wait(1)) as never, updateKey(wait(1)));
    assert.equal(second.id, first.id);
    assert.equal(second.atMs, 10);
    assert.deepEqual(timeline.all().map((entry) => entry.title), ['Epoch 2: waiting for fence replies (1 of 2)']);
    for (let i = 0; i < timelineMax + 10; i += 1) timeline.add(30 + i, { kind: 'info', level: 'info', title: `n${i}`, detail: '' });
    const all = timeline.all();
    assert.equal(all.length, timelineMax);
    assert.equal(all[all.length - 1]?.title, `n${timelineMax + 9}`);
  });
});

describe('RateSeries', () => {
  const counters = (reads: number, writes: number): RequestCounters => ({
    reads, writes,
    readLatency: { buckets: [{ le: 0.001, count: reads }, { le: Infinity, count: reads }], sum: reads * 0.0005, count: reads },
    writeLatency: { buckets: [{ le: 0.01, count: writes }, { le: Infinity, count: writes }], sum: writes * 0.005, count: writes },
  });

  it('derives commits from commitSeq growth and request rates from counter differences, across restarts', () => {
    const rates = new RateSeries();
    const first = rates.add(0, 100, new Map([['s1', counters(10, 10)], ['s2', counters(0, 0)]]));
    assert.deepEqual([first.commitsPerSecond, first.readsPerSecond, first.metricsServers], [null, null, 0]);
    const second = rates.add(2000, 300, new Map([['s1', counters(50, 30)], ['s2', counters(20, 0)]]));
    assert.equal(second.commitsPerSecond, 100);
    assert.equal(second.readsPerSecond, 30);
    assert.equal(second.writesPerSecond, 10);
    assert.equal(second.metricsServers, 2);
    assert.ok(second.writeLatencyMs !== null && second.writeLatencyMs.p50 > 0 && second.writeLatencyMs.p50 <= 10);
    // s1 restarted (its counters began again); s2 was not read: it is left out.
    const third = rates.add(4000, 300, new Map([['s1', counters(4, 2)]]));
    assert.deepEqual([third.commitsPerSecond, third.readsPerSecond, third.writesPerSecond, third.metricsServers], [0, 2, 1, 1]);
    assert.equal(rates.all().length, 3);
  });
});
