import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { SessionRecord, SnapshotChunk } from '../core/kv.ts';
import { Random } from '../lib/random.ts';
import type { KeyValue } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import type { BackupItem, BackupSummary } from './backup-format.ts';
import { BackupDecoder, BackupEncoder, BackupFormatError, backupHeaderBytes, formatChecksum } from './backup-format.ts';
import { crc32 } from './log-format.ts';

function session(clientId: string, at: number): SessionRecord {
  return { clientId, requestId: at, result: { status: 'ok', seq: seq(at), epoch: epoch(2), version: at }, lastSeq: seq(at) };
}

/** A snapshot's chunks: sorted keys (some non-ASCII, some empty values, one large), then sessions. */
function sampleChunks(random: Random, keyCount: number, sessionCount: number, perChunk: number): SnapshotChunk[] {
  const names = new Set<string>();
  while (names.size < keyCount) names.add(`${random.pick(['a', 'b', 'ключ/', '鍵:', 'z\u{1F600}'])}${random.int(0, 100_000)}`);
  const encoder = new TextEncoder();
  const keys: KeyValue[] = [...names]
    .sort((a, b) => Buffer.compare(encoder.encode(a), encoder.encode(b)))
    .map((key, index) => ({ key, value: Uint8Array.from({ length: index === 3 ? 5000 : random.int(0, 40) }, () => random.int(0, 255)), version: random.int(1, 500) }));
  const sessions = Array.from({ length: sessionCount }, (_, i) => session(`client-${String(i).padStart(3, '0')}`, i + 1));
  const chunks: SnapshotChunk[] = [];
  for (let i = 0; i < keys.length; i += perChunk) chunks.push({ items: keys.slice(i, i + perChunk), sessions: [] });
  for (let i = 0; i < sessions.length; i += perChunk) chunks.push({ items: [], sessions: sessions.slice(i, i + perChunk) });
  return chunks;
}

function encode(chunks: SnapshotChunk[], info = { seq: seq(500), epoch: epoch(2), createdAtMs: 1_764_000_000_000 }): { bytes: Uint8Array; checksum: number } {
  const keyCount = chunks.reduce((sum, chunk) => sum + chunk.items.length, 0);
  const sessionCount = chunks.reduce((sum, chunk) => sum + chunk.sessions.length, 0);
  const encoder = new BackupEncoder({ ...info, keyCount, sessionCount });
  const parts = [encoder.header(), ...chunks.map((chunk) => encoder.chunk(chunk)), encoder.trailer()];
  assert.equal(encoder.byteLength, parts.reduce((sum, part) => sum + part.length, 0));
  // A plain Uint8Array, whose slice() copies (a Buffer's does not).
  return { bytes: new Uint8Array(Buffer.concat(parts)), checksum: encoder.checksumSoFar };
}

/** Decodes `bytes` pushed in pieces of the given sizes (cycled). */
function decode(bytes: Uint8Array, pieceSizes: number[] = [bytes.length]): { items: BackupItem[]; summary: BackupSummary } {
  const decoder = new BackupDecoder();
  const items: BackupItem[] = [];
  for (let offset = 0, i = 0; offset < bytes.length; i++) {
    const size = Math.max(1, pieceSizes[i % pieceSizes.length] as number);
    items.push(...decoder.push(bytes.slice(offset, offset + size)));
    offset += size;
  }
  return { items, summary: decoder.end() };
}

function decodeError(bytes: Uint8Array): BackupFormatError {
  try {
    decode(bytes, [97]);
  } catch (error) {
    assert.ok(error instanceof BackupFormatError, `expected a BackupFormatError, got ${String(error)}`);
    return error;
  }
  assert.fail('the damaged backup was accepted');
}

