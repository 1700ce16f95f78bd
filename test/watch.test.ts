// The change stream (GET /v1/watch, client.watch, mainstay watch): the route's parsing and wire
// format, the stream hub in process (heartbeats, progress, slow and stalled consumers, step-down),
// the client's resumption against scripted servers, and real clusters: prefix filtering,
// transactions, deletes, Last-Event-ID, 410 for a compacted position, the CLI, and the acceptance
// test — a consumer that resumes across kill -9 of the main sees every acknowledged change exactly
// once, in seq order.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, get as httpGet, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import type { Change, Client, ReconnectInfo } from '../src/client/client.ts';
import { CompactedError, connect, MainstayError } from '../src/client/client.ts';
import { KvState, MemoryKvStore } from '../src/core/kv.ts';
import type { LogEntry, Write } from '../src/protocol/types.ts';
import { epoch, seq } from '../src/protocol/types.ts';
import { WatchHub, type WatchedCore, type WatchLimits } from '../src/runtime/watch-http.ts';
import type { HttpRequestInput, ParsedHttpRequest, WatchRequest } from '../src/server/http-api.ts';
import {
  defaultHttpApiLimits, parseHttpRequest, parseWatchEventId, renderWatchChange, renderWatchEnd, renderWatchGone, renderWatchProgress,
  watchEventId, watchStreamHead,
} from '../src/server/http-api.ts';
import { http, sleep, TestCluster, waitFor } from './harness.ts';

const utf8 = new TextEncoder();

// ---------------------------------------------------------------- reading a raw stream

interface RawEvent {
  id: string | undefined;
  event: string;
  data: string;
  /** Comment lines before it (": heartbeat"). */
  comments: string[];
}

interface RawStream {
  status: number;
  headers: Headers;
  /** The body, for answers that are not streams. */
  text: string;
  /** The next event; rejects after timeoutMs, or if the stream ends first. */
  next(timeoutMs?: number): Promise<RawEvent>;
  /** Events until one satisfies `until` (included). */
  collect(until: (event: RawEvent) => boolean, timeoutMs?: number): Promise<RawEvent[]>;
  close(): void;
}

async function openRaw(url: string, headers: Record<string, string> = {}): Promise<RawStream> {
  const controller = new AbortController();
  const response = await fetch(url, { headers, signal: controller.signal });
  if (response.status !== 200) {
    const text = await response.text();
    return { status: response.status, headers: response.headers, text, next: () => Promise.reject(new Error('not a stream')), collect: () => Promise.reject(new Error('not a stream')), close: () => {} };
  }
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let ended = false;
  const parse = (block: string): RawEvent => {
    const event: RawEvent = { id: undefined, event: 'message', data: '', comments: [] };
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) event.comments.push(line);
      else if (line.startsWith('id: ')) event.id = line.slice(4);
      else if (line.startsWith('event: ')) event.event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
      else if (line.startsWith('retry: ')) event.event = 'retry';
    }
    event.data = data.join('\n');
    return event;
  };
  const next = async (timeoutMs = 5000): Promise<RawEvent> => {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      const end = buffer.indexOf('\n\n');
      if (end >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        return parse(block);
      }
      if (ended) throw new Error('the stream ended');
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`no event within ${timeoutMs} ms`);
      const chunk = await Promise.race([reader.read(), sleep(remaining).then(() => undefined)]);
      if (chunk === undefined) continue;
      if (chunk.done) ended = true;
      else buffer += decoder.decode(chunk.value, { stream: true });
    }
  };
  return {
    status: response.status, headers: response.headers, text: '', next,
    async collect(until, timeoutMs = 5000) {
      const events: RawEvent[] = [];
      const deadline = Date.now() + timeoutMs;
      while (true) {
        const event = await next(Math.max(1, deadline - Date.now()));
        events.push(event);
        if (until(event)) return events;
      }
    },
    close: () => controller.abort(),
  };
}

const isChange = (event: RawEvent): boolean => event.event === 'message';
const changeData = (event: RawEvent): { seq: number; type: string; key: string; value?: string; valueBase64?: string; version: number } => JSON.parse(event.data) as never;

// ---------------------------------------------------------------- the route (pure)

function parse(target: string, headers: Record<string, string> = {}, method = 'GET'): ParsedHttpRequest {
  const input: HttpRequestInput = { method, path: target, headers, body: new Uint8Array(0) };
  return parseHttpRequest(input, defaultHttpApiLimits);
}

function watchOf(parsed: ParsedHttpRequest): WatchRequest {
  assert.equal(parsed.kind, 'watch', JSON.stringify(parsed));
  return (parsed as ParsedHttpRequest & { kind: 'watch' }).watch;
}

