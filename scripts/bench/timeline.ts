// The stages of a write, from the step traces of a local cluster's servers (--trace-steps, see
// src/runtime/step-trace.ts): for each batch of client requests the main took in during a run's
// window, when it sent the append, when each standby had it, wrote it, had it durable and sent its
// acknowledgement, when the main had the first acknowledgement, handed out the replies and wrote
// the answers, and when the next batch arrived. It prints the median of each stage over the
// batches: where a lock-step round of the clients spends its time, across processes, which a CPU
// profile of one process cannot show.

import { readFile } from 'node:fs/promises';
import type { StepMark } from '../../src/runtime/step-trace.ts';
import { stepMarks } from '../../src/runtime/step-trace.ts';
import { percentiles } from '../../src/chaos/checks.ts';

const median = (values: readonly number[]): number => percentiles(values).p50;

export interface TraceEvent {
  mark: StepMark;
  us: number;
  count: number;
}

/** Parses a trace file's text; lines that are not marks (a torn last line) are skipped. */
export function parseTrace(text: string): TraceEvent[] {
  const events: TraceEvent[] = [];
  for (const line of text.split('\n')) {
    const [mark, us, count] = line.split(' ');
    if (!stepMarks.includes(mark as StepMark) || us === undefined || count === undefined) continue;
    const event = { mark: mark as StepMark, us: Number(us), count: Number(count) };
    if (Number.isFinite(event.us) && Number.isFinite(event.count)) events.push(event);
  }
  return events.sort((a, b) => a.us - b.us);
}

export async function readTrace(path: string): Promise<TraceEvent[]> {
  return parseTrace(await readFile(path, 'utf8'));
}

/** Stage names, in the order of a round. Each is measured from the stage before it (the first from the batch). */
export const stageNames = [
  'main: requests in → append sent',
  'append sent → on the first standby',
  'standby: append → written, sync asked',
  'standby: sync → durable',
  'standby: durable → acknowledgement sent',
  'acknowledgement → on the main',
  'main: acknowledgement → replies (commit, apply)',
  'main: replies → answers written',
  'answers written → next batch in (client, network, intake)',
] as const;

export interface Timeline {
  /** Rounds measured (batches with every stage found). */
  rounds: number;
  /** Median requests per batch. */
  batchRequests: number;
  /** Median duration of each stage, µs, in stageNames order. */
  stagesUs: number[];
  /** Median whole round, µs (batch to next batch). */
  roundUs: number;
  /** Median time from the batch to the main's own log write being durable, µs (runs beside the standbys'). */
  mainDurableUs: number;
}

/** First event at or after `fromUs` with `mark` (and `accept`), by binary search then a scan. */
function next(events: readonly TraceEvent[], fromUs: number, mark: StepMark, accept: (event: TraceEvent) => boolean = () => true): TraceEvent | undefined {
  let low = 0;
  let high = events.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if ((events[middle] as TraceEvent).us < fromUs) low = middle + 1;
    else high = middle;
  }
  for (let i = low; i < events.length; i++) {
    const event = events[i] as TraceEvent;
    if (event.mark === mark && accept(event)) return event;
  }
  return undefined;
}

/**
 * The rounds of the batches the main took in within [fromUs, toUs). `standbys`: the traces of the
 * other servers; the first to acknowledge a batch is the one the round waits for (K = 1).
 */
export function analyzeTimeline(main: readonly TraceEvent[], standbys: readonly (readonly TraceEvent[])[], fromUs: number, toUs: number): Timeline {
  const rows: { requests: number; stages: number[]; round: number; mainDurable: number }[] = [];
  for (const batch of main) {
    if (batch.mark !== 'requests' || batch.us < fromUs || batch.us >= toUs) continue;
    const sent = next(main, batch.us, 'sent');
    const mainDurable = next(main, batch.us, 'durable');
    if (sent === undefined || mainDurable === undefined) continue;
    // The standby whose acknowledgement leaves first.
    let first: { append: TraceEvent; written: TraceEvent; durable: TraceEvent; acked: TraceEvent } | undefined;
    for (const standby of standbys) {
      const append = next(standby, batch.us, 'append', (event) => event.count > 0);
      if (append === undefined) continue;
      const written = next(standby, append.us, 'stepEnd');
      const durable = written === undefined ? undefined : next(standby, written.us, 'durable');
      const acked = durable === undefined ? undefined : next(standby, durable.us, 'sent');
      if (written === undefined || durable === undefined || acked === undefined) continue;
      if (first === undefined || acked.us < first.acked.us) first = { append, written, durable, acked };
    }
    if (first === undefined) continue;
    // The acknowledgement, then the step that hands out this batch's replies and its answers.
    const ack = next(main, first.acked.us, 'ack');
    const replies = ack === undefined ? undefined : next(main, ack.us, 'sent', (event) => event.count > 0);
    const answered = replies === undefined ? undefined : next(main, replies.us, 'answered');
    const nextBatch = answered === undefined ? undefined : next(main, answered.us, 'requests');
    if (ack === undefined || replies === undefined || answered === undefined || nextBatch === undefined) continue;
    const times = [batch.us, sent.us, first.append.us, first.written.us, first.durable.us, first.acked.us, ack.us, replies.us, answered.us, nextBatch.us];
    const stages = times.slice(1).map((time, i) => time - (times[i] as number));
    // Marks of one round come in order; one out of order means the matching went astray.
    if (stages.some((stage) => stage < 0)) continue;
    rows.push({ requests: batch.count, stages, round: nextBatch.us - batch.us, mainDurable: mainDurable.us - batch.us });
  }
  return {
    rounds: rows.length,
    batchRequests: median(rows.map((row) => row.requests)),
    stagesUs: stageNames.map((_, i) => median(rows.map((row) => row.stages[i] as number))),
    roundUs: median(rows.map((row) => row.round)),
    mainDurableUs: median(rows.map((row) => row.mainDurable)),
  };
}

export function formatTimeline(timeline: Timeline): string {
  if (timeline.rounds === 0) return 'No complete round in the window (a stage never showed: too few marks, or the traces do not line up).';
  const lines = [`${timeline.rounds} rounds, median ${timeline.batchRequests} requests per batch; medians in µs (the stages' medians need not add up to the round's):`];
  for (const [i, name] of stageNames.entries()) lines.push(`  ${String(Math.round(timeline.stagesUs[i] as number)).padStart(6)}  ${name}`);
  lines.push(`  ${String(Math.round(timeline.roundUs)).padStart(6)}  the whole round (batch to next batch)`);
  lines.push(`  ${String(Math.round(timeline.mainDurableUs)).padStart(6)}  beside it: batch → the main's own copy durable`);
  return lines.join('\n');
}
