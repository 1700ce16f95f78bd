import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { u32, version, write } from './arbitraries.test-support.ts';
import type { AnyMessage } from './codec.ts';
import { CodecError, decodeEntry, decodeMessage, encodeEntry, encodeMessage, Reader, Writer } from './codec.ts';
import type { LogEntry } from './types.ts';
import { epoch, seq, serverId } from './types.ts';

const entry: fc.Arbitrary<LogEntry> = fc.record({
  epoch: fc.nat({ max: 0xffffffff }).map(epoch),
  seq: version.map(seq),
  write,
  session: fc.record({ clientId: fc.string(), requestId: version }),
}, { requiredKeys: ['epoch', 'seq', 'write'] });
const id = fc.stringMatching(/^s[0-9]{1,3}$/).map(serverId);

const message: fc.Arbitrary<AnyMessage> = fc.oneof(
  fc.record({ type: fc.constant('append' as const), epoch: u32.map(epoch), generation: version, prevSeq: version.map(seq), prevEpoch: u32.map(epoch), entries: fc.array(entry, { maxLength: 4 }), commitSeq: version.map(seq), ackQuorum: u32 }),
  fc.record({ type: fc.constant('heartbeat' as const), epoch: u32.map(epoch), commitSeq: version.map(seq), epochStartSeq: version.map(seq), readRound: version, forBootId: version, lastSeq: version.map(seq), ackQuorum: u32 }),
  fc.record({ type: fc.constant('epochEnd' as const), epoch: u32.map(epoch), generation: version, forEpoch: u32.map(epoch), endSeq: version.map(seq), answersLastEpoch: u32.map(epoch), answersLastSeq: version.map(seq) }),
  fc.record({ type: fc.constant('appendReply' as const), epoch: u32.map(epoch), bootId: version, generation: version, ok: fc.boolean(), reason: fc.constantFrom('mismatch' as const, 'staleEpoch' as const), ackSeq: version.map(seq), lastEpoch: u32.map(epoch), lastSeq: version.map(seq), readRound: version, appliedSeq: version.map(seq) }, { requiredKeys: ['type', 'epoch', 'bootId', 'generation', 'ok', 'ackSeq', 'lastEpoch', 'lastSeq', 'readRound', 'appliedSeq'] }),
  fc.constant({ type: 'ping' as const }),
  fc.record({ type: fc.constant('status' as const), bootId: version, promisedEpoch: u32.map(epoch), role: fc.constantFrom('main' as const, 'standby' as const), lastEpoch: u32.map(epoch), lastSeq: version.map(seq), commitSeq: version.map(seq), appliedSeq: version.map(seq), incomplete: fc.boolean(), contacts: fc.array(id), standbysInContact: u32, mapVersion: version, confirmedMapVersion: version }),
  fc.record({ type: fc.constant('fenceReply' as const), epoch: u32.map(epoch), lastEpoch: u32.map(epoch), lastSeq: version.map(seq), incomplete: fc.boolean() }),
  fc.record({ type: fc.constant('map' as const), map: fc.record({ version, epoch: u32.map(epoch), main: fc.option(id, { nil: null }), ackQuorum: u32, members: fc.array(fc.record({ id, role: fc.constantFrom('standby' as const, 'learner' as const), priority: u32, address: fc.string(), peerAddress: fc.string() })) }) }),
  fc.record({ type: fc.constant('fence' as const), epoch: u32.map(epoch) }),
  fc.record({ type: fc.constant('switchover' as const), epoch: u32.map(epoch), target: id, pauseMs: u32 }),
  fc.record({ type: fc.constant('switchoverReady' as const), epoch: u32.map(epoch), target: id, lastSeq: version.map(seq) }),
);

describe('codec', () => {
  it('round-trips every log entry', () => {
    fc.assert(fc.property(entry, (original) => {
      assert.deepEqual(decodeEntry(encodeEntry(original)), structuredClone(original));
    }), { numRuns: 2000 });
  });

  it('round-trips every message', () => {
    fc.assert(fc.property(message, (original) => {
      assert.deepEqual(decodeMessage(encodeMessage(original)), structuredClone(original));
    }), { numRuns: 3000 });
  });

  it('rejects truncated and padded input with a CodecError, never garbage', () => {
    fc.assert(fc.property(message, fc.nat(), (original, cut) => {
      const bytes = encodeMessage(original);
      if (bytes.length > 1) {
        const truncated = bytes.subarray(0, cut % bytes.length);
        assert.throws(() => decodeMessage(truncated), CodecError);
      }
      const padded = new Uint8Array(bytes.length + 1);
      padded.set(bytes);
      assert.throws(() => decodeMessage(padded), CodecError);
    }), { numRuns: 1000 });
  });

  it('grows a writer from any starting capacity, 0 included', () => {
    for (const capacity of [0, 1, 3, 64]) {
      const writer = new Writer(capacity);
      writer.u32(7).string('a string longer than the capacity').bytes(new Uint8Array(100));
      const reader = new Reader(writer.finish());
      assert.equal(reader.u32(), 7);
      assert.equal(reader.string(), 'a string longer than the capacity');
      assert.equal(reader.bytes().length, 100);
      reader.end();
    }
  });

  it('rejects unknown tags', () => {
    assert.throws(() => decodeMessage(new Uint8Array([99])), /Unknown message tag 99/);
  });

  it('writes strings as TextEncoder does and reads back what TextDecoder reads, on the ASCII path and off it', () => {
    fc.assert(fc.property(fc.oneof(fc.string({ unit: 'binary', maxLength: 100 }), fc.string({ maxLength: 100 })), (text) => {
      const encoded = new TextEncoder().encode(text);
      const written = new Writer(1).string(text).finish();
      assert.equal(new DataView(written.buffer, written.byteOffset).getUint32(0, true), encoded.length);
      assert.deepEqual(written.subarray(4), encoded);
      const reader = new Reader(written);
      assert.equal(reader.string(), new TextDecoder().decode(encoded));
      reader.end();
    }), { numRuns: 1000 });
  });
});
