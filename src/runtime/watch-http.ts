// GET /v1/watch: a server's change stream, as server-sent events. It owns the open streams and
// their pacing; what each applied entry changed comes from the ChangeRecorder (src/core/watch.ts),
// which the server process puts between the core and its state store, and the wire format from
// src/server/http-api.ts. Every stream is a cursor into that one record, so a stream buffers
// nothing of its own: it writes while its socket holds less than bufferBytesMax, waits for the
// socket to drain, and reads on from the record. Only applied entries are recorded, and an applied
// entry is committed, so a stream never carries an entry a failover could cut. A consumer that
// falls behind what the record keeps (the log was compacted under it), a server that stops being
// the main, a state replaced by a snapshot and a shutdown end the stream with an `error` event
// naming the last event id sent, from which the consumer resumes, here or on another server.

import type { ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { KvStore } from '../core/kv.ts';
import type { Change, ChangePosition } from '../core/watch.ts';
import { ChangeRecorder, comparePositions } from '../core/watch.ts';
import { assert } from '../lib/assert.ts';
import type { Seq } from '../protocol/types.ts';
import type { HttpResponse, WatchEndCode, WatchRequest } from '../server/http-api.ts';
import {
  renderError, renderWatchChange, renderWatchEnd, renderWatchGone, renderWatchPreamble, renderWatchProgress, retryAfterSeconds,
  watchEventId, watchHeartbeat, watchStreamHead,
} from '../server/http-api.ts';

export interface WatchLimits {
  /** Most streams open at once on one server; more are answered 429. */
  streamsMax: number;
  /** Bytes a stream may have waiting in its socket; beyond it the server waits for the consumer to read. */
  bufferBytesMax: number;
  /** How often a quiet stream gets a heartbeat comment or a progress event. */
  heartbeatMs: number;
  /** A stream whose consumer has read nothing for this long while data waits is cut. */
  stalledMsMax: number;
  /** Most changes kept for streams to resume from, besides the log's own retention. */
  historyChangesMax: number;
  /** What an EventSource waits before it reconnects (the stream's `retry:` field). */
  reconnectMs: number;
}

export const defaultWatchLimits: Readonly<WatchLimits> = Object.freeze({
  streamsMax: 1024,
  bufferBytesMax: 1024 * 1024,
  heartbeatMs: 5000,
  stalledMsMax: 60_000,
  historyChangesMax: 1_000_000,
  reconnectMs: 1000,
});

/** What the hub reads from the server core (ServerCore has all of it). */
export interface WatchedCore {
  /** True while the state is being replaced by a snapshot (no stream can be served meanwhile). */
  readonly isInstallingSnapshot: boolean;
  /** The log's first seq: changes of older seqs are forgotten. */
  readonly firstSeq: Seq;
  /** Where a stream without fromSeq starts. */
  readonly committed: Seq;
  readonly isMain: boolean;
}

export interface WatchHubOptions {
  logger: Logger;
  limits?: Partial<WatchLimits>;
  /** The clock for stall detection (default performance.now). */
  nowMs?: () => number;
}

export class WatchHub {
  readonly recorder: ChangeRecorder;
  readonly limits: WatchLimits;
  private readonly logger: Logger;
  private readonly nowMs: () => number;
  private core: WatchedCore | undefined;
  private readonly streams = new Set<WatchStream>();
  private wasMain = false;
  private heartbeat: ReturnType<typeof setInterval> | undefined;
  private closed = false;
  /** The record's shape when the streams last read it; unchanged means nothing to send. */
  private seen = { start: -1, end: -1, generation: -1 };

  constructor(store: KvStore, options: WatchHubOptions) {
    this.limits = { ...defaultWatchLimits, ...options.limits };
    assert(this.limits.streamsMax >= 1, 'streamsMax must be at least 1');
    assert(this.limits.bufferBytesMax >= 1, 'bufferBytesMax must be at least 1');
    assert(this.limits.heartbeatMs >= 1 && this.limits.stalledMsMax >= this.limits.heartbeatMs, 'stalledMsMax must be at least heartbeatMs');
    this.logger = options.logger;
    this.nowMs = options.nowMs ?? (() => performance.now());
    this.recorder = new ChangeRecorder(store, { changesMax: this.limits.historyChangesMax });
  }

  /** The store to give the server core in place of the real one. */
  get store(): KvStore {
    return this.recorder.store;
  }

  /** The core that applies through `store`; call right after constructing it. */
  attach(core: WatchedCore): void {
    this.core = core;
    this.wasMain = core.isMain;
  }

  /** Open streams, for tests and metrics. */
  get streamCount(): number {
    return this.streams.size;
  }

  /** After every input of the core: forget what the log compacted, and send what was applied. */
  onProgress(): void {
    const core = this.core;
    if (core === undefined) return;
    this.recorder.forgetThrough(core.firstSeq - 1);
    const isMain = core.isMain;
    if (this.wasMain && !isMain) {
      this.endAll('STEPPED_DOWN', 'This server stopped being the main; resume from lastEventId on another server');
    }
    this.wasMain = isMain;
    if (this.streams.size === 0) return;
    const { startPosition: start, endPosition: end, generation } = this.recorder;
    if (start === this.seen.start && end === this.seen.end && generation === this.seen.generation) return;
    this.seen = { start, end, generation };
    for (const stream of [...this.streams]) stream.pump();
  }

  /** Serve one GET /v1/watch on `response` (the request was parsed by parseHttpRequest). */
  serve(request: WatchRequest, response: ServerResponse): void {
    const core = this.core;
    if (this.closed) return send(response, renderError(503, { code: 'UNAVAILABLE', message: 'The server is shutting down; watch on another server', definite: true }, { 'Retry-After': String(retryAfterSeconds) }));
    if (core === undefined || core.isInstallingSnapshot) {
      return send(response, renderError(503, { code: 'UNAVAILABLE', message: 'This server is installing a snapshot of the state; watch on another server', definite: true }, { 'Retry-After': String(retryAfterSeconds) }));
    }
    if (this.streams.size >= this.limits.streamsMax) {
      return send(response, renderError(429, { code: 'OVERLOADED', message: `This server has ${this.streams.size} change streams open, the limit; watch on another server or retry later`, definite: true }, { 'Retry-After': String(retryAfterSeconds) }));
    }
    this.onProgress();
    const after: ChangePosition = request.after ?? { seq: core.committed };
    const fromSeqMin = this.recorder.fromSeq;
    // Resuming after a whole seq needs the changes above it; resuming inside a seq, the rest of it too.
    const servable = after.index === undefined ? after.seq >= fromSeqMin : after.seq > fromSeqMin;
    if (!servable) return send(response, renderWatchGone(after, fromSeqMin));

    const head = watchStreamHead(after);
    response.writeHead(head.status, head.headers);
    response.write(renderWatchPreamble(this.limits.reconnectMs));
    const stream = new WatchStream(this, response, request.prefix, after);
    this.streams.add(stream);
    this.logger.debug({ prefix: request.prefix, after: watchEventId(after), streams: this.streams.size }, 'A change stream opened');
    response.on('close', () => stream.closed());
    if (this.heartbeat === undefined) {
      this.heartbeat = setInterval(() => this.beat(), this.limits.heartbeatMs);
      this.heartbeat.unref();
    }
    stream.pump();
  }

  /** End every stream (the server is stopping); later requests get 503. */
  close(): void {
    this.closed = true;
    this.endAll('SHUTTING_DOWN', 'The server is shutting down; resume from lastEventId on another server');
    this.stopHeartbeat();
  }

  /** A stream ended (by either side). */
  forget(stream: WatchStream): void {
    if (!this.streams.delete(stream)) return;
    this.logger.debug({ streams: this.streams.size }, 'A change stream closed');
    if (this.streams.size === 0) this.stopHeartbeat();
  }

  private beat(): void {
    const now = this.nowMs();
    for (const stream of [...this.streams]) stream.beat(now);
  }

  private endAll(code: WatchEndCode, message: string): void {
    for (const stream of [...this.streams]) stream.end(code, message);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat === undefined) return;
    clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}

/** One open stream: a cursor into the hub's record, a prefix, and what it sent last. */
class WatchStream {
  private readonly hub: WatchHub;
  private readonly response: ServerResponse;
  private readonly prefix: string;
  private readonly generation: number;
  /** Position in the record of the next change to look at. */
  private position: number;
  /** Changes at or before this were asked not to be sent (a fromSeq above what is recorded yet). */
  private skipThrough: ChangePosition | undefined;
  /** The position of the last event sent (its id), or where the stream started. */
  private sent: ChangePosition;
  /** Bytes beyond which the stream waits for the socket to drain (at least its high-water mark, so 'drain' comes). */
  private readonly bufferBytesMax: number;
  private drainWanted = false;
  /** Since when data has waited for a consumer that does not read (undefined: it reads). */
  private stalledSinceMs: number | undefined;
  private ended = false;

  constructor(hub: WatchHub, response: ServerResponse, prefix: string, after: ChangePosition) {
    this.hub = hub;
    this.response = response;
    this.prefix = prefix;
    this.generation = hub.recorder.generation;
    this.position = hub.recorder.positionAfter(after);
    this.skipThrough = after;
    this.sent = after;
    this.bufferBytesMax = Math.max(hub.limits.bufferBytesMax, response.writableHighWaterMark);
  }

  /** Send what the record has beyond the cursor, while the socket takes it. */
  pump(): void {
    if (this.ended) return;
    const recorder = this.hub.recorder;
    if (this.generation !== recorder.generation) {
      this.end('STATE_RESET', 'This server\'s state was replaced (a snapshot install or a rebuild); resume from lastEventId on another server');
      return;
    }
    if (this.position < recorder.startPosition) {
      this.end('SLOW_CONSUMER', `This stream fell behind the changes this server keeps (those after seq ${recorder.fromSeq}); `
        + 'resume from lastEventId on another server, or read the state again and watch from its appliedSeq');
      return;
    }
    const end = recorder.endPosition;
    if (this.position >= end || this.response.writableNeedDrain) return;
    this.response.cork();
    while (this.position < end && this.response.writableLength < this.bufferBytesMax) {
      const change = recorder.changeAt(this.position) as Change;
      this.position++;
      if (this.skipThrough !== undefined) {
        if (comparePositions(change, this.skipThrough) <= 0) continue;
        this.skipThrough = undefined;
      }
      if (!change.key.startsWith(this.prefix)) continue;
      const complete = !this.moreInSeq(change);
      this.response.write(renderWatchChange(change, complete));
      this.sent = complete ? { seq: change.seq } : { seq: change.seq, index: change.index };
    }
    this.response.uncork();
    if (this.position < end && !this.drainWanted) {
      this.drainWanted = true;
      this.response.once('drain', () => {
        this.drainWanted = false;
        this.stalledSinceMs = undefined;
        this.pump();
      });
    }
  }

  /** Heartbeat: a progress event if the cursor passed seqs with nothing to send, else a comment. */
  beat(nowMs: number): void {
    if (this.ended) return;
    if (this.response.writableNeedDrain) {
      this.stalledSinceMs ??= nowMs;
      if (nowMs - this.stalledSinceMs >= this.hub.limits.stalledMsMax) {
        this.hub.forget(this);
        this.ended = true;
        // Its consumer reads nothing: an error event would wait behind the rest, so cut it.
        this.response.destroy();
      }
      return;
    }
    this.stalledSinceMs = undefined;
    const recorder = this.hub.recorder;
    const through = { seq: recorder.throughSeq };
    if (this.position === recorder.endPosition && comparePositions(through, this.sent) > 0) {
      this.response.write(renderWatchProgress(through.seq));
      this.sent = through;
    } else {
      this.response.write(watchHeartbeat);
    }
  }

  /** End the stream with an error event naming where to resume. */
  end(code: WatchEndCode, message: string): void {
    if (this.ended) return;
    this.ended = true;
    this.hub.forget(this);
    if (!this.response.writableEnded && !this.response.destroyed) this.response.end(renderWatchEnd(code, message, watchEventId(this.sent)));
  }

  /** The consumer went away (or the stream ended). */
  closed(): void {
    this.ended = true;
    this.hub.forget(this);
  }

  /** Whether a later change of the same seq goes to this stream (then this one's id is not the plain seq). */
  private moreInSeq(change: Change): boolean {
    if (this.prefix === '') return !change.last;
    // The changes of a seq are recorded together, so they are all there.
    for (let at = this.position; ; at++) {
      const next = this.hub.recorder.changeAt(at);
      if (next === undefined || next.seq !== change.seq) return false;
      if (next.key.startsWith(this.prefix)) return true;
    }
  }
}

function send(response: ServerResponse, output: HttpResponse): void {
  response.writeHead(output.status, output.headers);
  response.end(output.body);
}
