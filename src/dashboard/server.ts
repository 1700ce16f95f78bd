// The dashboard's shell in the manager process: serves the page and its assets (GET /,
// GET /dashboard/*), streams live updates as server-sent events (GET /v1/events), samples the
// manager's cluster view on a timer, scrapes each server's /metrics for the rate charts, and turns
// the manager core's events into timeline entries. It only reads the cluster: the page's actions
// call the manager's existing API. What it derives is src/dashboard/model.ts's.

import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { Logger } from 'pino';
import type { ManagerEvent } from '../core/manager.ts';
import type { ClusterView, DashboardSnapshot, DashboardView } from './model.ts';
import { clusterCommitSeq, deriveView, entriesForChanges, entryForEvent, ProgressHistory, RateSeries, rateWindowMs, Timeline, timelineMax, updateKey } from './model.ts';
import type { RequestCounters } from './prometheus.ts';
import { parsePrometheus, requestCounters } from './prometheus.ts';

export interface DashboardOptions {
  /** The manager's cluster view (clusterView in manager-process.ts), read on every tick. */
  view: () => unknown;
  logger: Logger;
  /** How often the view is sampled (the lag history) and checked for changes; open pages get it every other tick. */
  tickMs?: number;
  /** How often a rate point is taken (each server's /metrics is read then). */
  rateEveryMs?: number;
}

const tickMsDefault = 250;
const rateEveryMsDefault = 2000;
/** Pages get the view every this many ticks, and at the next tick after an event. */
const pushEveryTicks = 2;
/** A scrape slower than this is abandoned; the next point averages over the longer interval. */
const scrapeTimeoutMs = 1500;
const metricsBytesMax = 4 << 20;
/** Open event streams at most: each costs a socket and a JSON copy of every update. */
const streamsMax = 32;
/** A page that does not read its stream is dropped once this much is queued for it. */
const streamQueuedBytesMax = 1 << 20;
/** Comment lines keep idle streams open through proxies; the browser reconnects after retryMs. */
const keepAliveMs = 15_000;
const retryMs = 1000;

/** The page's files (src/dashboard/client), by the name they are served under /dashboard/. */
const assets = new Map<string, string>([
  ['index.html', 'text/html; charset=utf-8'],
  ['style.css', 'text/css; charset=utf-8'],
  ['main.js', 'text/javascript; charset=utf-8'],
  ['render.js', 'text/javascript; charset=utf-8'],
  ['charts.js', 'text/javascript; charset=utf-8'],
  ['actions.js', 'text/javascript; charset=utf-8'],
  ['dom.js', 'text/javascript; charset=utf-8'],
  ['favicon.svg', 'image/svg+xml'],
]);
const assetFolder = fileURLToPath(new URL('./client/', import.meta.url));