describe('GET /v1/watch: parsing and rendering', () => {
  it('parses prefix and fromSeq, and lets Last-Event-ID win over fromSeq', () => {
    assert.deepEqual(watchOf(parse('/v1/watch')), { prefix: '' });
    assert.deepEqual(watchOf(parse('/v1/watch?prefix=users%2F&fromSeq=42')), { prefix: 'users/', after: { seq: 42 } });
    assert.deepEqual(watchOf(parse('/v1/watch?prefix=a+b&fromSeq=0')), { prefix: 'a b', after: { seq: 0 } });
    assert.deepEqual(watchOf(parse('/v1/watch?fromSeq=3', { 'Last-Event-ID': '41.2' })), { prefix: '', after: { seq: 41, index: 2 } });
    assert.deepEqual(watchOf(parse('/v1/watch?fromSeq=3', { 'last-event-id': ' 41 ' })), { prefix: '', after: { seq: 41 } });
    // An EventSource that has seen no event sends an empty one.
    assert.deepEqual(watchOf(parse('/v1/watch?fromSeq=3', { 'last-event-id': '' })), { prefix: '', after: { seq: 3 } });
  });

  it('refuses bad input with specific errors', () => {
    const cases: [string, Record<string, string>, string, number][] = [
      ['/v1/watch?fromSeq=-1', {}, 'GET', 400],
      ['/v1/watch?fromSeq=1.5', {}, 'GET', 400],
      ['/v1/watch?fromSeq=9007199254740992', {}, 'GET', 400],
      ['/v1/watch?fromSeq=1&fromSeq=2', {}, 'GET', 400],
      ['/v1/watch?from=1', {}, 'GET', 400],
      [`/v1/watch?prefix=${'p'.repeat(1025)}`, {}, 'GET', 414],
      ['/v1/watch', { 'last-event-id': 'abc' }, 'GET', 400],
      ['/v1/watch', { 'last-event-id': '4.' }, 'GET', 400],
      ['/v1/watch', { 'last-event-id': '-4' }, 'GET', 400],
      ['/v1/watch', {}, 'POST', 405],
      ['/v1/watch/', {}, 'GET', 404],
    ];
    for (const [target, headers, method, status] of cases) {
      const parsed = parse(target, headers, method);
      assert.equal(parsed.kind, 'error', `${method} ${target} ${JSON.stringify(headers)}`);
      assert.equal((parsed as ParsedHttpRequest & { kind: 'error' }).status, status, `${method} ${target} ${JSON.stringify(headers)}`);
    }
    const body = parseHttpRequest({ method: 'GET', path: '/v1/watch', headers: {}, body: utf8.encode('x') });
    assert.equal(body.kind, 'error');
  });

  it('renders events, ids, progress, the end of a stream and 410', () => {
    assert.equal(watchEventId({ seq: 7 }), '7');
    assert.equal(watchEventId({ seq: 7, index: 0 }), '7.0');
    assert.deepEqual(parseWatchEventId('7.12'), { seq: 7, index: 12 });
    assert.equal(parseWatchEventId('7.1.2'), undefined);
    const put = { seq: 9, epoch: 2, index: 0, type: 'put' as const, key: 'k', value: utf8.encode('v\nw'), version: 9 };
    assert.equal(renderWatchChange(put, false), 'id: 9.0\ndata: {"seq":9,"epoch":2,"type":"put","key":"k","value":"v\\nw","version":9}\n\n');
    assert.equal(renderWatchChange({ ...put, index: 1, value: new Uint8Array([0xff]) }, true),
      'id: 9\ndata: {"seq":9,"epoch":2,"type":"put","key":"k","valueBase64":"/w==","version":9}\n\n');
    assert.equal(renderWatchChange({ seq: 10, epoch: 2, index: 0, type: 'delete', key: 'k', version: 10 }, true),
      'id: 10\ndata: {"seq":10,"epoch":2,"type":"delete","key":"k","version":10}\n\n');
    assert.equal(renderWatchProgress(12), 'id: 12\nevent: progress\ndata: {"seq":12}\n\n');
    assert.match(renderWatchEnd('SLOW_CONSUMER', 'Too slow', '9.0'), /^event: error\ndata: \{"error":\{"code":"SLOW_CONSUMER","message":"Too slow","definite":true\},"lastEventId":"9.0"\}\n\n$/);
    const gone = renderWatchGone({ seq: 3 }, 40);
    assert.equal(gone.status, 410);
    const error = (JSON.parse(gone.body as string) as { error: { code: string; fromSeqMin: number; message: string } }).error;
    assert.equal(error.code, 'COMPACTED');
    assert.equal(error.fromSeqMin, 40);
    const head = watchStreamHead({ seq: 5, index: 1 });
    assert.equal(head.headers['Content-Type'], 'text/event-stream; charset=utf-8');
    assert.equal(head.headers['Mainstay-Watch-After'], '5.1');
  });
});

