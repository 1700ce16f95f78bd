import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { CodecError } from './codec.ts';
import { clientWrite, key, u32, value, version } from './arbitraries.test-support.ts';
import type { ClientRequest, WriteResult } from './types.ts';
import { epoch, seq, serverId } from './types.ts';
import { decodeWireRequest, decodeWireResponse, encodeWireRequest, encodeWireResponse, wireTag, type WireResponse } from './wire.ts';

const tag = u32;
const consistency = fc.constantFrom('linearizable' as const, 'local' as const);
const request: fc.Arbitrary<ClientRequest> = fc.oneof(
  fc.record({ type: fc.constant('write' as const), write: clientWrite, session: fc.record({ clientId: fc.string({ minLength: 1 }), requestId: version }) }, { requiredKeys: ['type', 'write'] }),
  fc.record({ type: fc.constant('read' as const), key, consistency, minSeq: version }, { requiredKeys: ['type', 'key', 'consistency'] }),
  fc.record({ type: fc.constant('list' as const), prefix: key, limit: fc.nat({ max: 0xffffffff }), consistency, minSeq: version }, { requiredKeys: ['type', 'prefix', 'limit', 'consistency'] }),
);
const at = { seq: version.map(seq), epoch: u32.map(epoch) };
const result: fc.Arbitrary<WriteResult> = fc.oneof(
  fc.record({ status: fc.constant('ok' as const), ...at, version }),
  fc.record({ status: fc.constant('preconditionFailed' as const), ...at, version }),
  fc.record({ status: fc.constant('txn' as const), ...at, succeeded: fc.boolean() }),
);
const item = fc.record({ key, value, version });
const response: fc.Arbitrary<WireResponse> = fc.oneof(
  fc.record({ type: fc.constant('write' as const), result }),
  fc.record({ type: fc.constant('read' as const), item: fc.option(item, { nil: undefined }), appliedSeq: version.map(seq) }),
  fc.record({ type: fc.constant('list' as const), items: fc.array(item, { maxLength: 5 }), appliedSeq: version.map(seq) }),
  fc.record({
    type: fc.constant('error' as const),
    error: fc.record({
      code: fc.constantFrom('NOT_MAIN' as const, 'TIMEOUT' as const, 'PRECONDITION_FAILED' as const, 'NOT_FOUND' as const, 'UNAVAILABLE' as const,
        'BAD_REQUEST' as const, 'METHOD_NOT_ALLOWED' as const, 'TOO_LARGE' as const, 'OVERLOADED' as const),
      message: fc.string(),
      definite: fc.boolean(),
      main: fc.stringMatching(/^s[0-9]{1,3}$/).map(serverId),
      mainAddress: fc.webUrl(),
    }, { requiredKeys: ['code', 'message', 'definite'] }),
  }),
);

/** fast-check's records have no prototype; decoded values are plain objects. */
const plain = <T>(value: T): T => structuredClone(value);

describe('wire protocol encoding', () => {
  it('decodes every request as it was encoded, with its tag', () => {
    fc.assert(fc.property(tag, request, (t, r) => {
      const bytes = encodeWireRequest(t, r);
      assert.equal(wireTag(bytes), t);
      assert.deepEqual(decodeWireRequest(bytes), { tag: t, request: plain(r) });
    }));
  });

  it('decodes every answer as it was encoded, with its tag', () => {
    fc.assert(fc.property(tag, response, (t, r) => {
      assert.deepEqual(decodeWireResponse(encodeWireResponse(t, r)), { tag: t, response: plain(r) });
    }));
  });

  it('refuses every truncation of a request and bytes after one, as a CodecError', () => {
    fc.assert(fc.property(tag, request, fc.nat(), (t, r, cut) => {
      const bytes = encodeWireRequest(t, r);
      const short = bytes.subarray(0, cut % bytes.length);
      assert.throws(() => decodeWireRequest(short), CodecError);
      assert.throws(() => decodeWireRequest(Uint8Array.of(...bytes, 0)), CodecError);
    }));
  });

  it('refuses unknown request kinds and invalid UTF-8 in keys', () => {
    const good = encodeWireRequest(7, { type: 'read', key: 'k', consistency: 'linearizable' });
    const unknownKind = Uint8Array.from(good);
    unknownKind[4] = 9;
    assert.throws(() => decodeWireRequest(unknownKind), /Unknown request kind 9/);
    const badUtf8 = Uint8Array.from(good);
    badUtf8[9] = 0xff; // the key's one byte, after tag (4), kind (1) and the key's length (4)
    assert.throws(() => decodeWireRequest(badUtf8), CodecError);
    assert.equal(wireTag(Uint8Array.of(1, 2, 3)), undefined);
  });
});
