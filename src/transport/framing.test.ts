import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { encodeFrame, encodeFrames, FrameDecoder, frameBytesMax, frameHeaderBytes, writeFrameHeader } from './framing.ts';

/** Cuts `bytes` at the given positions (any order, duplicates and out-of-range values allowed). */
function split(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const positions = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let start = 0;
  for (const position of [...positions, bytes.length]) {
    chunks.push(bytes.subarray(start, position));
    start = position;
  }
  return chunks;
}

function decodeAll(decoder: FrameDecoder, chunks: Uint8Array[]): Uint8Array[] {
  const payloads: Uint8Array[] = [];
  for (const chunk of chunks) {
    const result = decoder.push(chunk);
    assert.equal(result.error, null);
    payloads.push(...result.payloads.map((payload) => payload.slice()));
  }
  return payloads;
}

function header(length: number): Uint8Array {
  const bytes = new Uint8Array(frameHeaderBytes);
  writeFrameHeader(bytes, 0, length);
  return bytes;
}

describe('framing', () => {
  it('encodes a u32 little-endian length, then the payload', () => {
    assert.deepEqual([...encodeFrame(new Uint8Array([7, 8, 9]))], [3, 0, 0, 0, 7, 8, 9]);
    assert.deepEqual([...encodeFrame(new Uint8Array(0))], [0, 0, 0, 0]);
    assert.deepEqual([...header(0x01020304)], [4, 3, 2, 1]);
  });

  it('returns the same payloads whatever the chunk boundaries', () => {
    fc.assert(fc.property(
      fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 30 }),
      fc.array(fc.nat(), { maxLength: 40 }),
      (payloads, cuts) => {
        const stream = encodeFrames(payloads);
        const decoder = new FrameDecoder();
        const decoded = decodeAll(decoder, split(stream, cuts));
        assert.deepEqual(decoded, payloads);
        assert.equal(decoder.bufferedBytes, 0);
      },
    ), { numRuns: 300 });
  });

  it('decodes a stream fed one byte at a time, and many frames in one chunk', () => {
    const payloads = [new Uint8Array([1]), new Uint8Array(0), new Uint8Array(1000).fill(5), new Uint8Array([2, 3])];
    const stream = encodeFrames(payloads);
    const bytewise = [...stream].map((byte) => new Uint8Array([byte]));
    assert.deepEqual(decodeAll(new FrameDecoder(), bytewise), payloads);
    assert.deepEqual(decodeAll(new FrameDecoder(), [stream]), payloads);
  });

  it('keeps a partial frame until the rest arrives', () => {
    const decoder = new FrameDecoder();
    const stream = encodeFrame(new Uint8Array([1, 2, 3, 4, 5]));
    assert.deepEqual(decoder.push(stream.subarray(0, 6)).payloads, []);
    assert.equal(decoder.bufferedBytes, 2);
    assert.deepEqual(decoder.push(stream.subarray(6)).payloads.map((payload) => [...payload]), [[1, 2, 3, 4, 5]]);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('rejects a declared length above the limit as soon as the header is complete', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 1000 }),
      fc.integer({ min: 1, max: 0xffffffff }),
      fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 5 }),
      (limit, excess, before) => {
        const declared = Math.min(0xffffffff, limit + excess);
        const decoder = new FrameDecoder({ frameBytesMax: limit });
        const valid = before.filter((payload) => payload.length <= limit);
        const stream = new Uint8Array([...encodeFrames(valid), ...header(declared)]);
        const result = decoder.push(stream);
        // Frames before the bad one are still delivered; nothing after it ever is.
        assert.deepEqual(result.payloads.map((payload) => payload.slice()), valid);
        assert.equal(result.error?.code, 'FRAME_TOO_LARGE');
        assert.equal(decoder.failed, true);
        assert.equal(decoder.bufferedBytes, 0);
        const after = decoder.push(encodeFrame(new Uint8Array([1])));
        assert.deepEqual(after.payloads, []);
        assert.notEqual(after.error, null);
      },
    ), { numRuns: 200 });
  });

  it('rejects a 4 GiB declaration under the default 64 MiB limit without waiting for its bytes', () => {
    assert.equal(frameBytesMax, 64 * 1024 * 1024);
    const decoder = new FrameDecoder();
    const result = decoder.push(header(0xffffffff));
    assert.equal(result.error?.code, 'FRAME_TOO_LARGE');
    const atLimit = new FrameDecoder().push(header(frameBytesMax));
    assert.equal(atLimit.error, null);
  });

  it('applies firstFrameBytesMax to the first frame only', () => {
    const decoder = new FrameDecoder({ frameBytesMax: 100, firstFrameBytesMax: 10 });
    const ok = decoder.push(encodeFrames([new Uint8Array(10), new Uint8Array(100)]));
    assert.equal(ok.error, null);
    assert.equal(ok.payloads.length, 2);
    const strict = new FrameDecoder({ frameBytesMax: 100, firstFrameBytesMax: 10 });
    assert.equal(strict.push(header(11)).error?.code, 'FRAME_TOO_LARGE');
  });

  it('refuses to encode a payload above the limit', () => {
    assert.throws(() => encodeFrame(new Uint8Array(11), 10), /exceeds the limit/);
  });
});
