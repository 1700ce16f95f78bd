// Small byte arrays carved out of shared slabs. A `new Uint8Array(n)` or `.slice()` costs an
// ArrayBuffer of its own (a malloc, a backing-store registration, a sweep when it dies) — about
// 0.7 µs each, several times per write on every server. Values, keys and encoded messages are
// mostly tens to hundreds of bytes, so they are cut from a 64 KiB slab instead, as Node's Buffer
// pool does (pure here: no Node built-ins).
//
// A slab lives as long as any array cut from it, so a small value kept for long keeps up to one
// slab alive; large arrays (over `slabbedBytesMax`) get their own buffer. Every array handed out
// is a view: its `.buffer` is the slab, so code that reads `.buffer` must honour `byteOffset`.

const slabBytes = 64 * 1024;
/** Larger arrays get their own ArrayBuffer. */
export const slabbedBytesMax = 4 * 1024;

let slab = new Uint8Array(slabBytes);
let slabUsed = 0;

/** A zero-filled array of `length` bytes (a view into a slab when small). */
export function allocBytes(length: number): Uint8Array {
  if (length > slabbedBytesMax) return new Uint8Array(length);
  if (slabUsed + length > slabBytes) {
    slab = new Uint8Array(slabBytes);
    slabUsed = 0;
  }
  const bytes = slab.subarray(slabUsed, slabUsed + length);
  // Keep each array 8-byte aligned: cheap, and typed views over it stay possible.
  slabUsed += (length + 7) & ~7;
  return bytes;
}

/** A copy of `source` (a view into a slab when small). */
export function copyBytes(source: Uint8Array): Uint8Array {
  const copy = allocBytes(source.length);
  copy.set(source);
  return copy;
}
