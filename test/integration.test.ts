// Integration tests with real processes on loopback: failover after kill -9 of the main with no
// acknowledged write lost, restart recovery, a lagging standby catching up, exactly-once retries
// across a failover, and a standby with a corrupted or torn log.

import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { connect } from '../src/client/client.ts';
import { seq } from '../src/protocol/types.ts';
import { crc32, parseSegmentName, scanLog } from '../src/storage/log-format.ts';
import { http, sleep, TestCluster, waitFor, type ServerInfo } from './harness.ts';

const clusters: TestCluster[] = [];
after(async () => {
  await Promise.all(clusters.map((cluster) => cluster.close()));
});

async function startCluster(options: Parameters<typeof TestCluster.start>[0] = {}): Promise<TestCluster> {
  const cluster = await TestCluster.start(options);
  clusters.push(cluster);
  return cluster;
}

interface Status {
  role: string;
  epoch: number;
  lastSeq: number;
  commitSeq: number;
  appliedSeq: number;
  incomplete: boolean;
}

async function status(server: ServerInfo): Promise<Status> {
  return (await http(`${server.url}/v1/status`, { timeoutMs: 2000 })).json() as Status;
}

async function put(url: string, key: string, value: string, headers: Record<string, string> = {}): Promise<{ status: number; body: unknown }> {
  const result = await http(`${url}/v1/kv/${encodeURIComponent(key)}`, { method: 'PUT', body: value, headers });
  return { status: result.status, body: result.json() };
}

