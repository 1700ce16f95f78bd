// The hello frame that opens every connection: who is sending and to whom it means to talk, so a
// receiver attributes every later frame to a sender and refuses connections meant for another
// process (a stale address book). Pure: no Node built-ins.
//
// Layout: magic "MSTY", u8 version, u8 sender id length, sender id (UTF-8), u8 receiver id
// length, receiver id (UTF-8).

import { assert } from '../lib/assert.ts';

export const helloVersion = 1;
const magic = [0x4d, 0x53, 0x54, 0x59] as const;

/** Longest process id in UTF-8 bytes; its length travels in one byte. */
export const idBytesMax = 255;

/** Largest hello payload; receivers hold unidentified connections to this frame size. */
export const helloBytesMax = magic.length + 1 + 2 * (1 + idBytesMax);

export interface Hello {
  from: string;
  to: string;
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

/** Checks an id before it goes into a hello; returns why it cannot, or null. */
export function idProblem(id: string): string | null {
  if (id.length === 0) return 'Id is empty';
  if (textEncoder.encode(id).length > idBytesMax) return `Id is longer than ${idBytesMax} bytes`;
  return null;
}

export function encodeHello(hello: Hello): Uint8Array {
  const from = textEncoder.encode(hello.from);
  const to = textEncoder.encode(hello.to);
  assert(from.length > 0 && from.length <= idBytesMax, `Bad sender id "${hello.from}"`);
  assert(to.length > 0 && to.length <= idBytesMax, `Bad receiver id "${hello.to}"`);
  const bytes = new Uint8Array(magic.length + 1 + 1 + from.length + 1 + to.length);
  bytes.set(magic, 0);
  let offset = magic.length;
  bytes[offset++] = helloVersion;
  bytes[offset++] = from.length;
  bytes.set(from, offset);
  offset += from.length;
  bytes[offset++] = to.length;
  bytes.set(to, offset);
  return bytes;
}

export type HelloResult = { ok: true; hello: Hello } | { ok: false; reason: string };

/** Parses a hello payload; never throws, since the bytes come from the network. */
export function decodeHello(bytes: Uint8Array): HelloResult {
  if (bytes.length < magic.length + 1) return { ok: false, reason: 'Hello is too short' };
  for (let i = 0; i < magic.length; i++) {
    if (bytes[i] !== magic[i]) return { ok: false, reason: 'Hello has a bad magic number' };
  }
  const version = bytes[magic.length] as number;
  if (version !== helloVersion) return { ok: false, reason: `Hello has unsupported version ${version}` };
  let offset = magic.length + 1;
  const ids: string[] = [];
  for (const _ of ['from', 'to']) {
    const length = bytes[offset];
    if (length === undefined) return { ok: false, reason: 'Hello is truncated' };
    offset += 1;
    if (length === 0) return { ok: false, reason: 'Hello has an empty id' };
    if (offset + length > bytes.length) return { ok: false, reason: 'Hello is truncated' };
    try {
      ids.push(textDecoder.decode(bytes.subarray(offset, offset + length)));
    } catch {
      return { ok: false, reason: 'Hello has an id that is not UTF-8' };
    }
    offset += length;
  }
  if (offset !== bytes.length) return { ok: false, reason: `Hello has ${bytes.length - offset} unexpected bytes at the end` };
  const [from, to] = ids as [string, string];
  return { ok: true, hello: { from, to } };
}
