// The binary client protocol on a real 3-server cluster: it shares the HTTP port, carries many
// requests at once on one connection, gives the same answers as HTTP (what one protocol writes,
// the other reads), keeps writes exactly-once with sessions, redirects from a standby to the main,
// and closes a connection that does not speak it.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { connect, PreconditionFailedError } from '../src/client/client.ts';
import { WireConnection } from '../src/client/wire.ts';
import { decodeWireResponse, wirePreamble } from '../src/protocol/wire.ts';
import { FrameDecoder } from '../src/transport/framing.ts';
import { http, TestCluster, type ServerInfo } from './harness.ts';

const text = (value: string): Uint8Array => new TextEncoder().encode(value);

describe('wire protocol', () => {
  let cluster: TestCluster;
  let main: ServerInfo;
  before(async () => {
    cluster = await TestCluster.start();
    main = await cluster.waitForMain();
  });
  after(async () => {
    await cluster?.close();
  });

  it('pipelines writes on one connection, each answered once, readable over HTTP on the same port', async () => {
    const connection = await WireConnection.connect(main.url);
    try {
      const count = 500;
      const answers = await Promise.all(Array.from({ length: count }, (_, i) =>
        connection.request({ type: 'write', write: { type: 'put', key: `wire${i}`, value: text(`value ${i}`) }, session: { clientId: `wire-${i}`, requestId: 1 } })));
      const seqs = answers.map((answer) => {
        assert.equal(answer.type, 'write', JSON.stringify(answer));
        return answer.type === 'write' ? answer.result.seq : 0;
      });
      assert.equal(new Set(seqs).size, count, 'every write has its own seq');
      assert.equal(connection.inflight, 0);
      for (const i of [0, 249, 499]) {
        const response = await http(`${main.url}/v1/kv/wire${i}`);
        assert.equal(response.status, 200);
        assert.equal(response.text, `value ${i}`);
        assert.equal(response.headers.get('etag'), `"${seqs[i]}"`);
      }
      // And HTTP writes are readable over the wire.
      assert.equal((await http(`${main.url}/v1/kv/fromhttp`, { method: 'PUT', body: 'hello' })).status, 200);
      const read = await connection.request({ type: 'read', key: 'fromhttp', consistency: 'linearizable' });
      assert.equal(read.type, 'read');
      if (read.type === 'read') assert.equal(new TextDecoder().decode(read.item?.value), 'hello');
      const list = await connection.request({ type: 'list', prefix: 'wire4', limit: 1000, consistency: 'linearizable' });
      assert.equal(list.type === 'list' ? list.items.length : -1, 111); // wire4, wire40..wire49, wire400..wire499
    } finally {
      connection.close();
    }
  });

  it('answers a retried write of a session with the recorded result, and a failed condition as such', async () => {
    const connection = await WireConnection.connect(main.url);
    try {
      const request = { type: 'write' as const, write: { type: 'put' as const, key: 'once', value: text('first') }, session: { clientId: 'wire-once', requestId: 7 } };
      const first = await connection.request(request);
      const again = await connection.request(request);
      assert.equal(first.type, 'write');
      assert.deepEqual(again, first);
      const failed = await connection.request({ type: 'write', write: { type: 'put', key: 'once', value: text('x'), ifAbsent: true } });
      assert.equal(failed.type === 'error' ? failed.error.code : failed.type, 'PRECONDITION_FAILED');
      const refused = await connection.request({ type: 'read', key: '', consistency: 'linearizable' });
      assert.equal(refused.type === 'error' ? refused.error.code : refused.type, 'BAD_REQUEST');
      // A refused request leaves the connection usable.
      const read = await connection.request({ type: 'read', key: 'once', consistency: 'linearizable' });
      assert.equal(read.type === 'read' ? read.item?.version : -1, first.type === 'write' ? first.result.seq : -2);
    } finally {
      connection.close();
    }
  });

  it('sends writes at a standby to the main with NOT_MAIN and the main\'s address', async () => {
    const standby = cluster.servers.find((server) => server.id !== main.id) as ServerInfo;
    const connection = await WireConnection.connect(standby.url);
    try {
      const answer = await connection.request({ type: 'write', write: { type: 'put', key: 'k', value: text('v') } });
      assert.equal(answer.type, 'error');
      if (answer.type === 'error') {
        assert.equal(answer.error.code, 'NOT_MAIN');
        assert.equal(answer.error.main, main.id);
        assert.equal(answer.error.mainAddress, main.url);
      }
    } finally {
      connection.close();
    }
  });

  it('carries the client library\'s get, put and delete (its default), with typed errors, across a kill -9 of the main', async () => {
    let fetches = 0;
    const counting: typeof fetch = (input, init) => {
      fetches++;
      return fetch(input, init);
    };
    const client = connect({ endpoints: cluster.servers.map((server) => server.url), timeoutMs: 20_000 });
    const httpOnly = connect({ endpoints: cluster.servers.map((server) => server.url), fetch: counting });
    try {
      const first = await client.put('lib', 'one');
      assert.equal((await client.get('lib'))?.text(), 'one');
      await assert.rejects(client.put('lib', 'two', { ifVersion: first.version + 1000 }), PreconditionFailedError);
      const deleted = await client.delete('lib', { ifVersion: first.version });
      assert.ok(deleted.seq > first.seq);
      assert.equal(await client.get('lib'), undefined);
      // It went over the wire: the main counted wire requests (discovery alone is HTTP).
      const wireRequests = async (): Promise<number> => Number(/^mainstay_wire_requests_total (\S+)$/m.exec((await http(`${main.url}/metrics`)).text)?.[1] ?? NaN);
      const before = await wireRequests();
      await client.get('lib');
      assert.equal(await wireRequests(), before + 1);
      // The same answers over HTTP (a client given its own fetch uses HTTP).
      const fetchesBefore = fetches;
      await httpOnly.put('lib', 'three');
      assert.ok(fetches > fetchesBefore);
      assert.equal(await wireRequests(), before + 1, 'the HTTP client sent nothing over the wire');
      assert.equal((await client.get('lib'))?.text(), 'three');

      const oldMain = main;
      await cluster.kill(oldMain);
      const after = await client.put('lib', 'after failover');
      const newMain = await cluster.waitForMain(15_000, oldMain.id);
      assert.notEqual(newMain.id, oldMain.id);
      assert.ok(after.epoch > first.epoch, 'the write was acknowledged by the new main');
      assert.equal((await client.get('lib'))?.text(), 'after failover');
      cluster.restart(oldMain);
      main = newMain;
    } finally {
      client.close();
      httpOnly.close();
    }
  });

  it('lets a process that never closes its client exit (an idle wire connection holds nothing)', async () => {
    const script = `import { connect } from ${JSON.stringify(new URL('../src/client/client.ts', import.meta.url).pathname)};\n`
      + `const client = connect({ endpoints: [${JSON.stringify(main.url)}] });\nawait client.put('exit', 'yes');\nconsole.log('done');\n`;
    const started = performance.now();
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { timeout: 20_000, encoding: 'utf8' });
    assert.equal(child.stdout.trim(), 'done', child.stderr);
    assert.equal(child.signal, null, 'the process had to be killed: something kept it alive');
    assert.ok(performance.now() - started < 20_000);
  });

  it('closes a connection with a wrong preamble, after an answer on the connection\'s tag', async () => {
    const socket = net.connect({ host: '127.0.0.1', port: main.httpPort });
    const decoder = new FrameDecoder();
    const received: Buffer[] = [];
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.write(Uint8Array.of(wirePreamble[0] as number, 0x4d, 0x53, 0x09));
    await closed;
    const { payloads } = decoder.push(Buffer.concat(received));
    assert.equal(payloads.length, 1);
    const { tag, response } = decodeWireResponse(payloads[0] as Uint8Array);
    assert.equal(tag, 0);
    assert.equal(response.type === 'error' ? response.error.code : response.type, 'BAD_REQUEST');
    // The server counts it, and the requests it served over the wire.
    const metrics = (await http(`${main.url}/metrics`)).text;
    const value = (name: string): number => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1] ?? NaN);
    assert.ok(value('mainstay_wire_broken_connections_total') >= 1, 'a broken connection is counted');
    assert.ok(value('mainstay_wire_requests_total') >= 1, 'wire requests are counted');
    assert.ok(value('mainstay_wire_connections') >= 0);
  });
});