// ---------------------------------------------------------------- the hub in process

/** A server core reduced to what the hub reads, applying writes at once. */
class FakeCore implements WatchedCore {
  firstSeq = seq(1);
  committed = seq(0);
  isMain = true;
  isInstallingSnapshot = false;
  private readonly state: KvState;

  constructor(private readonly hub: WatchHub) {
    this.state = new KvState(hub.store, { sessionsMax: 10 });
    hub.attach(this);
  }

  write(...writes: Write[]): void {
    const entries = writes.map((write) => {
      const entry: LogEntry = { epoch: epoch(1), seq: seq(this.committed + 1), write };
      this.committed = entry.seq;
      return entry;
    });
    this.state.apply(entries);
    this.hub.onProgress();
  }

  /** The log now starts at `firstSeq`. */
  compact(firstSeq: number): void {
    this.firstSeq = seq(firstSeq);
    this.hub.onProgress();
  }
}

const putWrite = (key: string, value: string | Uint8Array): Write => ({ type: 'put', key, value: typeof value === 'string' ? utf8.encode(value) : value });

async function startHub(limits: Partial<WatchLimits> = {}): Promise<{ hub: WatchHub; core: FakeCore; url: string; server: Server }> {
  const hub = new WatchHub(new MemoryKvStore(), { logger: pino({ level: 'silent' }), limits });
  const core = new FakeCore(hub);
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const headers: Record<string, string | undefined> = {};
    for (const [name, value] of Object.entries(request.headers)) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    const parsed = parseHttpRequest({ method: request.method ?? 'GET', path: request.url ?? '/', headers, body: new Uint8Array(0) });
    if (parsed.kind === 'watch') return hub.serve(parsed.watch, response);
    response.writeHead(404);
    response.end();
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { hub, core, server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` };
}

async function stopHub(rig: { hub: WatchHub; server: Server }): Promise<void> {
  rig.hub.close();
  rig.server.closeAllConnections();
  await new Promise((resolve) => rig.server.close(resolve));
}

describe('WatchHub in process', () => {
  it('sends progress when only other keys changed, heartbeats when nothing did, and waits for a fromSeq ahead', async () => {
    const rig = await startHub({ heartbeatMs: 50, stalledMsMax: 50 });
    try {
      rig.core.write(putWrite('y/1', 'a'));
      const stream = await openRaw(`${rig.url}/v1/watch?prefix=x/`);
      assert.equal(stream.headers.get('mainstay-watch-after'), '1');
      assert.equal((await stream.next()).event, 'retry');
      rig.core.write(putWrite('y/2', 'b'));
      const progress = await stream.collect((event) => event.event === 'progress');
      assert.equal(progress.at(-1)?.id, '2');
      const quiet = await stream.next();
      assert.deepEqual(quiet.comments, [': heartbeat']);
      rig.core.write(putWrite('x/1', 'c'));
      const change = (await stream.collect(isChange)).at(-1) as RawEvent;
      assert.equal(change.id, '3');
      assert.equal(changeData(change).key, 'x/1');
      stream.close();

      // A position the server has not applied yet: it waits, and sends only what comes after it.
      const ahead = await openRaw(`${rig.url}/v1/watch?fromSeq=5`);
      assert.equal(ahead.status, 200);
      rig.core.write(putWrite('x/2', 'd'), putWrite('x/3', 'e'), putWrite('x/4', 'f'));
      const first = (await ahead.collect(isChange)).at(-1) as RawEvent;
      assert.equal(first.id, '6');
      ahead.close();
    } finally {
      await stopHub(rig);
    }
  });

  it('answers 410 below what it keeps, 429 beyond streamsMax, and ends streams when it steps down', async () => {
    const rig = await startHub({ streamsMax: 1 });
    try {
      for (let i = 0; i < 10; i++) rig.core.write(putWrite(`k${i}`, 'v'));
      rig.core.compact(6);
      const gone = await openRaw(`${rig.url}/v1/watch?fromSeq=4`);
      assert.equal(gone.status, 410);
      assert.equal((JSON.parse(gone.text) as { error: { fromSeqMin: number } }).error.fromSeqMin, 5);
      // Inside seq 5 is gone too (seq 5 itself is compacted); after all of seq 5 is not.
      assert.equal((await openRaw(`${rig.url}/v1/watch`, { 'last-event-id': '5.0' })).status, 410);
      const stream = await openRaw(`${rig.url}/v1/watch?fromSeq=5`);
      assert.equal(stream.status, 200);
      const events = await stream.collect((event) => event.id === '10');
      assert.deepEqual(events.filter(isChange).map((event) => event.id), ['6', '7', '8', '9', '10']);
      assert.equal((await openRaw(`${rig.url}/v1/watch`)).status, 429);
      rig.core.isMain = false;
      rig.core.write(putWrite('k', 'after'));
      const rest = await stream.collect((event) => event.event === 'error');
      const end = JSON.parse((rest.at(-1) as RawEvent).data) as { error: { code: string }; lastEventId: string };
      assert.equal(end.error.code, 'STEPPED_DOWN');
      assert.equal(end.lastEventId, '10');
      await assert.rejects(stream.next(1000), /ended/);
      assert.equal(rig.hub.streamCount, 0);
    } finally {
      await stopHub(rig);
    }
  });

  it('buffers at most bufferBytesMax per stream and ends a consumer that fell behind the record with where to resume', async () => {
    const rig = await startHub({ bufferBytesMax: 64 * 1024, heartbeatMs: 10_000, stalledMsMax: 60_000 });
    try {
      const value = new Uint8Array(8 * 1024).fill(0x61);
      const stream = await new Promise<IncomingMessage>((resolve) => httpGet(`${rig.url}/v1/watch?fromSeq=0`, resolve));
      stream.pause();
      for (let i = 0; i < 4000; i++) rig.core.write(putWrite(`k/${i}`, value));
      await sleep(200);
      // The socket took what the kernel buffers hold; the rest waits in the record, not in memory.
      const socket = stream.socket;
      assert.ok(socket !== null);
      rig.core.compact(3001);
      assert.equal(rig.hub.streamCount, 0, 'the slow consumer was ended');
      let text = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        text += chunk;
      });
      stream.resume();
      await once(stream, 'end');
      const blocks = text.split('\n\n').filter((block) => block !== '');
      const last = blocks.at(-1) as string;
      assert.match(last, /^event: error\n/);
      const end = JSON.parse(last.split('data: ')[1] as string) as { error: { code: string }; lastEventId: string };
      assert.equal(end.error.code, 'SLOW_CONSUMER');
      const ids = blocks.filter((block) => block.startsWith('id: ')).map((block) => Number(/^id: (\d+)/.exec(block)?.[1]));
      assert.ok(ids.length > 0 && ids.length < 3000, `it was sent ${ids.length} changes before it fell behind`);
      assert.deepEqual(ids, ids.map((_, i) => i + 1), 'no gap and no repeat');
      assert.equal(end.lastEventId, String(ids.at(-1)));
    } finally {
      await stopHub(rig);
    }
  });

  it('cuts a stream whose consumer reads nothing for stalledMsMax', async () => {
    const rig = await startHub({ bufferBytesMax: 16 * 1024, heartbeatMs: 50, stalledMsMax: 200 });
    try {
      const stream = await new Promise<IncomingMessage>((resolve) => httpGet(`${rig.url}/v1/watch?fromSeq=0`, resolve));
      stream.pause();
      const value = new Uint8Array(8 * 1024).fill(0x62);
      for (let i = 0; i < 4000; i++) rig.core.write(putWrite(`k/${i}`, value));
      assert.equal(rig.hub.streamCount, 1);
      await waitFor('the stalled stream to be cut', 5000, async () => (rig.hub.streamCount === 0 ? true : undefined));
      stream.destroy();
    } finally {
      await stopHub(rig);
    }
  });
});

// ---------------------------------------------------------------- the client against scripted servers

describe('client.watch against scripted servers', () => {
  it('resumes on another server after the last change it delivered, skipping repeats, whatever the chunking', async () => {
    const requests: { server: string; url: string; lastEventId: string | undefined }[] = [];
    const change = (at: number, key: string, value: string): string => JSON.stringify({ seq: at, epoch: 1, type: 'put', key, value, version: at });
    /** Writes text a few bytes at a time, with CRLF line ends where asked, so the parser meets every split. */
    const dribble = async (response: ServerResponse, text: string): Promise<void> => {
      for (let i = 0; i < text.length; i += 3) {
        response.write(text.slice(i, i + 3));
        await sleep(1);
      }
    };
    const scripts: Record<string, (response: ServerResponse) => Promise<void>> = {
      a: async (response) => {
        await dribble(response, `retry: 1000\n\nid: 1\ndata: ${change(1, 'k1', 'one')}\n\nid: 2.0\r\ndata: ${change(2, 'k2', 'two')}\r\n\r\n`);
        response.destroy();
      },
      b: async (response) => {
        await dribble(response, `: hello\n\nid: 2.0\ndata: ${change(2, 'k2', 'repeat')}\n\nid: 2\ndata: ${change(2, 'k3', 'three')}\n\n`
          + `event: progress\nid: 5\ndata: {"seq":5}\n\nid: 4\ndata: ${change(4, 'k4', 'stale')}\n\n: heartbeat\n\nid: 6\ndata: ${change(6, 'k6', 'six')}\n\n`);
      },
    };
    const servers = await Promise.all(Object.entries(scripts).map(async ([name, script]) => {
      const server = createServer((request, response) => {
        if (!(request.url ?? '').startsWith('/v1/watch')) {
          response.writeHead(404);
          response.end();
          return;
        }
        requests.push({ server: name, url: request.url ?? '', lastEventId: request.headers['last-event-id'] as string | undefined });
        response.writeHead(200, { 'content-type': 'text/event-stream', 'mainstay-watch-after': '0' });
        void script(response);
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` };
    }));
    const client = connect({ endpoints: servers.map((server) => server.url), backoffMsMin: 1, backoffMsMax: 10 });
    try {
      const seen: string[] = [];
      const reconnects: ReconnectInfo[] = [];
      const stop = new AbortController();
      await client.watch({
        fromSeq: 0, signal: stop.signal, onReconnect: (info) => reconnects.push(info),
        onChange: (item: Change) => {
          seen.push(`${item.seq} ${item.key}=${item.text() ?? ''}`);
          if (item.seq === 6) stop.abort();
        },
      });
      assert.deepEqual(seen, ['1 k1=one', '2 k2=two', '2 k3=three', '6 k6=six']);
      assert.deepEqual(requests.map((request) => [request.server, request.url, request.lastEventId]), [
        ['a', '/v1/watch?fromSeq=0', undefined],
        ['b', '/v1/watch', '2.0'],
      ]);
      assert.equal(reconnects.length, 1);
      assert.equal(reconnects[0]?.after, '2.0');
    } finally {
      client.close();
      for (const { server } of servers) {
        server.closeAllConnections();
        server.close();
      }
    }
  });
});

