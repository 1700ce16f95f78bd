// Tests of one wire connection's deadlines against a fake server that answers only some requests:
// a request past its deadline fails alone while the connection serves the others; a connection
// over which nothing at all came back is dropped, failing everything on it.

import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';

import { decodeWireRequest, encodeWireResponse, wirePreamble } from '../protocol/wire.ts';
import { encodeFrames, frameBytesMax, FrameDecoder } from '../transport/framing.ts';
import { seq, epoch } from '../protocol/types.ts';
import { WireConnection, WireConnectionError, WireTimeoutError } from './wire.ts';

/** A wire server that answers a write only when `answer(key)` says so. */
async function fakeServer(answer: (key: string) => boolean): Promise<{ port: number; close(): void }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    let greeted = false;
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      let rest: Uint8Array = chunk;
      if (!greeted) {
        greeted = true;
        socket.write(wirePreamble);
        rest = chunk.subarray(wirePreamble.length);
      }
      const { payloads } = decoder.push(rest);
      for (const payload of payloads) {
        const { tag, request } = decodeWireRequest(payload);
        if (request.type !== 'write' || request.write.type !== 'put' || !answer(request.write.key)) continue;
        const result = { status: 'ok' as const, seq: seq(1), epoch: epoch(1), version: 1 };
        socket.write(encodeFrames([encodeWireResponse(tag, { type: 'write', result })]));
      }
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  return { port, close: () => { for (const socket of sockets) socket.destroy(); server.close(); } };
}

const put = (key: string) => ({ type: 'write' as const, write: { type: 'put' as const, key, value: new Uint8Array([1]) } });

describe('WireConnection deadlines', () => {
  const servers: { close(): void }[] = [];
  after(() => { for (const server of servers) server.close(); });

  it('fails only the request past its deadline when others are answered, and keeps serving', { timeout: 10_000 }, async () => {
    const server = await fakeServer((key) => key !== 'silent');
    servers.push(server);
    const connection = await WireConnection.connect({ host: '127.0.0.1', port: server.port });
    const started = performance.now();
    const silent = connection.request(put('silent'), 150);
    const answered = await connection.request(put('a'), 150);
    assert.equal(answered.type, 'write');
    await assert.rejects(silent, WireTimeoutError);
    const waited = performance.now() - started;
    assert.ok(waited >= 140 && waited < 2_000, `timed out after ${Math.round(waited)} ms`);
    assert.equal(connection.closed, false, 'answers came back, so the connection stays');
    assert.equal((await connection.request(put('b'), 150)).type, 'write');
    assert.equal(connection.inflight, 0);
    connection.close();
  });

  it('drops a connection over which nothing came back, failing every request on it', { timeout: 10_000 }, async () => {
    const server = await fakeServer(() => false);
    servers.push(server);
    const connection = await WireConnection.connect({ host: '127.0.0.1', port: server.port });
    const first = connection.request(put('x'), 100);
    const second = connection.request(put('y'));
    await assert.rejects(first, WireTimeoutError);
    await assert.rejects(second, (error: unknown) => error instanceof WireConnectionError && error.sent);
    assert.equal(connection.closed, true);
  });
});

describe('WireConnection limits', () => {
  it('refuses a request larger than a frame without sending it, and keeps serving the others', { timeout: 20_000 }, async () => {
    const server = await fakeServer(() => true);
    try {
      const connection = await WireConnection.connect({ host: '127.0.0.1', port: server.port });
      const huge = { type: 'write' as const, write: { type: 'put' as const, key: 'huge', value: new Uint8Array(frameBytesMax + 1) } };
      const refused = connection.request(huge);
      const answered = connection.request(put('small'));
      await assert.rejects(refused, (error: unknown) => error instanceof WireConnectionError && !error.sent && /larger than/.test(error.message));
      assert.equal((await answered).type, 'write');
      assert.equal(connection.closed, false);
      connection.close();
    } finally {
      server.close();
    }
  });
});