describe('backup format', () => {
  it('reads back every chunk it wrote, whatever pieces the bytes arrive in', () => {
    const random = new Random(1);
    const chunks = sampleChunks(random, 300, 25, 40);
    const { bytes, checksum } = encode(chunks);
    assert.equal(new TextDecoder().decode(bytes.subarray(0, 16)), 'MAINSTAY-BACKUP\n');
    for (const pieces of [[bytes.length], [1], [7, 1, 300], [4096], [backupHeaderBytes, 16, 5]]) {
      const { items, summary } = decode(bytes, pieces);
      assert.deepEqual(items[0], { kind: 'header', header: { formatVersion: 1, seq: 500, epoch: 2, createdAtMs: 1_764_000_000_000, keyCount: 300, sessionCount: 25 } });
      assert.deepEqual(items.slice(1, -1), chunks.map((chunk) => ({ kind: 'chunk', chunk })), `pieces of ${pieces.join(', ')}`);
      assert.deepEqual(items.at(-1), { kind: 'trailer', trailer: { recordCount: 325, keyCount: 300, sessionCount: 25, chunkCount: chunks.length, fileChecksum: checksum } });
      assert.equal(summary.totalBytes, bytes.length);
      assert.equal(summary.trailer.fileChecksum, crc32(bytes.subarray(0, bytes.length - 48)));
    }
    assert.match(formatChecksum(checksum), /^crc32:[0-9a-f]{8}$/);
  });

  it('a snapshot chunk with keys and sessions becomes two chunks of the file', () => {
    const chunk: SnapshotChunk = { items: [{ key: 'a', value: Uint8Array.of(1), version: 2 }], sessions: [session('c', 3)] };
    const { items } = decode(encode([chunk]).bytes, [5]);
    assert.deepEqual(items.slice(1, -1), [{ kind: 'chunk', chunk: { items: chunk.items, sessions: [] } }, { kind: 'chunk', chunk: { items: [], sessions: chunk.sessions } }]);
  });

  it('an empty state is a valid backup', () => {
    const { bytes } = encode([], { seq: seq(0), epoch: epoch(0), createdAtMs: 0 });
    const { items, summary } = decode(bytes);
    assert.equal(items.length, 2);
    assert.equal(summary.header.keyCount, 0);
  });

  it('refuses every flipped bit, wherever it is, with the reason and the offset', () => {
    const { bytes } = encode(sampleChunks(new Random(2), 30, 4, 7));
    const codes = new Map<string, number>();
    for (let offset = 0; offset < bytes.length; offset++) {
      const damaged = bytes.slice();
      damaged[offset] = (damaged[offset] as number) ^ (1 << (offset % 8));
      const error = decodeError(damaged);
      codes.set(error.code, (codes.get(error.code) ?? 0) + 1);
      if (offset < 16) assert.equal(error.code, 'NOT_A_BACKUP', `flip at ${offset}`);
      else if (offset >= 16 && offset < 20) assert.equal(error.code, 'UNSUPPORTED_VERSION', `flip at ${offset}`);
      else assert.ok(error.code === 'CORRUPT' || error.code === 'TRUNCATED', `flip at ${offset}: ${error.code} ${error.message}`);
      assert.ok(error.offset <= bytes.length, `flip at ${offset}: offset ${error.offset}`);
    }
    assert.ok((codes.get('CORRUPT') ?? 0) > bytes.length - 100, JSON.stringify([...codes]));
  });

  it('refuses every truncation, saying where the file ends', () => {
    const { bytes } = encode(sampleChunks(new Random(3), 40, 3, 9));
    for (let length = 0; length < bytes.length; length++) {
      const error = decodeError(bytes.subarray(0, length));
      assert.equal(error.code, 'TRUNCATED', `cut at ${length}: ${error.message}`);
    }
    assert.match(decodeError(bytes.subarray(0, 0)).message, /The backup is empty/);
    assert.match(decodeError(bytes.subarray(0, 30)).message, /ends at byte 30, inside its 68-byte header/);
    assert.match(decodeError(bytes.subarray(0, bytes.length - 48)).message, /after chunk \d+, before its trailer; it holds 40 of 40 keys/);
    assert.match(decodeError(bytes.subarray(0, 200)).message, /inside chunk 1 \(it starts at byte 68\)/);
  });

  it('refuses bytes after the trailer, keys out of order and other broken rules under valid checksums', () => {
    const { bytes } = encode(sampleChunks(new Random(4), 10, 1, 5));
    assert.match(decodeError(Buffer.concat([bytes, Uint8Array.of(0)])).message, /1 bytes follow the trailer/);
    const decoder = new BackupDecoder();
    decoder.push(bytes);
    assert.throws(() => decoder.push(Uint8Array.of(1, 2)), /2 bytes follow the trailer/);

    const key = (name: string): KeyValue => ({ key: name, value: Uint8Array.of(1), version: 1 });
    const unordered = encode([{ items: [key('b')], sessions: [] }, { items: [key('a')], sessions: [] }]).bytes;
    assert.match(decodeError(unordered).message, /chunk 2 holds a key out of order/);
    const duplicate = encode([{ items: [key('a'), key('a')], sessions: [] }]).bytes;
    assert.match(decodeError(duplicate).message, /chunk 1 holds a key out of order/);
    const future = encode([{ items: [{ key: 'a', value: Uint8Array.of(), version: 501 }], sessions: [] }]).bytes;
    assert.match(decodeError(future).message, /version 501 is not within seq 1..500/);
    // The encoder refuses to write keys after sessions; the reader must refuse to read them too.
    const writer = new BackupEncoder({ seq: seq(500), epoch: epoch(2), createdAtMs: 0, keyCount: 1, sessionCount: 1 });
    const parts = [writer.header(), writer.chunk({ items: [], sessions: [session('c', 1)] })];
    assert.throws(() => writer.chunk({ items: [key('a')], sessions: [] }), /every key comes before the first session/);
    Object.assign(writer, { sessions: 0 });
    parts.push(writer.chunk({ items: [key('a')], sessions: [] }));
    Object.assign(writer, { sessions: 1 });
    parts.push(writer.trailer());
    assert.match(decodeError(new Uint8Array(Buffer.concat(parts))).message, /chunk 2 holds keys after sessions/);
    assert.match(decodeError(new TextEncoder().encode('{"not":"a backup"}')).message, /not a Mainstay backup/);
  });
});