/** Everything the page loads comes from the manager itself; nothing inline, nothing framed. */
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
  + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export class Dashboard {
  private readonly logger: Logger;
  private readonly viewOf: () => unknown;
  private readonly progress = new ProgressHistory();
  private readonly timeline = new Timeline();
  private readonly rates = new RateSeries();
  private readonly startedAtMs = Date.now();
  private readonly streams = new Set<ServerResponse>();
  private readonly assetCache = new Map<string, Promise<Buffer>>();
  /** Servers whose /metrics could not be read at the last try (logged once per change). */
  private readonly unscrapable = new Set<string>();
  private readonly timers: NodeJS.Timeout[];
  private readonly rateEveryMs: number;
  private lastView: ClusterView | undefined;
  private current: DashboardView | null = null;
  private ticks = 0;
  private pushSoon = false;
  private lastRateMs = -Infinity;
  private sampling = false;
  private closed = false;

  constructor(options: DashboardOptions) {
    this.logger = options.logger;
    this.viewOf = options.view;
    this.rateEveryMs = options.rateEveryMs ?? rateEveryMsDefault;
    const tick = setInterval(() => this.tick(), options.tickMs ?? tickMsDefault);
    const keepAlive = setInterval(() => this.write(': keep-alive\n\n'), keepAliveMs);
    this.timers = [tick, keepAlive];
    for (const timer of this.timers) timer.unref();
  }

  /** One of the manager core's `event` effects: becomes a timeline entry, sent to open pages at once. */
  onEvent(level: 'info' | 'warn' | 'debug', message: string, event?: ManagerEvent): void {
    const draft = entryForEvent(level, message, event);
    if (draft === undefined || this.closed) return;
    this.send('timeline', this.timeline.add(Date.now(), draft, updateKey(event)));
    this.pushSoon = true;
  }

  /**
   * Serves GET / (the page), GET /dashboard/* (its assets and state.json) and GET /v1/events (the
   * live stream). Returns false for any other path, which the caller serves.
   */
  serve(request: IncomingMessage, response: ServerResponse): boolean {
    const path = new URL(request.url ?? '/', 'http://manager').pathname;
    const ours = path === '/' || path === '/dashboard' || path.startsWith('/dashboard/') || path === '/v1/events';
    if (!ours) return false;
    const methods = path === '/v1/events' ? ['GET'] : ['GET', 'HEAD'];
    if (!methods.includes(request.method ?? '')) {
      response.setHeader('allow', methods.join(', '));
      sendJson(response, 405, { error: { code: 'METHOD_NOT_ALLOWED', message: `Use ${methods.join(' or ')} on ${path}`, definite: true } });
      return true;
    }
    if (path === '/v1/events') {
      this.openStream(request, response);
      return true;
    }
    if (path === '/dashboard') {
      response.writeHead(308, { location: '/' });
      response.end();
      return true;
    }
    if (path === '/dashboard/state.json') {
      sendJson(response, 200, this.snapshot());
      return true;
    }
    const name = path === '/' ? 'index.html' : path.slice('/dashboard/'.length);
    const contentType = assets.get(name);
    if (contentType === undefined) {
      sendJson(response, 404, { error: { code: 'NOT_FOUND', message: `No dashboard file ${path}`, definite: true } });
      return true;
    }
    this.asset(name).then((body) => {
      response.writeHead(200, {
        'content-type': contentType, 'content-length': body.length, 'cache-control': 'no-cache',
        'x-content-type-options': 'nosniff', 'content-security-policy': contentSecurityPolicy, 'referrer-policy': 'no-referrer',
      });
      response.end(body);
    }, (error: unknown) => {
      this.logger.error({ err: error, asset: name }, 'Cannot read a dashboard file');
      sendJson(response, 500, { error: { code: 'INTERNAL', message: `Cannot read the dashboard file ${name}`, definite: true } });
    });
    return true;
  }

  /** What a page needs to draw itself: the view, the timeline and the rate series. */
  snapshot(): DashboardSnapshot {
    return { startedAtMs: this.startedAtMs, view: this.current, timeline: this.timeline.all(), rates: this.rates.all(), rateWindowMs, timelineMax };
  }

  close(): void {
    this.closed = true;
    for (const timer of this.timers) clearInterval(timer);
    for (const stream of this.streams) stream.end();
    this.streams.clear();
  }

  // ---------------------------------------------------------------- sampling

  private tick(): void {
    if (this.closed) return;
    const nowMs = Date.now();
    // The shape is clusterView's in manager-process.ts; model.ts's ClusterView documents it.
    const view = this.viewOf() as ClusterView;
    const main = view.main === null ? undefined : view.servers.find((server) => server.id === view.main);
    if (main !== undefined && main.health === 'up' && main.status !== null) {
      this.progress.record(`${view.epoch}/${main.id}`, nowMs - (main.statusAgeMs ?? 0), main.status.lastSeq, main.status.commitSeq);
    }
    for (const draft of entriesForChanges(this.lastView, view)) {
      this.send('timeline', this.timeline.add(nowMs, draft));
      this.pushSoon = true;
    }
    this.lastView = view;
    this.current = deriveView(view, this.progress, nowMs);
    this.ticks += 1;
    if (this.pushSoon || this.ticks % pushEveryTicks === 0) {
      this.pushSoon = false;
      this.send('view', this.current);
    }
    if (!this.sampling && nowMs - this.lastRateMs >= this.rateEveryMs) {
      this.lastRateMs = nowMs;
      this.sampling = true;
      this.sampleRates(view).catch((error: unknown) => this.logger.warn({ err: error }, 'Cannot take a dashboard rate sample')).finally(() => {
        this.sampling = false;
      });
    }
  }

  private async sampleRates(view: ClusterView): Promise<void> {
    const scrapes = new Map<string, RequestCounters>();
    await Promise.all(view.servers.filter((server) => server.health === 'up').map(async (server) => {
      const counters = await this.scrape(server.id, server.address);
      if (counters !== undefined) scrapes.set(server.id, counters);
    }));
    if (this.closed) return;
    // Commits are read now, with the counters, so both cover the same interval.
    const latest = this.lastView ?? view;
    this.send('rate', this.rates.add(Date.now(), clusterCommitSeq(latest), scrapes));
  }

  private async scrape(id: string, address: string): Promise<RequestCounters | undefined> {
    let problem: string;
    try {
      const response = await fetch(`${address}/metrics`, { signal: AbortSignal.timeout(scrapeTimeoutMs) });
      const text = await response.text();
      if (response.status !== 200) problem = `HTTP ${response.status}`;
      else if (text.length > metricsBytesMax) problem = `more than ${metricsBytesMax} bytes`;
      else {
        const counters = requestCounters(parsePrometheus(text));
        if (counters !== undefined) {
          if (this.unscrapable.delete(id)) this.logger.info({ server: id }, 'The dashboard reads this server\'s metrics again');
          return counters;
        }
        problem = 'no request metrics in it';
      }
    } catch (error) {
      problem = (error as Error).message;
    }
    if (!this.unscrapable.has(id)) {
      this.unscrapable.add(id);
      this.logger.debug({ server: id, address, problem }, 'The dashboard cannot read this server\'s metrics; its charts leave it out');
    }
    return undefined;
  }

  // ---------------------------------------------------------------- the live stream

  private openStream(request: IncomingMessage, response: ServerResponse): void {
    if (this.closed || this.streams.size >= streamsMax) {
      sendJson(response, 503, { error: { code: 'UNAVAILABLE', message: `Too many open dashboards (at most ${streamsMax}); close one and retry`, definite: true } });
      return;
    }
    response.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no' });
    response.write(`retry: ${retryMs}\n\n${frame('snapshot', this.snapshot())}`);
    this.streams.add(response);
    const forget = (): void => {
      this.streams.delete(response);
    };
    request.on('close', forget);
    response.on('close', forget);
  }

  private send(type: 'view' | 'timeline' | 'rate', data: unknown): void {
    if (this.streams.size > 0) this.write(frame(type, data));
  }

  private write(text: string): void {
    for (const stream of this.streams) {
      if (stream.writableLength > streamQueuedBytesMax) {
        this.logger.warn({ queuedBytes: stream.writableLength }, 'Dropping a dashboard stream that does not keep up; the page reconnects');
        this.streams.delete(stream);
        stream.destroy();
        continue;
      }
      stream.write(text);
    }
  }

  private asset(name: string): Promise<Buffer> {
    let cached = this.assetCache.get(name);
    if (cached === undefined) {
      cached = readFile(`${assetFolder}${name}`);
      // A failed read is not kept: the next request tries again.
      cached.catch(() => this.assetCache.delete(name));
      this.assetCache.set(name, cached);
    }
    return cached;
  }
}

/** One server-sent event; JSON.stringify escapes newlines, so the data is one line. */
function frame(type: string, data: unknown): string {
  return `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
}

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(`${JSON.stringify(body)}\n`);
}
