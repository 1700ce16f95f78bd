// A timeline of a server's steps for performance work (--trace-steps FILE): one line per mark,
// "<mark> <microseconds> <count>", the time from the monotonic clock every process on the machine
// shares, so the files of a whole local cluster line up. `npm run bench -- --timeline DIR` turns
// them into the stages of a write (scripts/bench/timeline.ts). Off by default; a mark then costs one
// call that returns. Marks are buffered and appended to the file once a second and at close.

import { appendFileSync } from 'node:fs';
import { appendFile } from 'node:fs/promises';

/** What a mark records (see scripts/bench/timeline.ts for how they combine into stages). */
export type StepMark =
  /** A batch of client requests reaches the core (count: requests). */
  | 'requests'
  /** An append from the main arrived (count: entries). */
  | 'append'
  /** An append reply (an acknowledgement) arrived. */
  | 'ack'
  /** A step's messages left (count: the replies the step answers). */
  | 'sent'
  /** A step ended: its disk work submitted, its replies handed over. */
  | 'stepEnd'
  /** The file log reported an operation durable. */
  | 'durable'
  /** Wire-protocol answers were written to a connection (count: answers). */
  | 'answered';

export const stepMarks: readonly StepMark[] = ['requests', 'append', 'ack', 'sent', 'stepEnd', 'durable', 'answered'];

export interface StepTrace {
  readonly enabled: boolean;
  mark(mark: StepMark, count?: number): void;
  /** Writes what is buffered. */
  close(): void;
}

const disabled: StepTrace = { enabled: false, mark: () => {}, close: () => {} };

/** Microseconds on the machine's monotonic clock (CLOCK_MONOTONIC, shared by every process). */
export function monotonicMicroseconds(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

/**
 * A trace appending to `path`, or one that records nothing when `path` is undefined. A write that
 * fails is reported once to `onError`, and the trace stops recording.
 */
export function openStepTrace(path: string | undefined, onError: (error: Error) => void): StepTrace {
  if (path === undefined) return disabled;
  let lines: string[] = [];
  let writing = false;
  let failed = false;
  const flush = (): void => {
    if (lines.length === 0 || writing || failed) return;
    const text = `${lines.join('\n')}\n`;
    lines = [];
    writing = true;
    appendFile(path, text).catch((error: unknown) => {
      failed = true;
      lines = [];
      onError(error as Error);
    }).finally(() => {
      writing = false;
    });
  };
  const timer = setInterval(flush, 1000);
  timer.unref();
  return {
    enabled: true,
    mark(mark, count = 0) {
      if (!failed) lines.push(`${mark} ${monotonicMicroseconds()} ${count}`);
    },
    close() {
      // A write still in flight may land after these lines: readers sort the marks by time.
      clearInterval(timer);
      if (lines.length > 0 && !failed) {
        try {
          appendFileSync(path, `${lines.join('\n')}\n`);
        } catch (error) {
          onError(error as Error);
        }
      }
      lines = [];
      failed = true;
    },
  };
}
