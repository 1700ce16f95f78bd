// Length-prefixed frames on a byte stream: a u32 little-endian payload length, then the payload.
// This module owns the wire format below the message codec — the encoder, and an incremental
// decoder that turns arbitrary chunks of a stream back into whole payloads. Pure: no Node
// built-ins and no Buffer, so the same code can run under the simulator.

import { assert } from '../lib/assert.ts';
import { allocBytes } from '../lib/bytes.ts';

/** Bytes of the length prefix in front of every payload. */
export const frameHeaderBytes = 4;

/**
 * Largest payload a frame may declare by default (64 MiB). A larger declared length is a protocol
 * error: the decoder reports it before buffering or allocating anything for that frame.
 */
export const frameBytesMax = 64 * 1024 * 1024;

/** The length prefix is a u32, so no limit can exceed what it can express. */
const u32Max = 0xffffffff;

assert(frameBytesMax <= u32Max, 'frameBytesMax must fit the u32 length prefix');

export class FrameError extends Error {
  override name = 'FrameError';

  constructor(
    /** Stable code for logs and metrics. */
    readonly code: 'FRAME_TOO_LARGE',
    message: string,
  ) {
    super(message);
  }
}

/** Writes the length prefix of a `length`-byte payload at `offset` of `target`. */
export function writeFrameHeader(target: Uint8Array, offset: number, length: number): void {
  assert(Number.isInteger(length) && length >= 0 && length <= u32Max, `Frame length out of range: ${length}`);
  assert(offset >= 0 && offset + frameHeaderBytes <= target.length, 'Frame header does not fit the target');
  new DataView(target.buffer, target.byteOffset, target.byteLength).setUint32(offset, length, true);
}

/** One frame: the length prefix followed by a copy of `payload`. */
export function encodeFrame(payload: Uint8Array, limit = frameBytesMax): Uint8Array {
  return encodeFrames([payload], limit);
}

/** Many frames back to back in one allocation (one socket write carries them all). */
export function encodeFrames(payloads: readonly Uint8Array[], limit = frameBytesMax): Uint8Array {
  let total = 0;
  for (const payload of payloads) {
    assert(payload.length <= limit, `Frame payload of ${payload.length} bytes exceeds the limit of ${limit}`);
    total += frameHeaderBytes + payload.length;
  }
  const frames = allocBytes(total);
  let offset = 0;
  for (const payload of payloads) {
    writeFrameHeader(frames, offset, payload.length);
    frames.set(payload, offset + frameHeaderBytes);
    offset += frameHeaderBytes + payload.length;
  }
  return frames;
}

export interface FrameDecoderOptions {
  /** Largest payload accepted; defaults to `frameBytesMax`. */
  frameBytesMax?: number;
  /**
   * Largest payload accepted for the first frame only (a handshake), so that a peer that has not
   * yet identified itself cannot make the receiver buffer a large frame. Defaults to the
   * general limit.
   */
  firstFrameBytesMax?: number;
}

export interface DecodeResult {
  /** Complete payloads in stream order, including those before an error in the same chunk. */
  payloads: Uint8Array[];
  /** Set once the stream broke the framing rules; the decoder accepts nothing after it. */
  error: FrameError | null;
}

/**
 * Incremental frame decoder. Chunks may split frames anywhere and may hold many frames; the
 * decoder keeps references to the chunks it has not consumed and copies only when a payload
 * spans chunks. A payload that lies within one chunk is a view of that chunk: callers must not
 * reuse chunks they pushed, and should copy a payload they keep for long.
 */
export class FrameDecoder {
  private readonly limit: number;
  private readonly firstLimit: number;
  /** Chunks received and not yet consumed; the first one is consumed up to `headOffset`. */
  private chunks: Uint8Array[] = [];
  private chunkIndex = 0;
  private headOffset = 0;
  /** Unconsumed bytes across `chunks`. Invariant: equals their lengths minus consumed bytes. */
  private buffered = 0;
  /** Payload length of the frame being received, once its header is complete; null before that. */
  private expected: number | null = null;
  private framesDecoded = 0;
  private failure: FrameError | null = null;

  constructor(options: FrameDecoderOptions = {}) {
    this.limit = options.frameBytesMax ?? frameBytesMax;
    this.firstLimit = options.firstFrameBytesMax ?? this.limit;
    assert(Number.isInteger(this.limit) && this.limit >= 0 && this.limit <= u32Max, `Bad frameBytesMax ${this.limit}`);
    assert(Number.isInteger(this.firstLimit) && this.firstLimit >= 0 && this.firstLimit <= u32Max, `Bad firstFrameBytesMax ${this.firstLimit}`);
  }

  /** Bytes received and not yet returned as a payload. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  get failed(): boolean {
    return this.failure !== null;
  }

  push(chunk: Uint8Array): DecodeResult {
    const payloads: Uint8Array[] = [];
    if (this.failure !== null) return { payloads, error: this.failure };
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    // Every turn consumes a header or a whole payload, so the loop ends with the buffered bytes.
    while (true) {
      if (this.expected === null) {
        if (this.buffered < frameHeaderBytes) break;
        const header = this.take(frameHeaderBytes);
        const length = new DataView(header.buffer, header.byteOffset, frameHeaderBytes).getUint32(0, true);
        const limit = this.framesDecoded === 0 ? this.firstLimit : this.limit;
        if (length > limit) {
          this.failure = new FrameError('FRAME_TOO_LARGE', `Frame declares ${length} bytes, more than the limit of ${limit}`);
          this.release();
          return { payloads, error: this.failure };
        }
        this.expected = length;
      }
      if (this.buffered < this.expected) break;
      payloads.push(this.take(this.expected));
      this.expected = null;
      this.framesDecoded += 1;
    }
    this.compact();
    return { payloads, error: null };
  }

  /** Removes `count` buffered bytes from the front: a view when they lie in one chunk, else a copy. */
  private take(count: number): Uint8Array {
    assert(count <= this.buffered, 'FrameDecoder.take beyond the buffered bytes');
    this.buffered -= count;
    const head = this.chunks[this.chunkIndex];
    if (count === 0) return new Uint8Array(0);
    assert(head !== undefined, 'FrameDecoder has buffered bytes but no chunk');
    if (this.headOffset + count <= head.length) {
      const view = head.subarray(this.headOffset, this.headOffset + count);
      this.advance(count, head.length);
      return view;
    }
    const copy = allocBytes(count);
    let copied = 0;
    while (copied < count) {
      const chunk = this.chunks[this.chunkIndex];
      assert(chunk !== undefined, 'FrameDecoder ran out of chunks while copying');
      const part = Math.min(count - copied, chunk.length - this.headOffset);
      copy.set(chunk.subarray(this.headOffset, this.headOffset + part), copied);
      copied += part;
      this.advance(part, chunk.length);
    }
    return copy;
  }

  private advance(count: number, headLength: number): void {
    this.headOffset += count;
    if (this.headOffset === headLength) {
      this.chunks[this.chunkIndex] = EMPTY;
      this.chunkIndex += 1;
      this.headOffset = 0;
    }
  }

  /** Drops consumed chunks so the list only holds what is still buffered. */
  private compact(): void {
    if (this.chunkIndex === 0) return;
    this.chunks = this.chunks.slice(this.chunkIndex);
    this.chunkIndex = 0;
  }

  private release(): void {
    this.chunks = [];
    this.chunkIndex = 0;
    this.headOffset = 0;
    this.buffered = 0;
    this.expected = null;
  }
}

const EMPTY = new Uint8Array(0);
