// The bench's timeline analysis (scripts/bench/timeline.ts) on traces whose stages are known.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { TraceEvent } from '../scripts/bench/timeline.ts';
import { analyzeTimeline, formatTimeline, parseTrace, stageNames } from '../scripts/bench/timeline.ts';

/** The stage durations every synthetic round uses, in stageNames order. */
const stages = [100, 20, 150, 400, 30, 25, 120, 60, 300];

/**
 * Rounds of a main and two standbys: standby 1 acknowledges first, standby 2 later, and in between
 * the main takes heartbeats and other steps that must not be taken for the round's.
 */
function rounds(count: number): { main: TraceEvent[]; fast: TraceEvent[]; slow: TraceEvent[] } {
  const main: TraceEvent[] = [];
  const fast: TraceEvent[] = [];
  const slow: TraceEvent[] = [];
  const round = stages.reduce((sum, stage) => sum + stage, 0);
  for (let r = 0; r < count; r++) {
    let t = 1_000_000 + r * round;
    const at = (i: number): number => t + stages.slice(0, i).reduce((sum, stage) => sum + stage, 0);
    main.push({ mark: 'requests', us: t, count: 64 });
    main.push({ mark: 'sent', us: at(1), count: 0 });
    main.push({ mark: 'stepEnd', us: at(1) + 5, count: 0 });
    main.push({ mark: 'durable', us: at(4) + 50, count: 0 });
    fast.push({ mark: 'append', us: at(2), count: 64 });
    fast.push({ mark: 'stepEnd', us: at(3), count: 0 });
    fast.push({ mark: 'durable', us: at(4), count: 0 });
    fast.push({ mark: 'sent', us: at(5), count: 0 });
    // The slow standby has it later and acknowledges after the main answered.
    slow.push({ mark: 'append', us: at(2) + 40, count: 64 });
    slow.push({ mark: 'stepEnd', us: at(3) + 60, count: 0 });
    slow.push({ mark: 'durable', us: at(7) + 10, count: 0 });
    slow.push({ mark: 'sent', us: at(7) + 20, count: 0 });
    main.push({ mark: 'ack', us: at(6), count: 0 });
    // A step without replies (a heartbeat tick) between the acknowledgement and the replies.
    main.push({ mark: 'sent', us: at(6) + 10, count: 0 });
    main.push({ mark: 'sent', us: at(7), count: 64 });
    main.push({ mark: 'answered', us: at(8), count: 64 });
    main.push({ mark: 'ack', us: at(7) + 30, count: 0 });
    t += round;
  }
  const byTime = (a: TraceEvent, b: TraceEvent): number => a.us - b.us;
  return { main: main.sort(byTime), fast: fast.sort(byTime), slow: slow.sort(byTime) };
}

describe('bench timeline', () => {
  it('finds every stage of each round, waiting on the standby that acknowledges first', () => {
    const { main, fast, slow } = rounds(20);
    const timeline = analyzeTimeline(main, [slow, fast], 0, Number.MAX_SAFE_INTEGER);
    // The last batch has no next batch: 19 complete rounds.
    assert.equal(timeline.rounds, 19);
    assert.equal(timeline.batchRequests, 64);
    assert.deepEqual(timeline.stagesUs, stages);
    assert.equal(timeline.roundUs, stages.reduce((sum, stage) => sum + stage, 0));
    assert.equal(timeline.mainDurableUs, stages.slice(0, 4).reduce((sum, stage) => sum + stage, 0) + 50);
    assert.equal(stageNames.length, stages.length);
  });

  it('counts only the batches inside the window', () => {
    const { main, fast, slow } = rounds(20);
    const round = stages.reduce((sum, stage) => sum + stage, 0);
    const timeline = analyzeTimeline(main, [fast, slow], 1_000_000 + 5 * round, 1_000_000 + 10 * round);
    assert.equal(timeline.rounds, 5);
  });

  it('reports no round when a stage never shows', () => {
    const { main, slow } = rounds(5);
    const withoutDurable = slow.filter((event) => event.mark !== 'durable');
    const timeline = analyzeTimeline(main, [withoutDurable], 0, Number.MAX_SAFE_INTEGER);
    assert.equal(timeline.rounds, 0);
    assert.match(formatTimeline(timeline), /No complete round/);
  });

  it('parses trace lines, skipping a torn last line, in time order', () => {
    const events = parseTrace('requests 20 64\nsent 10 0\nbogus 30 1\ndurable 40\nacked');
    assert.deepEqual(events, [{ mark: 'sent', us: 10, count: 0 }, { mark: 'requests', us: 20, count: 64 }]);
  });
});