// ---------------------------------------------------------------- real clusters

describe('change stream on a real cluster', () => {
  let cluster: TestCluster;
  let client: Client;
  let standbyUrl: string;

  before(async () => {
    cluster = await TestCluster.start({ servers: 3 });
    client = connect({ endpoints: [cluster.managerUrl] });
    const main = await cluster.waitForMain();
    standbyUrl = (cluster.servers.find((server) => server.id !== main.id) as { url: string }).url;
  });

  after(async () => {
    client.close();
    await cluster.close();
  });

  it('filters by prefix, and carries a transaction\'s changes under one seq with resumable ids', async () => {
    const start = await client.put('other/0', 'x');
    const stream = await openRaw(`${standbyUrl}/v1/watch?prefix=p/&fromSeq=${start.seq}`);
    assert.equal(stream.status, 200);
    const one = await client.put('p/a', '1');
    await client.put('q/a', 'not mine');
    const txn = await client.txn({ success: [{ put: { key: 'p/b', value: '2' } }, { put: { key: 'q/b', value: 'not mine' } }, { put: { key: 'p/c', value: utf8.encode('bytes\u0000') } }, { delete: { key: 'p/a' } }, { delete: { key: 'p/absent' } }, { put: { key: 'q/c', value: 'last, not mine' } }] });
    const deleted = await client.delete('p/b');
    const events = (await stream.collect((event) => event.id === String(deleted.seq))).filter(isChange);
    stream.close();
    assert.deepEqual(events.map((event) => event.id), [String(one.seq), `${txn.seq}.0`, `${txn.seq}.2`, String(txn.seq), String(deleted.seq)]);
    assert.deepEqual(events.map((event) => { const data = changeData(event); return `${data.seq} ${data.type} ${data.key} ${data.value ?? ''}`; }), [
      `${one.seq} put p/a 1`, `${txn.seq} put p/b 2`, `${txn.seq} put p/c bytes\u0000`, `${txn.seq} delete p/a `, `${deleted.seq} delete p/b `,
    ]);
    assert.equal(changeData(events[4] as RawEvent).version, deleted.seq);

    // The client delivers the same, once each, in order (the delete has no value).
    const seen: string[] = [];
    const stop = new AbortController();
    await client.watch({
      prefix: 'p/', fromSeq: start.seq, signal: stop.signal,
      onChange: (change) => {
        seen.push(`${change.seq} ${change.type} ${change.key} ${change.text() ?? '-'}`);
        if (change.seq === deleted.seq) stop.abort();
      },
    });
    assert.deepEqual(seen, [`${one.seq} put p/a 1`, `${txn.seq} put p/b 2`, `${txn.seq} put p/c bytes\u0000`, `${txn.seq} delete p/a -`, `${deleted.seq} delete p/b -`]);
  });

  it('resumes from Last-Event-ID, inside a transaction too, and it wins over fromSeq', async () => {
    const txn = await client.txn({ success: [{ put: { key: 'r/1', value: 'a' } }, { put: { key: 'r/2', value: 'b' } }, { put: { key: 'r/3', value: 'c' } }] });
    const later = await client.put('r/4', 'd');
    const inside = await openRaw(`${standbyUrl}/v1/watch?prefix=r/&fromSeq=0`, { 'Last-Event-ID': `${txn.seq}.0` });
    assert.equal(inside.headers.get('mainstay-watch-after'), `${txn.seq}.0`);
    const rest = (await inside.collect((event) => event.id === String(later.seq))).filter(isChange);
    inside.close();
    assert.deepEqual(rest.map((event) => event.id), [`${txn.seq}.1`, String(txn.seq), String(later.seq)]);
    assert.deepEqual(rest.map((event) => changeData(event).key), ['r/2', 'r/3', 'r/4']);
    const afterTxn = await openRaw(`${standbyUrl}/v1/watch?prefix=r/`, { 'Last-Event-ID': String(txn.seq) });
    assert.equal((await afterTxn.collect(isChange)).at(-1)?.id, String(later.seq));
    afterTxn.close();
  });

  it('starts after the server\'s commitSeq without fromSeq, and never sends a failed conditional write', async () => {
    const before = await client.put('n/old', 'before');
    // The standby's commitSeq is "now" there: wait until it has the write (a local read with minSeq).
    assert.equal((await http(`${standbyUrl}/v1/kv/n%2Fold?consistency=local&minSeq=${before.seq}`)).status, 200);
    const stream = await openRaw(`${standbyUrl}/v1/watch?prefix=n/`);
    const startsAfter = Number(stream.headers.get('mainstay-watch-after'));
    assert.ok(startsAfter >= before.seq, `starts after ${startsAfter}`);
    const old = await client.get('n/old');
    await assert.rejects(client.put('n/old', 'nope', { ifVersion: (old?.version ?? 0) + 1000 }), MainstayError);
    const fresh = await client.put('n/new', 'after');
    const events = (await stream.collect((event) => event.id === String(fresh.seq))).filter(isChange);
    stream.close();
    assert.deepEqual(events.map((event) => changeData(event).key), ['n/new']);
  });

  it('mainstay watch prints one JSON line per change and stops on Ctrl-C', async () => {
    const start = await client.put('cli/0', 'x');
    const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', entry, 'watch', 'cli/', '--from-seq', String(start.seq), '--endpoint', cluster.managerUrl], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let errors = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      errors += chunk.toString();
    });
    try {
      const one = await client.put('cli/a', 'hello');
      const two = await client.delete('cli/a');
      await waitFor('two lines from mainstay watch', 20_000, async () => (output.split('\n').filter((line) => line !== '').length >= 2 ? true : undefined));
      const lines = output.trim().split('\n').map((line) => JSON.parse(line) as unknown);
      assert.deepEqual(lines, [
        { seq: one.seq, epoch: one.epoch, type: 'put', key: 'cli/a', value: 'hello', version: one.seq },
        { seq: two.seq, epoch: two.epoch, type: 'delete', key: 'cli/a', version: two.seq },
      ]);
      const exited = once(child, 'exit');
      child.kill('SIGINT');
      const [code] = await exited as [number | null];
      assert.equal(code, 0, errors);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('change stream on a compacted log', () => {
  it('answers 410 with the oldest resumable seq, and serves from there', async () => {
    const cluster = await TestCluster.start({ servers: 2, serverFlags: ['--log-retention-entries', '50'] });
    const client = connect({ endpoints: [cluster.managerUrl] });
    try {
      const main = await cluster.waitForMain();
      let last = 0;
      for (let round = 0; round < 30; round++) {
        const results = await Promise.all(Array.from({ length: 10 }, (_, i) => client.put(`c/${i}`, `${round}`)));
        last = Math.max(last, ...results.map((result) => result.seq));
      }
      const firstSeq = await waitFor('the main to compact its log', 10_000, async () => {
        const status = (await http(`${main.url}/v1/status`)).json() as { firstSeq: number };
        return status.firstSeq > 1 ? status.firstSeq : undefined;
      });
      const gone = await http(`${main.url}/v1/watch?fromSeq=0`);
      assert.equal(gone.status, 410);
      const error = (gone.json() as { error: { code: string; fromSeqMin: number; message: string } }).error;
      assert.equal(error.code, 'COMPACTED');
      assert.ok(error.fromSeqMin >= firstSeq - 1, `fromSeqMin ${error.fromSeqMin}, log start ${firstSeq}`);
      assert.match(error.message, /keeps the changes after seq/);

      const stream = await openRaw(`${main.url}/v1/watch?prefix=c/&fromSeq=${error.fromSeqMin}`);
      assert.equal(stream.status, 200);
      const events = (await stream.collect((event) => event.id === String(last), 10_000)).filter(isChange);
      stream.close();
      assert.equal(changeData(events[0] as RawEvent).seq, error.fromSeqMin + 1);
      assert.ok(events.every((event, i) => i === 0 || changeData(event).seq === changeData(events[i - 1] as RawEvent).seq + 1), 'no gap');

      // Every server compacted it: the client reports it rather than skipping changes.
      await waitFor('the standby to compact its log', 10_000, async () => {
        const standby = cluster.servers.find((server) => server.id !== main.id) as { url: string };
        return (await http(`${standby.url}/v1/watch?fromSeq=0`)).status === 410 ? true : undefined;
      });
      await assert.rejects(client.watch({ fromSeq: 0, onChange: () => {} }), (thrown: unknown) => thrown instanceof CompactedError && thrown.code === 'COMPACTED');
    } finally {
      client.close();
      await cluster.close();
    }
  });
});

// ---------------------------------------------------------------- the acceptance test

interface ExpectedChange {
  type: 'put' | 'delete';
  key: string;
  value?: string;
}

describe('change stream across a failover (acceptance)', () => {
  it('a consumer that resumes with its last seq across kill -9 of the main sees every acknowledged change exactly once, in seq order', async () => {
    const cluster = await TestCluster.start({ servers: 3, ackQuorum: 1 });
    const endpoints = [cluster.managerUrl, ...cluster.servers.map((server) => server.url)];
    const writer = connect({ endpoints, timeoutMs: 30_000, retries: 100 });
    const consumer = connect({ endpoints: [cluster.managerUrl] });
    try {
      const main = await cluster.waitForMain();
      const marker = await writer.put('marker', 'start');

      const seen: Change[] = [];
      const reconnects: ReconnectInfo[] = [];
      const stop = new AbortController();
      const consuming = consumer.watch({
        prefix: 'w/', fromSeq: marker.seq, signal: stop.signal, onReconnect: (info) => reconnects.push(info),
        onChange: (change) => {
          seen.push(change);
        },
      });

      // Writers: each owns its keys and knows which exist, so it deletes only present keys (a delete
      // of an absent key changes nothing and has no event). Values are unique, so a change repeated
      // under another seq would show.
      const acknowledged = new Map<number, ExpectedChange[]>();
      const attempted = new Set<string>();
      let indefinite = 0;
      let running = true;
      const writerLoop = async (w: number): Promise<void> => {
        const versions = new Map<string, number | 'unknown'>();
        for (let i = 0; running; i++) {
          const key = `w/${w}/${i % 8}`;
          const value = `${w}-${i}`;
          const known = versions.get(key);
          const present = [...versions].filter(([, version]) => typeof version === 'number').map(([name]) => name);
          const choice = (i * 7919 + w * 104_729) % 100;
          const touched: string[] = [key];
          try {
            if (choice < 15 && typeof known === 'number') {
              const result = await writer.delete(key);
              acknowledged.set(result.seq, [{ type: 'delete', key }]);
              versions.delete(key);
            } else if (choice < 30 && typeof known === 'number') {
              attempted.add(value);
              const result = await writer.put(key, value, { ifVersion: known });
              acknowledged.set(result.seq, [{ type: 'put', key, value }]);
              versions.set(key, result.version);
            } else if (choice < 50) {
              const second = `w/${w}/${(i + 3) % 8}`;
              const gone = present.find((name) => name !== key && name !== second);
              touched.push(second, ...(gone === undefined ? [] : [gone]));
              attempted.add(value).add(`${value}b`);
              const operations: ExpectedChange[] = [{ type: 'put', key, value }, { type: 'put', key: second, value: `${value}b` }];
              if (gone !== undefined) operations.push({ type: 'delete', key: gone });
              const result = await writer.txn({ success: operations.map((operation) => operation.type === 'put'
                ? { put: { key: operation.key, value: operation.value as string } } : { delete: { key: operation.key } }) });
              assert.ok(result.succeeded);
              acknowledged.set(result.seq, operations);
              versions.set(key, result.seq);
              versions.set(second, result.seq);
              if (gone !== undefined) versions.delete(gone);
            } else {
              attempted.add(value);
              const result = await writer.put(key, value);
              acknowledged.set(result.seq, [{ type: 'put', key, value }]);
              versions.set(key, result.version);
            }
          } catch (error) {
            if (!(error instanceof MainstayError)) throw error;
            if (!error.definite) {
              // It may or may not have happened: these keys are unknown until written again.
              indefinite++;
              for (const name of touched) versions.set(name, 'unknown');
            }
          }
        }
      };
      const writers = Array.from({ length: 4 }, (_, w) => writerLoop(w));

      await waitFor('150 acknowledged writes and a consumer that follows them', 30_000, async () => (acknowledged.size >= 150 && seen.length >= 50 ? true : undefined));
      const beforeKill = acknowledged.size;
      await cluster.kill(main);
      const newMain = await cluster.waitForMain(20_000, main.id);
      await waitFor('150 more acknowledged writes after the failover', 30_000, async () => (acknowledged.size >= beforeKill + 150 ? true : undefined));
      running = false;
      await Promise.all(writers);
      const lastAcknowledged = Math.max(...acknowledged.keys());
      await waitFor('the consumer to catch up', 30_000, async () => ((seen.at(-1)?.seq ?? 0) >= lastAcknowledged ? true : undefined));
      stop.abort();
      await consuming;

      // The stream broke when the main died, and the consumer resumed elsewhere.
      assert.ok(reconnects.length >= 1, 'the consumer reconnected');
      assert.equal(reconnects[0]?.endpoint, main.url, 'the consumer was reading from the main when it was killed');
      assert.ok(newMain.id !== main.id);

      // In seq order, each seq's changes together, no change twice.
      const bySeq = new Map<number, Change[]>();
      let previous = marker.seq;
      for (const change of seen) {
        assert.ok(change.seq > marker.seq, 'only changes after fromSeq');
        assert.ok(change.seq >= previous, `seq ${change.seq} after ${previous}: out of order`);
        if (change.seq !== previous) assert.ok(!bySeq.has(change.seq), `seq ${change.seq} came back after another seq`);
        previous = change.seq;
        bySeq.set(change.seq, [...(bySeq.get(change.seq) ?? []), change]);
      }
      const values = seen.filter((change) => change.type === 'put').map((change) => change.text() as string);
      assert.equal(new Set(values).size, values.length, 'a value was delivered twice');
      for (const value of values) assert.ok(attempted.has(value), `value ${value} was never written`);

      // Every acknowledged write, exactly as written, at the seq its acknowledgement named.
      for (const [at, expected] of acknowledged) {
        const got = (bySeq.get(at) ?? []).map((change) => {
          const item: ExpectedChange = { type: change.type, key: change.key };
          if (change.type === 'put') item.value = change.text();
          return item;
        });
        assert.deepEqual(got, expected, `the changes at seq ${at}`);
      }
      const unacknowledged = [...bySeq.keys()].filter((at) => !acknowledged.has(at));
      assert.ok(unacknowledged.length <= indefinite, `${unacknowledged.length} seqs nobody acknowledged, ${indefinite} writes with an unknown outcome`);

      // Folding the stream gives the state.
      const folded = new Map<string, { value: string; version: number }>();
      for (const change of seen) {
        if (change.type === 'put') folded.set(change.key, { value: change.text() as string, version: change.version });
        else folded.delete(change.key);
      }
      const listed = await writer.list('w/');
      assert.deepEqual(new Map(listed.map((item) => [item.key, { value: item.text(), version: item.version }])), folded);
      process.stderr.write(`# change stream across a failover: ${acknowledged.size} acknowledged writes, ${seen.length} changes, `
        + `${reconnects.length} reconnects (${reconnects.map((info) => info.reason).join(' | ')}), ${indefinite} writes with unknown outcome\n`);
    } finally {
      writer.close();
      consumer.close();
      await cluster.close();
    }
  });
});
