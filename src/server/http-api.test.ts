import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { ClusterMap, StatusMessage } from '../protocol/messages.ts';
import type { ClientRequest, ErrorCode, Write } from '../protocol/types.ts';
import { epoch, errorResponse, seq, serverId } from '../protocol/types.ts';
import type { HttpRequestInput, HttpResponse, ParsedHttpRequest } from './http-api.ts';
import {
  assertHttpApiLimits, clusterMapJson, decodeBase64, defaultHttpApiLimits, encodeBase64, memberAddress, parseHttpRequest,
  renderClientResponse, renderHealth, renderMetrics, renderParseError, renderStatus, statusForErrorCode,
} from './http-api.ts';

const text = new TextEncoder();

function request(method: string, target: string, options: { headers?: Record<string, string | string[]>; body?: string | Uint8Array; bodyTooLarge?: boolean } = {}): HttpRequestInput {
  const body = options.body === undefined ? new Uint8Array(0) : typeof options.body === 'string' ? text.encode(options.body) : options.body;
  const input: HttpRequestInput = { method, path: target, headers: options.headers ?? {}, body };
  if (options.bodyTooLarge !== undefined) input.bodyTooLarge = options.bodyTooLarge;
  return input;
}

function parse(input: HttpRequestInput): ParsedHttpRequest {
  return parseHttpRequest(input, defaultHttpApiLimits);
}

function clientRequest(input: HttpRequestInput): ClientRequest {
  const parsed = parse(input);
  assert.equal(parsed.kind, 'client', JSON.stringify(parsed));
  return (parsed as ParsedHttpRequest & { kind: 'client' }).request;
}

function txn(body: unknown): HttpRequestInput {
  return request('POST', '/v1/txn', { body: JSON.stringify(body) });
}

function json(response: HttpResponse): unknown {
  assert.equal(typeof response.body, 'string');
  return JSON.parse(response.body as string);
}

const session = { 'mainstay-client-id': 'c1', 'mainstay-request-id': '9' };
const oneMiB = 1024 * 1024;