describe('real cluster', { timeout: 120_000 }, () => {
  it('fails over after kill -9 of the main and loses no acknowledged write', async () => {
    const cluster = await startCluster();
    const client = connect({ endpoints: [cluster.managerUrl, ...cluster.servers.map((server) => server.url)], timeoutMs: 10_000 });
    const acknowledged = new Map<string, string>();
    const write = async (i: number): Promise<void> => {
      const key = `w${i}`;
      const value = `value-${i}`;
      await client.put(key, value);
      acknowledged.set(key, value);
    };
    for (let i = 0; i < 100; i++) await write(i);
    const main = await cluster.waitForMain();
    // Writes are in flight while the main dies.
    const inFlight = Promise.allSettled(Array.from({ length: 20 }, (_, i) => write(100 + i)));
    const killedAt = Date.now();
    await cluster.kill(main);
    await inFlight;
    await write(1000);
    const failoverMs = Date.now() - killedAt;
    const newMain = await cluster.waitForMain(15_000, main.id);
    assert.notEqual(newMain.id, main.id);
    for (let i = 1001; i < 1050; i++) await write(i);
    for (const [key, value] of acknowledged) {
      const item = await client.get(key);
      assert.equal(item?.text(), value, `acknowledged write ${key} was lost`);
    }
    console.log(`failover: first acknowledged write ${failoverMs} ms after kill -9 of ${main.id}; ${acknowledged.size} writes checked`);
    assert.ok(failoverMs < 10_000);
    client.close();
  });

  it('recovers every acknowledged write after every process is killed and restarted', async () => {
    const cluster = await startCluster();
    const client = connect({ endpoints: [cluster.managerUrl], timeoutMs: 10_000 });
    for (let i = 0; i < 200; i++) await client.put(`r${i}`, `v${i}`);
    await Promise.all([cluster.manager, ...cluster.servers].map((info) => cluster.kill(info)));
    cluster.restart(cluster.manager);
    for (const server of cluster.servers) cluster.restart(server);
    await cluster.waitForMain(20_000);
    for (let i = 0; i < 200; i++) assert.equal((await client.get(`r${i}`))?.text(), `v${i}`);
    const after = await client.put('after-restart', 'yes');
    assert.ok(after.seq > 200);
    client.close();
  });

  it('lets a lagging standby catch up', async () => {
    const cluster = await startCluster();
    const client = connect({ endpoints: [cluster.managerUrl], timeoutMs: 10_000 });
    const main = await cluster.waitForMain();
    const standby = cluster.servers.find((server) => server.id !== main.id) as ServerInfo;
    await cluster.kill(standby);
    let last = { seq: 0 };
    for (let i = 0; i < 300; i++) last = await client.put(`lag${i % 50}`, `v${i}`);
    cluster.restart(standby);
    await cluster.waitForServer(standby);
    await waitFor(`${standby.id} to apply seq ${last.seq}`, 20_000, async () => ((await status(standby)).appliedSeq >= last.seq ? true : undefined));
    const local = await http(`${standby.url}/v1/kv/lag49?consistency=local&minSeq=${last.seq}`);
    assert.equal(local.status, 200);
    assert.equal(local.text, 'v299');
    client.close();
  });

  it('applies a retried write exactly once, also across a failover', async () => {
    const cluster = await startCluster();
    const main = await cluster.waitForMain();
    const session = { 'mainstay-client-id': 'retrying-client', 'mainstay-request-id': '7', 'if-none-match': '*' };
    const first = await put(main.url, 'once', 'first', session);
    assert.equal(first.status, 200);
    // The same request again: the recorded result, not a 412 from a second create.
    const again = await put(main.url, 'once', 'first', session);
    assert.deepEqual(again, first);
    await cluster.kill(main);
    const newMain = await cluster.waitForMain(15_000, main.id);
    const afterFailover = await put(newMain.url, 'once', 'first', session);
    assert.equal(afterFailover.status, 200, JSON.stringify(afterFailover.body));
    assert.deepEqual(afterFailover.body, first.body);
    // A new request id is a new write: the create-only condition now fails.
    const fresh = await put(newMain.url, 'once', 'second', { ...session, 'mainstay-request-id': '8' });
    assert.equal(fresh.status, 412);
  });

  it('answers bad requests with specific errors and keeps serving', async () => {
    const cluster = await startCluster({ servers: 2 });
    const main = await cluster.waitForMain();
    const url = main.url;
    const long = 'k'.repeat(2000);
    const cases: { name: string; method: string; path: string; body?: string; headers?: Record<string, string>; status: number; code: string }[] = [
      { name: 'empty key', method: 'PUT', path: '/v1/kv/', body: 'x', status: 400, code: 'BAD_REQUEST' },
      { name: 'oversized key', method: 'PUT', path: `/v1/kv/${long}`, body: 'x', status: 414, code: 'TOO_LARGE' },
      { name: 'oversized value', method: 'PUT', path: '/v1/kv/big', body: 'x'.repeat(1_048_577), status: 413, code: 'TOO_LARGE' },
      { name: 'bad If-Match', method: 'PUT', path: '/v1/kv/a', body: 'x', headers: { 'if-match': 'nope' }, status: 400, code: 'BAD_REQUEST' },
      { name: 'If-None-Match not *', method: 'PUT', path: '/v1/kv/a', body: 'x', headers: { 'if-none-match': '"3"' }, status: 400, code: 'BAD_REQUEST' },
      { name: 'both conditions', method: 'PUT', path: '/v1/kv/a', body: 'x', headers: { 'if-match': '"1"', 'if-none-match': '*' }, status: 400, code: 'BAD_REQUEST' },
      { name: 'bad consistency', method: 'GET', path: '/v1/kv/a?consistency=eventual', status: 400, code: 'BAD_REQUEST' },
      { name: 'negative minSeq', method: 'GET', path: '/v1/kv/a?consistency=local&minSeq=-1', status: 400, code: 'BAD_REQUEST' },
      { name: 'minSeq not a number', method: 'GET', path: '/v1/kv/a?consistency=local&minSeq=abc', status: 400, code: 'BAD_REQUEST' },
      { name: 'bad limit', method: 'GET', path: '/v1/kv?prefix=a&limit=0', status: 400, code: 'BAD_REQUEST' },
      { name: 'limit too large', method: 'GET', path: '/v1/kv?prefix=a&limit=100000', status: 400, code: 'BAD_REQUEST' },
      { name: 'unknown query parameter', method: 'GET', path: '/v1/kv/a?colour=blue', status: 400, code: 'BAD_REQUEST' },
      { name: 'malformed txn JSON', method: 'POST', path: '/v1/txn', body: '{"compare":', status: 400, code: 'BAD_REQUEST' },
      { name: 'unknown txn field', method: 'POST', path: '/v1/txn', body: '{"compares":[]}', status: 400, code: 'BAD_REQUEST' },
      { name: 'txn wrong type', method: 'POST', path: '/v1/txn', body: '{"compare":"a"}', status: 400, code: 'BAD_REQUEST' },
      { name: 'txn operation without key', method: 'POST', path: '/v1/txn', body: '{"success":[{"put":{"value":"x"}}]}', status: 400, code: 'BAD_REQUEST' },
      { name: 'bad percent-encoding', method: 'GET', path: '/v1/kv/%zz', status: 400, code: 'BAD_REQUEST' },
      { name: 'invalid UTF-8 key', method: 'GET', path: '/v1/kv/%ff%fe', status: 400, code: 'BAD_REQUEST' },
      { name: 'unknown route', method: 'GET', path: '/v2/things', status: 404, code: 'NOT_FOUND' },
      { name: 'wrong method on a key', method: 'POST', path: '/v1/kv/a', body: 'x', status: 405, code: 'METHOD_NOT_ALLOWED' },
      { name: 'wrong method on txn', method: 'GET', path: '/v1/txn', status: 405, code: 'METHOD_NOT_ALLOWED' },
      { name: 'client id without request id', method: 'PUT', path: '/v1/kv/a', body: 'x', headers: { 'mainstay-client-id': 'c' }, status: 400, code: 'BAD_REQUEST' },
      { name: 'request id not a number', method: 'PUT', path: '/v1/kv/a', body: 'x', headers: { 'mainstay-client-id': 'c', 'mainstay-request-id': 'x' }, status: 400, code: 'BAD_REQUEST' },
      { name: 'absent key', method: 'GET', path: '/v1/kv/never-written', status: 404, code: 'NOT_FOUND' },
      { name: 'failed compare-and-set', method: 'PUT', path: '/v1/kv/never-written', body: 'x', headers: { 'if-match': '"12345"' }, status: 412, code: 'PRECONDITION_FAILED' },
    ];
    assert.ok(cases.length >= 20);
    for (const item of cases) {
      const init: RequestInit = { method: item.method, headers: item.headers ?? {} };
      if (item.body !== undefined) init.body = item.body;
      const result = await http(`${url}${item.path}`, init);
      assert.equal(result.status, item.status, `${item.name}: status ${result.status} ${result.text}`);
      const body = result.json() as { error: { code: string; message: string; definite: boolean } };
      assert.equal(body.error.code, item.code, `${item.name}: ${result.text}`);
      assert.ok(body.error.message.length > 0);
      // Still serving after each bad request.
      assert.equal((await put(url, 'alive', item.name)).status, 200);
    }
  });

  it('cuts a torn last record and rejoins; reports a flipped bit as incomplete, then repairs', async () => {
    const cluster = await startCluster();
    const client = connect({ endpoints: [cluster.managerUrl], timeoutMs: 10_000 });
    for (let i = 0; i < 100; i++) await client.put(`t${i}`, `v${i}`);
    const main = await cluster.waitForMain();
    const [torn, flipped] = cluster.servers.filter((server) => server.id !== main.id) as [ServerInfo, ServerInfo];
    await cluster.stop(torn);
    await cluster.stop(flipped);
    const lastSegment = async (server: ServerInfo): Promise<string> => {
      const directory = join(server.dataDir, 'log');
      const segments = (await readdir(directory)).filter((name) => name.endsWith('.seg')).sort();
      return join(directory, segments[segments.length - 1] as string);
    };
    // Segments have preallocated zeros after their records: damage goes where the records end (by
    // the recovery scan; a record may itself end in zero bytes).
    const recordsEnd = (path: string, bytes: Uint8Array): number =>
      scanLog([{ firstSeq: parseSegmentName(basename(path)) ?? seq(1), bytes }], crc32).kept[0]?.validBytes ?? 0;
    // A half-written record at the end, as a crash in the middle of a write leaves it.
    const tornPath = await lastSegment(torn);
    const tornBytes = await readFile(tornPath);
    tornBytes.set([200, 0, 0, 0, 1, 2, 3], recordsEnd(tornPath, tornBytes));
    await writeFile(tornPath, tornBytes);
    // One flipped bit in the middle of the log.
    const path = await lastSegment(flipped);
    const bytes = await readFile(path);
    const middle = Math.floor(recordsEnd(path, bytes) / 2);
    bytes[middle] = (bytes[middle] as number) ^ 0x10;
    await writeFile(path, bytes);

    cluster.restart(torn);
    cluster.restart(flipped);
    await cluster.waitForServer(torn);
    await cluster.waitForServer(flipped);
    assert.equal((await status(torn)).incomplete, false);
    assert.match(cluster.logs(torn), /torn/i);
    // The incomplete server says so until the main has repaired it; then it holds everything.
    assert.match(cluster.logs(flipped), /incomplete/i);
    const last = await client.put('after-corruption', 'yes');
    await waitFor('the flipped server to be repaired', 20_000, async () => {
      const current = await status(flipped);
      return !current.incomplete && current.appliedSeq >= last.seq ? true : undefined;
    });
    await waitFor('the torn server to catch up', 20_000, async () => ((await status(torn)).appliedSeq >= last.seq ? true : undefined));
    for (const server of [torn, flipped]) {
      for (let i = 0; i < 100; i += 9) {
        const result = await http(`${server.url}/v1/kv/t${i}?consistency=local`);
        assert.equal(result.text, `v${i}`, `${server.id} lost t${i}`);
      }
    }
    client.close();
    await sleep(10);
  });
});
