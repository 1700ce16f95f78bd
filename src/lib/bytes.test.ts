// Tests of the slab allocator: arrays never overlap (writing one never changes another), are
// zero-filled, keep their contents after the slab moves on, and large ones get their own buffer.

import { describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { allocBytes, copyBytes, slabbedBytesMax } from './bytes.ts';

describe('allocBytes / copyBytes', () => {
  it('hands out disjoint, zero-filled arrays that keep their contents across slabs', () => {
    const arrays: Uint8Array[] = [];
    // Enough to fill several 64 KiB slabs, with sizes that are not multiples of 8.
    for (let i = 0; i < 2000; i++) {
      const bytes = allocBytes(1 + ((i * 37) % 200));
      assert.ok(bytes.every((byte) => byte === 0), `array ${i} is zero-filled`);
      bytes.fill(i % 251);
      arrays.push(bytes);
    }
    arrays.forEach((bytes, i) => assert.ok(bytes.every((byte) => byte === i % 251), `array ${i} kept its bytes`));
  });

  it('gives arrays over slabbedBytesMax a buffer of their own', () => {
    const large = allocBytes(slabbedBytesMax + 1);
    assert.equal(large.byteOffset, 0);
    assert.equal(large.buffer.byteLength, slabbedBytesMax + 1);
    assert.equal(allocBytes(0).length, 0);
  });

  it('copies', () => {
    const source = new Uint8Array([1, 2, 3, 4, 5]);
    const copy = copyBytes(source.subarray(1, 4));
    assert.deepEqual([...copy], [2, 3, 4]);
    source[2] = 9;
    assert.deepEqual([...copy], [2, 3, 4]);
  });
});