describe('parseHttpRequest: bad requests', () => {
  const cases: { name: string; input: HttpRequestInput; status: number; code: ErrorCode; allow?: string }[] = [
    { name: 'empty key on GET', input: request('GET', '/v1/kv/'), status: 400, code: 'BAD_REQUEST' },
    { name: 'empty key on PUT', input: request('PUT', '/v1/kv/', { body: 'x' }), status: 400, code: 'BAD_REQUEST' },
    { name: 'oversized key', input: request('GET', `/v1/kv/${'k'.repeat(1025)}`), status: 414, code: 'TOO_LARGE' },
    { name: 'oversized key, counted in decoded bytes', input: request('GET', `/v1/kv/${'%E2%9C%93'.repeat(342)}`), status: 414, code: 'TOO_LARGE' },
    { name: 'oversized value', input: request('PUT', '/v1/kv/a', { body: new Uint8Array(oneMiB + 1) }), status: 413, code: 'TOO_LARGE' },
    { name: 'body the shell stopped reading', input: request('PUT', '/v1/kv/a', { bodyTooLarge: true }), status: 413, code: 'TOO_LARGE' },
    { name: 'If-Match without quotes', input: request('PUT', '/v1/kv/a', { headers: { 'if-match': '3' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'weak If-Match', input: request('PUT', '/v1/kv/a', { headers: { 'if-match': 'W/"3"' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'If-Match not a number', input: request('PUT', '/v1/kv/a', { headers: { 'if-match': '"abc"' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'If-Match: *', input: request('PUT', '/v1/kv/a', { headers: { 'if-match': '*' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'If-Match with two versions', input: request('PUT', '/v1/kv/a', { headers: { 'if-match': '"1", "2"' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'If-Match beyond safe integers', input: request('DELETE', '/v1/kv/a', { headers: { 'if-match': '"9007199254740992"' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'If-None-Match other than *', input: request('PUT', '/v1/kv/a', { headers: { 'if-none-match': '"3"' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'If-Match and If-None-Match together', input: request('PUT', '/v1/kv/a', { headers: { 'if-match': '"3"', 'if-none-match': '*' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'If-None-Match on DELETE', input: request('DELETE', '/v1/kv/a', { headers: { 'if-none-match': '*' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'header sent twice', input: request('PUT', '/v1/kv/a', { headers: { 'if-match': ['"1"', '"2"'] } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'unknown consistency', input: request('GET', '/v1/kv/a?consistency=strong'), status: 400, code: 'BAD_REQUEST' },
    { name: 'empty consistency', input: request('GET', '/v1/kv/a?consistency='), status: 400, code: 'BAD_REQUEST' },
    { name: 'negative minSeq', input: request('GET', '/v1/kv/a?minSeq=-1'), status: 400, code: 'BAD_REQUEST' },
    { name: 'minSeq not a number', input: request('GET', '/v1/kv/a?minSeq=abc'), status: 400, code: 'BAD_REQUEST' },
    { name: 'minSeq in exponent form', input: request('GET', '/v1/kv/a?minSeq=1e3'), status: 400, code: 'BAD_REQUEST' },
    { name: 'minSeq beyond safe integers', input: request('GET', '/v1/kv/a?consistency=local&minSeq=9007199254740992'), status: 400, code: 'BAD_REQUEST' },
    { name: 'list minSeq fractional', input: request('GET', '/v1/kv?minSeq=1.5'), status: 400, code: 'BAD_REQUEST' },
    { name: 'limit 0', input: request('GET', '/v1/kv?limit=0'), status: 400, code: 'BAD_REQUEST' },
    { name: 'limit above the maximum', input: request('GET', '/v1/kv?limit=1001'), status: 400, code: 'BAD_REQUEST' },
    { name: 'limit not a number', input: request('GET', '/v1/kv?limit=ten'), status: 400, code: 'BAD_REQUEST' },
    { name: 'query parameter given twice', input: request('GET', '/v1/kv?prefix=a&prefix=b'), status: 400, code: 'BAD_REQUEST' },
    { name: 'oversized prefix', input: request('GET', `/v1/kv?prefix=${'p'.repeat(1025)}`), status: 414, code: 'TOO_LARGE' },
    { name: 'unknown query parameter on GET', input: request('GET', '/v1/kv/a?consistncy=local'), status: 400, code: 'BAD_REQUEST' },
    { name: 'read parameter on PUT', input: request('PUT', '/v1/kv/a?consistency=local'), status: 400, code: 'BAD_REQUEST' },
    { name: 'query on POST /v1/txn', input: request('POST', '/v1/txn?dryRun=1', { body: '{}' }), status: 400, code: 'BAD_REQUEST' },
    { name: 'bad percent-encoding in key', input: request('GET', '/v1/kv/a%zz'), status: 400, code: 'BAD_REQUEST' },
    { name: 'truncated percent-encoding in key', input: request('GET', '/v1/kv/a%4'), status: 400, code: 'BAD_REQUEST' },
    { name: 'bad percent-encoding in prefix', input: request('GET', '/v1/kv?prefix=%G1'), status: 400, code: 'BAD_REQUEST' },
    { name: 'invalid UTF-8 key', input: request('GET', '/v1/kv/%FF'), status: 400, code: 'BAD_REQUEST' },
    { name: 'overlong UTF-8 key', input: request('GET', '/v1/kv/%C0%AF'), status: 400, code: 'BAD_REQUEST' },
    { name: 'unencoded non-ASCII key', input: request('GET', '/v1/kv/é'), status: 400, code: 'BAD_REQUEST' },
    { name: 'request target without a slash', input: request('GET', 'v1/kv/a'), status: 400, code: 'BAD_REQUEST' },
    { name: 'body on GET', input: request('GET', '/v1/kv/a', { body: 'x' }), status: 400, code: 'BAD_REQUEST' },
    { name: 'body on DELETE', input: request('DELETE', '/v1/kv/a', { body: 'x' }), status: 400, code: 'BAD_REQUEST' },
    { name: 'client id without request id', input: request('PUT', '/v1/kv/a', { headers: { 'mainstay-client-id': 'c1' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'request id without client id', input: request('DELETE', '/v1/kv/a', { headers: { 'mainstay-request-id': '1' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'request id 0', input: request('PUT', '/v1/kv/a', { headers: { ...session, 'mainstay-request-id': '0' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'negative request id', input: request('PUT', '/v1/kv/a', { headers: { ...session, 'mainstay-request-id': '-4' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'request id not a number', input: txn({}), status: 400, code: 'BAD_REQUEST' },
    { name: 'client id with a space', input: request('PUT', '/v1/kv/a', { headers: { ...session, 'mainstay-client-id': 'my client' } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'client id too long', input: request('PUT', '/v1/kv/a', { headers: { ...session, 'mainstay-client-id': 'c'.repeat(129) } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'malformed JSON', input: request('POST', '/v1/txn', { body: '{"success": [' }), status: 400, code: 'BAD_REQUEST' },
    { name: 'JSON body not an object', input: txn([]), status: 400, code: 'BAD_REQUEST' },
    { name: 'txn body not UTF-8', input: request('POST', '/v1/txn', { body: new Uint8Array([0x7b, 0xff, 0x7d]) }), status: 400, code: 'BAD_REQUEST' },
    { name: 'unknown top-level field', input: txn({ success: [], dryRun: true }), status: 400, code: 'BAD_REQUEST' },
    { name: 'unknown field in a put', input: txn({ success: [{ put: { key: 'a', value: 'x', ttl: 5 } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'unknown operation', input: txn({ success: [{ get: { key: 'a' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'two operations in one item', input: txn({ success: [{ put: { key: 'a', value: 'x' }, delete: { key: 'b' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'empty operation', input: txn({ failure: [{}] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'key of the wrong type', input: txn({ success: [{ put: { key: 1, value: 'x' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'value of the wrong type', input: txn({ success: [{ put: { key: 'a', value: [1, 2] } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'version as a string', input: txn({ compare: [{ key: 'a', version: '3' }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'negative version', input: txn({ compare: [{ key: 'a', version: -1 }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'fractional version', input: txn({ compare: [{ key: 'a', version: 1.5 }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'compare not an array', input: txn({ compare: { key: 'a', version: 1 } }), status: 400, code: 'BAD_REQUEST' },
    { name: 'compare without a version', input: txn({ compare: [{ key: 'a' }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'put without a value', input: txn({ success: [{ put: { key: 'a' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'put with value and valueBase64', input: txn({ success: [{ put: { key: 'a', value: 'x', valueBase64: 'eA==' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'bad base64', input: txn({ success: [{ put: { key: 'a', valueBase64: 'abc' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'base64 with a character outside the alphabet', input: txn({ success: [{ put: { key: 'a', valueBase64: 'ab-_' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'empty key in a txn', input: txn({ success: [{ delete: { key: '' } }] }), status: 400, code: 'BAD_REQUEST' },
    { name: 'lone surrogate in a txn key', input: request('POST', '/v1/txn', { body: '{"success":[{"delete":{"key":"\\ud800"}}]}' }), status: 400, code: 'BAD_REQUEST' },
    { name: 'oversized key in a txn', input: txn({ compare: [{ key: 'k'.repeat(1025), version: 0 }] }), status: 413, code: 'TOO_LARGE' },
    { name: 'oversized value in a txn', input: txn({ success: [{ put: { key: 'a', value: 'v'.repeat(oneMiB + 1) } }] }), status: 413, code: 'TOO_LARGE' },
    { name: 'too many txn operations', input: txn({ compare: Array.from({ length: 64 }, () => ({ key: 'a', version: 0 })), success: Array.from({ length: 65 }, () => ({ delete: { key: 'a' } })) }), status: 413, code: 'TOO_LARGE' },
    { name: 'txn keys and values beyond txnBytesMax', input: txn({ success: [0, 1, 2].map((index) => ({ put: { key: `k${index}`, value: 'v'.repeat(oneMiB) } })) }), status: 413, code: 'TOO_LARGE' },
    { name: 'unknown route', input: request('GET', '/v1/nope'), status: 404, code: 'NOT_FOUND' },
    { name: 'root', input: request('GET', '/'), status: 404, code: 'NOT_FOUND' },
    { name: 'status with a trailing slash', input: request('GET', '/v1/status/'), status: 404, code: 'NOT_FOUND' },
    { name: 'POST on a key', input: request('POST', '/v1/kv/a'), status: 405, code: 'METHOD_NOT_ALLOWED', allow: 'GET, PUT, DELETE' },
    { name: 'PUT on the list', input: request('PUT', '/v1/kv'), status: 405, code: 'METHOD_NOT_ALLOWED', allow: 'GET' },
    { name: 'GET on /v1/txn', input: request('GET', '/v1/txn'), status: 405, code: 'METHOD_NOT_ALLOWED', allow: 'POST' },
    { name: 'POST on /v1/status', input: request('POST', '/v1/status'), status: 405, code: 'METHOD_NOT_ALLOWED', allow: 'GET' },
    { name: 'DELETE on /metrics', input: request('DELETE', '/metrics'), status: 405, code: 'METHOD_NOT_ALLOWED', allow: 'GET' },
  ];
  // The case named "request id not a number" needs its header: set it here to keep the table flat.
  const notANumber = cases.find((entry) => entry.name === 'request id not a number');
  if (notANumber !== undefined) notANumber.input = { ...notANumber.input, headers: { ...session, 'mainstay-request-id': 'seven' } };

  it('has a long table', () => assert.ok(cases.length >= 25));

  for (const entry of cases) {
    it(`${entry.name} → ${entry.status} ${entry.code}`, () => {
      const parsed = parse(entry.input);
      assert.equal(parsed.kind, 'error', `expected an error, got ${JSON.stringify(parsed)}`);
      const error = parsed as ParsedHttpRequest & { kind: 'error' };
      assert.equal(error.status, entry.status, error.error.message);
      assert.equal(error.error.code, entry.code, error.error.message);
      assert.equal(error.error.definite, true);
      assert.match(error.error.message, /^[A-Z]/, 'messages are in sentence case');
      assert.equal(error.headers.Allow, entry.allow);
      const rendered = renderParseError(error);
      assert.equal(rendered.status, entry.status);
      assert.deepEqual(json(rendered), { error: { code: entry.code, message: error.error.message, definite: true } });
      if (entry.allow !== undefined) assert.equal(rendered.headers.Allow, entry.allow);
    });
  }

  it('says what is wrong and what to do', () => {
    const empty = parse(request('GET', '/v1/kv/')) as ParsedHttpRequest & { kind: 'error' };
    assert.match(empty.error.message, /^Cannot parse key: it is empty/);
    const unknown = parse(txn({ success: [{ put: { key: 'a', value: 'x', ttl: 1 } }] })) as ParsedHttpRequest & { kind: 'error' };
    assert.match(unknown.error.message, /unknown field "ttl" in success\[0\]\.put; use key, value or valueBase64/);
  });
});

describe('parseHttpRequest: good requests', () => {
  it('puts a percent-encoded key with a binary value', () => {
    const value = new Uint8Array([0, 255, 10, 13]);
    const parsed = clientRequest(request('PUT', '/v1/kv/users%2F42%20%E2%9C%93+x', { body: value }));
    assert.deepEqual(parsed, { type: 'write', write: { type: 'put', key: 'users/42 ✓+x', value } });
  });

  it('accepts keys at the limit and any UTF-8', () => {
    const atLimit = 'k'.repeat(1024);
    assert.deepEqual(clientRequest(request('GET', `/v1/kv/${atLimit}`)), { type: 'read', key: atLimit, consistency: 'linearizable' });
    fc.assert(fc.property(fc.string({ unit: 'grapheme', minLength: 1, maxLength: 30 }), (key) => {
      const parsed = clientRequest(request('GET', `/v1/kv/${encodeURIComponent(key)}`));
      assert.equal((parsed as ClientRequest & { type: 'read' }).key, key);
    }));
  });

  it('turns If-Match into ifVersion and If-None-Match: * into ifAbsent', () => {
    const ifMatch = clientRequest(request('PUT', '/v1/kv/a', { headers: { 'If-Match': ' "7" ' }, body: 'v' }));
    assert.deepEqual(ifMatch, { type: 'write', write: { type: 'put', key: 'a', value: text.encode('v'), ifVersion: 7 } });
    const absent = clientRequest(request('PUT', '/v1/kv/a', { headers: { 'if-match': '"0"' }, body: '' }));
    assert.equal((absent as { write: Write & { type: 'put' } }).write.ifVersion, 0);
    const create = clientRequest(request('PUT', '/v1/kv/a', { headers: { 'if-none-match': '*' }, body: 'v' }));
    assert.deepEqual(create, { type: 'write', write: { type: 'put', key: 'a', value: text.encode('v'), ifAbsent: true } });
    const remove = clientRequest(request('DELETE', '/v1/kv/a', { headers: { 'if-match': '"12"' } }));
    assert.deepEqual(remove, { type: 'write', write: { type: 'delete', key: 'a', ifVersion: 12 } });
  });

  it('attaches sessions to writes, with header names in any case', () => {
    const put = clientRequest(request('PUT', '/v1/kv/a', { headers: { 'Mainstay-Client-Id': 'app-1', 'MAINSTAY-REQUEST-ID': '1700000000000123' }, body: 'v' }));
    assert.deepEqual(put, { type: 'write', write: { type: 'put', key: 'a', value: text.encode('v') }, session: { clientId: 'app-1', requestId: 1700000000000123 } });
    const remove = clientRequest(request('DELETE', '/v1/kv/a', { headers: session }));
    assert.deepEqual((remove as { session?: unknown }).session, { clientId: 'c1', requestId: 9 });
    // Reads ignore sessions, even half ones.
    const read = clientRequest(request('GET', '/v1/kv/a', { headers: { 'mainstay-client-id': 'c1' } }));
    assert.deepEqual(read, { type: 'read', key: 'a', consistency: 'linearizable' });
  });

  it('reads with consistency and minSeq', () => {
    assert.deepEqual(clientRequest(request('GET', '/v1/kv/a?consistency=local&minSeq=5')), { type: 'read', key: 'a', consistency: 'local', minSeq: 5 });
    assert.deepEqual(clientRequest(request('GET', '/v1/kv/a?minSeq=0')), { type: 'read', key: 'a', consistency: 'linearizable', minSeq: 0 });
    const split = { ...request('GET', '/v1/kv/a'), query: '?consistency=local' };
    assert.deepEqual(clientRequest(split), { type: 'read', key: 'a', consistency: 'local' });
    const searchParams = { ...request('GET', '/v1/kv/a'), query: new URLSearchParams({ consistency: 'local', minSeq: '3' }) };
    assert.deepEqual(clientRequest(searchParams), { type: 'read', key: 'a', consistency: 'local', minSeq: 3 });
  });

  it('lists with prefix and limit', () => {
    assert.deepEqual(clientRequest(request('GET', '/v1/kv')), { type: 'list', prefix: '', limit: 1000, consistency: 'linearizable' });
    assert.deepEqual(clientRequest(request('GET', '/v1/kv?prefix=users%2Fa+b&limit=10&consistency=local&minSeq=4&')),
      { type: 'list', prefix: 'users/a b', limit: 10, consistency: 'local', minSeq: 4 });
  });

  it('parses a transaction with text and binary values and a session', () => {
    const binary = new Uint8Array([0, 1, 2, 253, 254, 255]);
    const body = {
      compare: [{ key: 'a', version: 3 }, { key: 'b', version: 0 }],
      success: [{ put: { key: 'a', value: 'héllo' } }, { put: { key: 'bin', valueBase64: Buffer.from(binary).toString('base64') } }, { delete: { key: 'c' } }],
      failure: [{ put: { key: 'empty', value: '' } }],
    };
    const parsed = clientRequest({ ...txn(body), headers: session });
    assert.deepEqual(parsed, {
      type: 'write',
      session: { clientId: 'c1', requestId: 9 },
      write: {
        type: 'txn',
        compares: [{ key: 'a', version: 3 }, { key: 'b', version: 0 }],
        success: [{ type: 'put', key: 'a', value: text.encode('héllo') }, { type: 'put', key: 'bin', value: binary }, { type: 'delete', key: 'c' }],
        failure: [{ type: 'put', key: 'empty', value: new Uint8Array(0) }],
      },
    });
    assert.deepEqual(clientRequest(txn({})), { type: 'write', write: { type: 'txn', compares: [], success: [], failure: [] } });
    const atLimit = { success: Array.from({ length: 128 }, (_, index) => ({ delete: { key: `k${index}` } })) };
    assert.equal((clientRequest(txn(atLimit)) as { write: Write & { type: 'txn' } }).write.success.length, 128);
  });

  it('routes status, health and metrics', () => {
    assert.deepEqual(parse(request('GET', '/v1/status')), { kind: 'status' });
    assert.deepEqual(parse(request('GET', '/healthz?verbose=1')), { kind: 'health' });
    assert.deepEqual(parse(request('GET', '/metrics')), { kind: 'metrics' });
  });

  it('has consistent default limits', () => {
    assertHttpApiLimits(defaultHttpApiLimits);
    assert.equal(defaultHttpApiLimits.keyBytesMax, 1024);
    assert.equal(defaultHttpApiLimits.valueBytesMax, oneMiB);
    assert.equal(defaultHttpApiLimits.listLimitMax, 1000);
    assert.equal(defaultHttpApiLimits.txnOperationsMax, 128);
    assert.throws(() => assertHttpApiLimits({ ...defaultHttpApiLimits, requestBodyBytesMax: 10 }), /requestBodyBytesMax/);
  });

  it('honours custom limits', () => {
    const limits = { ...defaultHttpApiLimits, keyBytesMax: 3, valueBytesMax: 2, txnBytesMax: 5 };
    assert.equal(parseHttpRequest(request('GET', '/v1/kv/abcd'), limits).kind, 'error');
    const value = parseHttpRequest(request('PUT', '/v1/kv/abc', { body: 'xyz' }), limits);
    assert.equal(value.kind === 'error' && value.status, 413);
  });
});

describe('renderClientResponse', () => {
  const put: ClientRequest = { type: 'write', write: { type: 'put', key: 'a', value: text.encode('v') } };
  const remove: ClientRequest = { type: 'write', write: { type: 'delete', key: 'a' } };
  const transaction: ClientRequest = { type: 'write', write: { type: 'txn', compares: [], success: [], failure: [] } };
  const read: ClientRequest = { type: 'read', key: 'a/b', consistency: 'linearizable' };
  const list: ClientRequest = { type: 'list', prefix: '', limit: 10, consistency: 'local' };

  it('renders a put with its version and ETag', () => {
    const response = renderClientResponse({ type: 'write', result: { status: 'ok', seq: seq(7), epoch: epoch(2), version: 7 } }, put);
    assert.equal(response.status, 200);
    assert.equal(response.headers.ETag, '"7"');
    assert.deepEqual(json(response), { seq: 7, epoch: 2, version: 7 });
  });

  it('renders a delete and a transaction', () => {
    assert.deepEqual(json(renderClientResponse({ type: 'write', result: { status: 'ok', seq: seq(8), epoch: epoch(2), version: 8 } }, remove)), { seq: 8, epoch: 2 });
    const response = renderClientResponse({ type: 'write', result: { status: 'txn', seq: seq(9), epoch: epoch(2), succeeded: false } }, transaction);
    assert.deepEqual(json(response), { seq: 9, epoch: 2, succeeded: false });
  });

  it('renders a failed condition recorded as a write result as 412', () => {
    const response = renderClientResponse({ type: 'write', result: { status: 'preconditionFailed', seq: seq(9), epoch: epoch(2), version: 4 } }, put);
    assert.equal(response.status, 412);
    assert.deepEqual((json(response) as { error: { code: string } }).error.code, 'PRECONDITION_FAILED');
  });

  it('renders a read as the value bytes', () => {
    const value = new Uint8Array([1, 2, 255]);
    const response = renderClientResponse({ type: 'read', item: { key: 'a/b', value, version: 5 }, appliedSeq: seq(11) }, read);
    assert.equal(response.status, 200);
    assert.deepEqual(response.body, value);
    assert.equal(response.headers.ETag, '"5"');
    assert.equal(response.headers['Mainstay-Applied-Seq'], '11');
    assert.equal(response.headers['Content-Type'], 'application/octet-stream');
  });

  it('renders an absent key as 404 NOT_FOUND with the applied seq', () => {
    const response = renderClientResponse({ type: 'read', item: undefined, appliedSeq: seq(11) }, read);
    assert.equal(response.status, 404);
    assert.equal(response.headers['Mainstay-Applied-Seq'], '11');
    assert.deepEqual(json(response), { error: { code: 'NOT_FOUND', message: 'Key "a/b" is absent', definite: true } });
  });

  it('answers TOO_LARGE instead of a list body over the answer limit, and renders one at the limit', () => {
    // Control characters take six characters each in JSON: the limit counts the body as rendered.
    const items = Array.from({ length: 10 }, (_, i) => ({ key: `k${i}`, value: new Uint8Array(100), version: i + 1 }));
    const whole = renderClientResponse({ type: 'list', appliedSeq: seq(20), items }, list);
    assert.equal(whole.status, 200);
    const bodyChars = (whole.body as string).length;
    assert.ok(bodyChars > 6_000, `${bodyChars} characters of JSON for 1,000 bytes of values`);
    assert.equal(renderClientResponse({ type: 'list', appliedSeq: seq(20), items }, list, { listAnswerCharsMax: bodyChars }).status, 200);
    const refused = renderClientResponse({ type: 'list', appliedSeq: seq(20), items }, list, { listAnswerCharsMax: bodyChars - 1 });
    assert.equal(refused.status, 413);
    const error = (json(refused) as { error: { code: string; message: string; definite: boolean } }).error;
    assert.equal(error.code, 'TOO_LARGE');
    assert.equal(error.definite, true);
    assert.match(error.message, /smaller limit/);
  });

  it('renders a list with text values as strings and other bytes as base64', () => {
    const binary = new Uint8Array([0xff, 0x00, 0x80]);
    const response = renderClientResponse({ type: 'list', appliedSeq: seq(20), items: [
      { key: 'a', value: text.encode('héllo'), version: 3 },
      { key: 'b', value: binary, version: 4 },
      { key: 'c', value: new Uint8Array(0), version: 5 },
    ] }, list);
    assert.equal(response.status, 200);
    const body = json(response) as { items: { key: string; value?: string; valueBase64?: string; version: number }[]; appliedSeq: number };
    assert.deepEqual(body, { appliedSeq: 20, items: [
      { key: 'a', value: 'héllo', version: 3 },
      { key: 'b', valueBase64: '/wCA', version: 4 },
      { key: 'c', value: '', version: 5 },
    ] });
    assert.deepEqual(decodeBase64(body.items[1]?.valueBase64 as string), binary);
  });

  it('renders NOT_MAIN as 421 with the main URL', () => {
    const notMain = errorResponse('NOT_MAIN', 'This server is not the main', true, serverId('s2'));
    const response = renderClientResponse(notMain, put, { mainAddress: 'http://127.0.0.1:7002', target: '/v1/kv/a' });
    assert.equal(response.status, 421);
    assert.equal(response.headers.Location, 'http://127.0.0.1:7002/v1/kv/a');
    const body = json(response) as { error: Record<string, unknown> };
    assert.equal(body.error.code, 'NOT_MAIN');
    assert.equal(body.error.main, 'http://127.0.0.1:7002');
    assert.equal(body.error.mainId, 's2');
    assert.equal(body.error.definite, true);
    assert.match(body.error.message as string, /send the request to the main at http:\/\/127\.0\.0\.1:7002/);
    const unknown = renderClientResponse(errorResponse('NOT_MAIN', 'This server is not the main', true), read);
    assert.equal(unknown.status, 421);
    assert.equal(unknown.headers.Location, undefined);
    assert.equal((json(unknown) as { error: Record<string, unknown> }).error.main, undefined);
  });

  it('maps every error code to its status', () => {
    const table: [ErrorCode, number][] = [
      ['PRECONDITION_FAILED', 412], ['TIMEOUT', 504], ['UNAVAILABLE', 503], ['OVERLOADED', 429], ['BAD_REQUEST', 400],
      ['TOO_LARGE', 413], ['NOT_FOUND', 404], ['NOT_MAIN', 421], ['METHOD_NOT_ALLOWED', 405],
    ];
    for (const [code, status] of table) {
      assert.equal(statusForErrorCode(code), status);
      const response = renderClientResponse(errorResponse(code, 'Something', true), read);
      assert.equal(response.status, status, code);
      assert.equal((json(response) as { error: { code: string } }).error.code, code);
    }
  });

  it('marks a timed-out write indefinite and asks overloaded clients to wait', () => {
    const timeout = errorResponse('TIMEOUT', 'The write was not committed', true);
    assert.equal((json(renderClientResponse(timeout, put)) as { error: { definite: boolean } }).error.definite, false);
    assert.equal((json(renderClientResponse(timeout, read)) as { error: { definite: boolean } }).error.definite, true);
    assert.equal(renderClientResponse(errorResponse('OVERLOADED', 'Busy', true), put).headers['Retry-After'], '1');
    assert.equal(renderClientResponse(errorResponse('UNAVAILABLE', 'Down', true), put).headers['Retry-After'], '1');
  });
});

describe('status, health and metrics', () => {
  const map: ClusterMap = {
    version: 4, epoch: epoch(3), main: serverId('s2'), ackQuorum: 1,
    members: [
      { id: serverId('s1'), role: 'standby', priority: 0, address: 'http://127.0.0.1:7001', peerAddress: '127.0.0.1:8001' },
      { id: serverId('s2'), role: 'standby', priority: 0, address: 'http://127.0.0.1:7002', peerAddress: '127.0.0.1:8002' },
      { id: serverId('s3'), role: 'learner', priority: 0, address: 'http://127.0.0.1:7003', peerAddress: '127.0.0.1:8003' },
    ],
  };

  it('shows the map with members and the main address', () => {
    assert.deepEqual(clusterMapJson(map), {
      version: 4, epoch: 3, main: 's2', mainAddress: 'http://127.0.0.1:7002', ackQuorum: 1,
      members: [
        { id: 's1', address: 'http://127.0.0.1:7001', role: 'standby', priority: 0 },
        { id: 's2', address: 'http://127.0.0.1:7002', role: 'main', priority: 0 },
        { id: 's3', address: 'http://127.0.0.1:7003', role: 'learner', priority: 0 },
      ],
    });
    assert.equal(clusterMapJson({ ...map, main: null }).mainAddress, null);
    assert.equal(memberAddress(map, serverId('s1')), 'http://127.0.0.1:7001');
    assert.equal(memberAddress(map, null), undefined);
    assert.equal(memberAddress(undefined, serverId('s1')), undefined);
  });

  it('renders a server status with its map', () => {
    const status: StatusMessage = {
      type: 'status', bootId: 1, promisedEpoch: epoch(3), role: 'standby', lastEpoch: epoch(3), lastSeq: seq(10), commitSeq: seq(9),
      appliedSeq: seq(9), incomplete: false, contacts: [serverId('s2')], standbysInContact: 0, mapVersion: 4, confirmedMapVersion: 0,
    };
    const body = json(renderStatus({ id: serverId('s1'), address: 'http://127.0.0.1:7001' }, status, map)) as Record<string, unknown>;
    assert.equal(body.id, 's1');
    assert.equal(body.role, 'standby');
    assert.equal(body.type, undefined);
    assert.equal((body.map as { mainAddress: string }).mainAddress, 'http://127.0.0.1:7002');
    assert.equal((json(renderStatus({ id: serverId('s1'), address: '' }, status, undefined)) as { map: unknown }).map, null);
  });

  it('renders health and metrics', () => {
    assert.equal(renderHealth({ ok: true }).status, 200);
    const down = renderHealth({ ok: false, reason: 'Log is incomplete' });
    assert.equal(down.status, 503);
    assert.deepEqual(json(down), { ok: false, reason: 'Log is incomplete' });
    const metrics = renderMetrics('mainstay_up 1\n');
    assert.match(metrics.headers['Content-Type'] as string, /^text\/plain; version=0\.0\.4/);
  });
});

describe('base64', () => {
  it('agrees with Buffer both ways', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const encoded = encodeBase64(bytes);
      assert.equal(encoded, Buffer.from(bytes).toString('base64'));
      assert.deepEqual(decodeBase64(encoded), bytes);
    }));
  });

  it('rejects what is not padded standard base64', () => {
    for (const bad of ['a', 'ab', 'abc', 'ab=c', '=abc', 'ab-_', 'ab c', 'a===']) assert.equal(decodeBase64(bad), undefined, bad);
  });
});
