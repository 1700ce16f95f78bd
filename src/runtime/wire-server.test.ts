// The client port's front door on its own: a stand-in core answers; checks that an answer too
// large for a frame becomes TOO_LARGE on its tag (the connection and the process carry on), that
// HTTP connections reach node:http with its timeouts, and that a refused request is counted.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import pino from 'pino';
import { WireConnection } from '../client/wire.ts';
import type { ClientRequest, ClientResponse } from '../protocol/types.ts';
import { seq } from '../protocol/types.ts';
import { defaultHttpApiLimits } from '../server/http-api.ts';
import { ClientFrontDoor } from './wire-server.ts';

describe('wire front door', () => {
  const http = createServer({ connectionsCheckingInterval: 100 }, (_request, response) => response.end('plain http\n'));
  http.headersTimeout = 300;
  http.requestTimeout = 300;
  const door = new ClientFrontDoor({
    http, limits: defaultHttpApiLimits, logger: pino({ level: 'silent' }), answerBytesMax: 4096,
    submit: (request: ClientRequest, answer: (response: ClientResponse) => void) => {
      if (request.type === 'list') {
        // 100 items of 100 bytes: about 12 KB, over the 4 KiB answer limit.
        const items = Array.from({ length: 100 }, (_, i) => ({ key: `k${i}`, value: new Uint8Array(100), version: i + 1 }));
        answer({ type: 'list', items, appliedSeq: seq(100) });
      } else if (request.type === 'read') {
        answer({ type: 'read', item: { key: request.key, value: new TextEncoder().encode('v'), version: 7 }, appliedSeq: seq(100) });
      } else {
        answer({ type: 'error', error: { code: 'UNAVAILABLE', message: 'no writes here', definite: true } });
      }
    },
    mainAddress: () => undefined,
  });
  let url = '';
  before(async () => {
    await new Promise<void>((resolve) => door.server.listen(0, '127.0.0.1', resolve));
    http.emit('listening');
    url = `http://127.0.0.1:${(door.server.address() as net.AddressInfo).port}`;
  });
  after(async () => {
    door.destroyAll();
    await new Promise<void>((resolve) => door.server.close(() => resolve()));
    http.close(() => {});
  });

  it('answers TOO_LARGE on the tag of an answer over the frame limit, and the connection carries on', async () => {
    const connection = await WireConnection.connect(url);
    try {
      const [big, small] = await Promise.all([
        connection.request({ type: 'list', prefix: '', limit: 1000, consistency: 'linearizable' }),
        connection.request({ type: 'read', key: 'a', consistency: 'linearizable' }),
      ]);
      assert.equal(big.type === 'error' ? big.error.code : big.type, 'TOO_LARGE');
      assert.match(big.type === 'error' ? big.error.message : '', /more than the wire protocol's frame limit of 4096/);
      assert.equal(small.type === 'read' ? small.item?.version : -1, 7);
      const again = await connection.request({ type: 'read', key: 'b', consistency: 'linearizable' });
      assert.equal(again.type, 'read');
      assert.equal(door.openConnections, 1);
    } finally {
      connection.close();
    }
  });

  it('hands HTTP to node:http, whose header timeout still closes a half-sent request', { timeout: 10_000 }, async () => {
    const plain = await fetch(`${url}/anything`);
    assert.equal(await plain.text(), 'plain http\n');
    const socket = net.connect({ host: '127.0.0.1', port: Number(new URL(url).port) });
    const closed = new Promise<string>((resolve) => {
      let received = '';
      socket.on('data', (chunk: Buffer) => {
        received += chunk.toString();
      });
      socket.on('close', () => resolve(received));
    });
    socket.write('GET /slow HTTP/1.1\r\nHost: x\r\n'); // the headers never end
    const started = performance.now();
    const received = await closed;
    assert.ok(performance.now() - started < 5_000, 'node:http closed the stalled request');
    assert.match(received, /^HTTP\/1\.1 408/);
  });

  it('counts a request refused for its limits without reaching the core', async () => {
    const refused = door.counts.refused;
    const connection = await WireConnection.connect(url);
    try {
      const answer = await connection.request({ type: 'read', key: '', consistency: 'linearizable' });
      assert.equal(answer.type === 'error' ? answer.error.code : answer.type, 'BAD_REQUEST');
      assert.equal(door.counts.refused, refused + 1);
    } finally {
      connection.close();
    }
  });
});
