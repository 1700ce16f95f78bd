import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ClientRequest, ClientResponse, Write } from '../protocol/types.ts';
import { seq, serverId } from '../protocol/types.ts';
import { decodeWireResponse, encodeWireRequest } from '../protocol/wire.ts';
import { defaultHttpApiLimits, parseHttpRequest, type HttpApiLimits } from './http-api.ts';
import { utf8Length } from '../lib/keys.ts';
import fc from 'fast-check';
import { parseWireRequest, renderWireResponse } from './wire-api.ts';

const limits: HttpApiLimits = { ...defaultHttpApiLimits, keyBytesMax: 8, valueBytesMax: 16, txnOperationsMax: 3, txnBytesMax: 40, listLimitMax: 10, clientIdBytesMax: 6 };
const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

function refusal(request: ClientRequest): string {
  const parsed = parseWireRequest(encodeWireRequest(5, request), limits);
  assert.equal(parsed.kind, 'refused', `expected a refusal of ${JSON.stringify(request)}`);
  if (parsed.kind !== 'refused') return '';
  const { tag, response } = decodeWireResponse(parsed.answer);
  assert.equal(tag, 5);
  assert.equal(response.type, 'error');
  return response.type === 'error' ? `${response.error.code}: ${response.error.message}` : '';
}

const put = (key: string, value = 'v'): Write & { type: 'put' } => ({ type: 'put', key, value: bytes(value) });

describe('wire API: the same limits as the HTTP API', () => {
  it('accepts requests within the limits as they are', () => {
    const requests: ClientRequest[] = [
      { type: 'write', write: put('12345678', 'x'.repeat(16)), session: { clientId: 'abcdef', requestId: 1 } },
      { type: 'write', write: { type: 'delete', key: 'k', ifVersion: 3 } },
      { type: 'write', write: { type: 'txn', compares: [{ key: 'a', version: 0 }], success: [{ type: 'put', key: 'a', value: bytes('1') }], failure: [] } },
      { type: 'read', key: 'k', consistency: 'local', minSeq: 9 },
      { type: 'list', prefix: '', limit: 10, consistency: 'linearizable' },
    ];
    for (const request of requests) assert.deepEqual(parseWireRequest(encodeWireRequest(1, request), limits), { kind: 'request', tag: 1, request });
  });

  it('refuses what the HTTP API refuses, with the same codes', () => {
    assert.match(refusal({ type: 'read', key: '', consistency: 'linearizable' }), /^BAD_REQUEST: The key is empty/);
    assert.match(refusal({ type: 'read', key: '123456789', consistency: 'linearizable' }), /^TOO_LARGE: The key is 9 bytes/);
    assert.match(refusal({ type: 'write', write: put('k', 'x'.repeat(17)) }), /^TOO_LARGE: The value is 17 bytes/);
    assert.match(refusal({ type: 'write', write: { ...put('k'), ifVersion: 1, ifAbsent: true } }), /^BAD_REQUEST: A put may have ifVersion or ifAbsent/);
    assert.match(refusal({ type: 'write', write: put('k'), session: { clientId: 'abcdefg', requestId: 1 } }), /^BAD_REQUEST: Bad client id/);
    assert.match(refusal({ type: 'write', write: put('k'), session: { clientId: 'a b', requestId: 1 } }), /^BAD_REQUEST: Bad client id/);
    assert.match(refusal({ type: 'write', write: put('k'), session: { clientId: 'a', requestId: 0 } }), /^BAD_REQUEST: Bad request id 0/);
    assert.match(refusal({ type: 'list', prefix: 'p', limit: 0, consistency: 'local' }), /^BAD_REQUEST: Bad list limit 0/);
    assert.match(refusal({ type: 'list', prefix: 'p', limit: 11, consistency: 'local' }), /^BAD_REQUEST: Bad list limit 11/);
    assert.match(refusal({ type: 'write', write: { type: 'epochStart' } }), /^BAD_REQUEST: A client cannot write a epochStart entry/);
    assert.match(refusal({ type: 'write', write: { type: 'configChange', mapVersion: 2 } }), /^BAD_REQUEST/);
    const ops = [{ type: 'delete' as const, key: 'a' }, { type: 'delete' as const, key: 'b' }];
    assert.match(refusal({ type: 'write', write: { type: 'txn', compares: [{ key: 'a', version: 1 }, { key: 'b', version: 1 }], success: ops, failure: [] } }), /^TOO_LARGE: The transaction has 4/);
    const big = { type: 'put' as const, key: '12345678', value: bytes('x'.repeat(16)) };
    assert.match(refusal({ type: 'write', write: { type: 'txn', compares: [], success: [big, big], failure: [] } }), /^TOO_LARGE: The transaction's keys and values are 48 bytes/);
    // The HTTP API refuses the same key with the same code.
    const http = parseHttpRequest({ method: 'GET', path: '/v1/kv/123456789', query: '', headers: {}, body: new Uint8Array(0) }, limits);
    assert.equal(http.kind, 'error');
  });

  it('answers a frame that does not decode on its tag, and calls a frame without a tag broken', () => {
    const frame = encodeWireRequest(77, { type: 'read', key: 'k', consistency: 'linearizable' });
    const parsed = parseWireRequest(Uint8Array.of(...frame, 1), limits);
    assert.equal(parsed.kind, 'refused');
    if (parsed.kind === 'refused') {
      assert.equal(parsed.tag, 77);
      assert.equal(parsed.code, 'BAD_REQUEST');
    }
    assert.equal(parseWireRequest(Uint8Array.of(1, 2), limits).kind, 'broken');
  });

  it('names the main\'s client address with NOT_MAIN', () => {
    const answer = renderWireResponse(3, { type: 'error', error: { code: 'NOT_MAIN', message: 'Not the main', definite: true, main: serverId('s2') } }, 'http://127.0.0.1:7002', 1 << 20);
    assert.deepEqual(decodeWireResponse(answer).response, {
      type: 'error', error: { code: 'NOT_MAIN', message: 'Not the main', definite: true, main: 's2', mainAddress: 'http://127.0.0.1:7002' },
    });
  });

  it('answers TOO_LARGE on the tag of an answer over the frame limit', () => {
    const items = Array.from({ length: 10 }, (_, i) => ({ key: `k${i}`, value: new Uint8Array(100), version: i + 1 }));
    const list: ClientResponse = { type: 'list', items, appliedSeq: seq(10) };
    assert.equal(decodeWireResponse(renderWireResponse(4, list, undefined, 1 << 20)).response.type, 'list');
    const { tag, response } = decodeWireResponse(renderWireResponse(4, list, undefined, 512));
    assert.equal(tag, 4);
    assert.equal(response.type === 'error' ? response.error.code : response.type, 'TOO_LARGE');
  });

  it('counts UTF-8 bytes as TextEncoder writes them, lone surrogates included', () => {
    fc.assert(fc.property(fc.string({ unit: 'binary' }), (text) => {
      assert.equal(utf8Length(text), new TextEncoder().encode(text).length);
    }), { numRuns: 500 });
    for (const text of ['', 'a', 'é', '€', '😀', '\ud800', '\udc00x', 'a\ud83d']) assert.equal(utf8Length(text), new TextEncoder().encode(text).length, JSON.stringify(text));
  });
});
