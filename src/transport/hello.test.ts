import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { decodeHello, encodeHello, helloBytesMax, idBytesMax, idProblem } from './hello.ts';

const id = fc.string({ minLength: 1, maxLength: 60, unit: 'grapheme' }).filter((text) => idProblem(text) === null);

describe('hello', () => {
  it('round-trips sender and receiver ids', () => {
    fc.assert(fc.property(id, id, (from, to) => {
      const bytes = encodeHello({ from, to });
      assert.ok(bytes.length <= helloBytesMax);
      assert.deepEqual(decodeHello(bytes), { ok: true, hello: { from, to } });
    }));
  });

  it('fits the longest ids in helloBytesMax', () => {
    const longest = 'x'.repeat(idBytesMax);
    assert.equal(encodeHello({ from: longest, to: longest }).length, helloBytesMax);
    assert.notEqual(idProblem('x'.repeat(idBytesMax + 1)), null);
    assert.notEqual(idProblem(''), null);
  });

  it('never throws on arbitrary bytes or on mutated hellos, and accepts only canonical encodings', () => {
    const check = (bytes: Uint8Array): void => {
      const result = decodeHello(bytes);
      if (result.ok) assert.deepEqual(encodeHello(result.hello), bytes);
    };
    fc.assert(fc.property(fc.uint8Array({ maxLength: 80 }), check));
    fc.assert(fc.property(id, id, fc.nat(), fc.nat({ max: 255 }), fc.nat(), (from, to, position, value, cut) => {
      const bytes = encodeHello({ from, to });
      bytes[position % bytes.length] = value;
      check(bytes);
      check(bytes.subarray(0, cut % (bytes.length + 1)));
    }), { numRuns: 500 });
  });

  it('rejects truncated, extended and corrupted hellos', () => {
    const good = encodeHello({ from: 's1', to: 's2' });
    for (let length = 0; length < good.length; length++) {
      assert.equal(decodeHello(good.subarray(0, length)).ok, false, `truncated to ${length}`);
    }
    assert.equal(decodeHello(new Uint8Array([...good, 0])).ok, false);
    const badMagic = good.slice();
    badMagic[0] = 0;
    assert.deepEqual(decodeHello(badMagic), { ok: false, reason: 'Hello has a bad magic number' });
    const badVersion = good.slice();
    badVersion[4] = 99;
    assert.equal(decodeHello(badVersion).ok, false);
    const badUtf8 = good.slice();
    badUtf8[6] = 0xff;
    assert.deepEqual(decodeHello(badUtf8), { ok: false, reason: 'Hello has an id that is not UTF-8' });
  });
});
