// The backup file format: a snapshot of the key-value state (snapshot.ts) as one self-checking
// byte stream, written and read incrementally. Pure: it turns chunks into bytes and bytes back into
// chunks, and says precisely where and why a damaged or cut file fails; the HTTP handler, the CLI
// and the restore do the I/O.
//
// All integers are little-endian; u53 is 8 bytes, low word first (as in the log format). A file is
// a header, chunks, a trailer, and nothing after it:
//
//   header (68 bytes)
//        0    16  magic           "MAINSTAY-BACKUP\n"
//       16     4  formatVersion   1
//       20     4  flags           0
//       24     8  seq             u53: the last log entry the state reflects
//       32     8  epoch           u53: the epoch of that entry
//       40     8  createdAtMs     u53: when the backup was taken (milliseconds since 1970)
//       48     8  keyCount        u53
//       56     8  sessionCount    u53
//       64     4  checksum        CRC-32 of bytes 0 .. 64
//
//   chunk (16 bytes + payload)
//        0     4  checksum        CRC-32 of bytes 4 .. 16 + payloadLength (this header's rest too)
//        4     1  kind            1 = keys, 2 = sessions, 3 = trailer
//        5     3  reserved        0
//        8     4  recordCount
//       12     4  payloadLength
//       16     n  payload
//
//   keys payload: per key, in strictly increasing UTF-8 byte order across the whole file:
//     u16 keyLength, u53 version, u32 valueLength, key (UTF-8), value
//   sessions payload: per session, in strictly increasing clientId order, after every key:
//     u32 length, the SessionRecord as UTF-8 JSON
//   trailer payload (32 bytes), a chunk of kind 3 with recordCount 0:
//     u53 recordCount (keys + sessions), u53 keyCount, u53 sessionCount, u32 chunkCount,
//     u32 fileChecksum: CRC-32 of every byte of the file before the trailer chunk
//
// The per-chunk checksums find damage where it is (and before a restore writes anything from a
// damaged chunk); the trailer proves the file is whole: a file cut at a chunk boundary lacks it.

import { assert } from '../lib/assert.ts';
import { utf8Length } from '../lib/keys.ts';
import type { SessionRecord, SnapshotChunk } from '../core/kv.ts';
import type { Epoch, KeyValue, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import { crc32 } from './log-format.ts';
import type { Checksum } from './log-format.ts';

export const backupMagic = 'MAINSTAY-BACKUP\n';
export const backupFormatVersion = 1;
export const backupHeaderBytes = 68;
export const backupChunkHeaderBytes = 16;
const trailerPayloadBytes = 32;
/** Largest chunk payload a reader accepts: room for the largest value (64 MiB) and its key. */
export const backupChunkPayloadBytesMax = 128 * 1024 * 1024;
/** Longest key, in UTF-8 bytes, the format holds (LMDB's limit is lower). */
const keyBytesMax = 0xffff;
/** Fixed bytes of one key record before its key and value. */
const keyRecordOverheadBytes = 14;
const sessionRecordOverheadBytes = 4;

const chunkKinds = { keys: 1, sessions: 2, trailer: 3 } as const;

/** What the header says. */
export interface BackupHeader {
  formatVersion: number;
  seq: Seq;
  epoch: Epoch;
  createdAtMs: number;
  keyCount: number;
  sessionCount: number;
}

/** What the trailer says, with what the reader checked it against. */
export interface BackupTrailer {
  recordCount: number;
  keyCount: number;
  sessionCount: number;
  chunkCount: number;
  /** CRC-32 of every byte before the trailer. */
  fileChecksum: number;
}

/** A whole, verified backup: its header, trailer and size. */
export interface BackupSummary {
  header: BackupHeader;
  trailer: BackupTrailer;
  totalBytes: number;
}

export type BackupFormatErrorCode = 'NOT_A_BACKUP' | 'UNSUPPORTED_VERSION' | 'CORRUPT' | 'TRUNCATED';

/** A file that is not a whole, intact backup; `offset` is where the reader found out. */
export class BackupFormatError extends Error {
  override name = 'BackupFormatError';

  constructor(readonly code: BackupFormatErrorCode, message: string, readonly offset: number) {
    super(message);
  }
}

/** The checksum as people see it: "crc32:0a1b2c3d". */
export function formatChecksum(checksum: number): string {
  return `crc32:${(checksum >>> 0).toString(16).padStart(8, '0')}`;
}

// ---------------------------------------------------------------- little-endian helpers

function setU53(view: DataView, offset: number, value: number): void {
  // Tested before asserting: the message is built only when it fails (this runs once per key).
  if (!(Number.isSafeInteger(value) && value >= 0)) assert(false, `Cannot encode ${value}: not a safe non-negative integer`);
  view.setUint32(offset, value % 0x1_0000_0000, true);
  view.setUint32(offset + 4, Math.floor(value / 0x1_0000_0000), true);
}

function getU53(view: DataView, offset: number): number | undefined {
  const high = view.getUint32(offset + 4, true);
  if (high > 0x1fffff) return undefined;
  return high * 0x1_0000_0000 + view.getUint32(offset, true);
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const length = Math.min(a.length, b.length);
  for (let i = 0; i < length; i++) {
    const difference = (a[i] as number) - (b[i] as number);
    if (difference !== 0) return difference;
  }
  return a.length - b.length;
}

const textEncoder = new TextEncoder();

/** Writes `text` as UTF-8 at `offset` (room for utf8Length(text) bytes); ASCII without a call out. */
function writeUtf8(bytes: Uint8Array, offset: number, text: string, length: number): void {
  if (length === text.length) {
    for (let i = 0; i < length; i++) bytes[offset + i] = text.charCodeAt(i);
    return;
  }
  textEncoder.encodeInto(text, bytes.subarray(offset, offset + length));
}
const magicBytes = textEncoder.encode(backupMagic);

function notABackup(): BackupFormatError {
  return new BackupFormatError('NOT_A_BACKUP', `This is not a Mainstay backup: it does not start with ${JSON.stringify(backupMagic)}`, 0);
}

// ---------------------------------------------------------------- writing

/**
 * Encodes a backup piece by piece: `header()` first, then `chunk()` for each snapshot chunk (keys
 * before sessions, each in order; a snapshot chunk with both becomes two chunks of the file), then
 * `trailer()`, which checks the counts the header promised.
 */
export class BackupEncoder {
  private state: 'header' | 'chunks' | 'done' = 'header';
  private fileChecksum = 0;
  private keys = 0;
  private sessions = 0;
  private chunkCount = 0;
  private bytes = 0;

  constructor(private readonly info: Omit<BackupHeader, 'formatVersion'>, private readonly checksum: Checksum = crc32) {
    assert(info.seq > 0 || info.epoch === 0, 'a backup at seq 0 has epoch 0');
  }

  /** Bytes produced so far. */
  get byteLength(): number {
    return this.bytes;
  }

  header(): Uint8Array {
    assert(this.state === 'header', 'the header comes first, once');
    this.state = 'chunks';
    const bytes = new Uint8Array(backupHeaderBytes);
    const view = new DataView(bytes.buffer);
    bytes.set(magicBytes, 0);
    view.setUint32(16, backupFormatVersion, true);
    view.setUint32(20, 0, true);
    setU53(view, 24, this.info.seq);
    setU53(view, 32, this.info.epoch);
    setU53(view, 40, this.info.createdAtMs);
    setU53(view, 48, this.info.keyCount);
    setU53(view, 56, this.info.sessionCount);
    view.setUint32(64, this.checksum(bytes.subarray(0, 64)), true);
    return this.emit(bytes);
  }

  chunk(chunk: SnapshotChunk): Uint8Array {
    assert(this.state === 'chunks', 'chunks come after the header and before the trailer');
    if (chunk.items.length === 0) return chunk.sessions.length === 0 ? new Uint8Array(0) : this.sessionsChunk(chunk.sessions);
    const keys = this.keysChunk(chunk.items);
    if (chunk.sessions.length === 0) return keys;
    const sessions = this.sessionsChunk(chunk.sessions);
    const both = new Uint8Array(keys.length + sessions.length);
    both.set(keys, 0);
    both.set(sessions, keys.length);
    return both;
  }

  private keysChunk(items: readonly KeyValue[]): Uint8Array {
    assert(this.sessions === 0, 'every key comes before the first session');
    // Keys are measured, then written straight into the chunk: no array per key.
    const keyLengths = new Uint32Array(items.length);
    let payloadLength = 0;
    for (let i = 0; i < items.length; i++) {
      const item = items[i] as KeyValue;
      const keyLength = utf8Length(item.key);
      if (!(keyLength >= 1 && keyLength <= keyBytesMax)) assert(false, `a key has 1 to ${keyBytesMax} bytes, not ${keyLength}`);
      keyLengths[i] = keyLength;
      payloadLength += keyRecordOverheadBytes + keyLength + item.value.length;
    }
    const { bytes, view } = this.allocateChunk(chunkKinds.keys, items.length, payloadLength);
    let offset = backupChunkHeaderBytes;
    for (let i = 0; i < items.length; i++) {
      const item = items[i] as KeyValue;
      const keyLength = keyLengths[i] as number;
      view.setUint16(offset, keyLength, true);
      setU53(view, offset + 2, item.version);
      view.setUint32(offset + 10, item.value.length, true);
      writeUtf8(bytes, offset + keyRecordOverheadBytes, item.key, keyLength);
      bytes.set(item.value, offset + keyRecordOverheadBytes + keyLength);
      offset += keyRecordOverheadBytes + keyLength + item.value.length;
    }
    this.keys += items.length;
    return this.finishChunk(bytes);
  }

  private sessionsChunk(sessions: readonly SessionRecord[]): Uint8Array {
    const encoded = sessions.map((record) => textEncoder.encode(JSON.stringify(record)));
    const payloadLength = encoded.reduce((sum, json) => sum + sessionRecordOverheadBytes + json.length, 0);
    const { bytes, view } = this.allocateChunk(chunkKinds.sessions, encoded.length, payloadLength);
    let offset = backupChunkHeaderBytes;
    for (const json of encoded) {
      view.setUint32(offset, json.length, true);
      bytes.set(json, offset + sessionRecordOverheadBytes);
      offset += sessionRecordOverheadBytes + json.length;
    }
    this.sessions += encoded.length;
    return this.finishChunk(bytes);
  }

  trailer(): Uint8Array {
    assert(this.state === 'chunks', 'the trailer comes after the header, once');
    assert(this.keys === this.info.keyCount, `the header promised ${this.info.keyCount} keys, the chunks held ${this.keys}`);
    assert(this.sessions === this.info.sessionCount, `the header promised ${this.info.sessionCount} sessions, the chunks held ${this.sessions}`);
    this.state = 'done';
    const { bytes, view } = this.allocateChunk(chunkKinds.trailer, 0, trailerPayloadBytes);
    setU53(view, 16, this.keys + this.sessions);
    setU53(view, 24, this.keys);
    setU53(view, 32, this.sessions);
    view.setUint32(40, this.chunkCount, true);
    view.setUint32(44, this.fileChecksum, true);
    view.setUint32(0, this.checksum(bytes.subarray(4)), true);
    this.bytes += bytes.length;
    return bytes;
  }

  /** CRC-32 of every byte before the trailer (final once trailer() was called). */
  get checksumSoFar(): number {
    return this.fileChecksum;
  }

  private allocateChunk(kind: number, recordCount: number, payloadLength: number): { bytes: Uint8Array; view: DataView } {
    assert(payloadLength <= backupChunkPayloadBytesMax, `a chunk of ${payloadLength} bytes exceeds backupChunkPayloadBytesMax`);
    const bytes = new Uint8Array(backupChunkHeaderBytes + payloadLength);
    const view = new DataView(bytes.buffer);
    view.setUint8(4, kind);
    view.setUint32(8, recordCount, true);
    view.setUint32(12, payloadLength, true);
    return { bytes, view };
  }

  private finishChunk(bytes: Uint8Array): Uint8Array {
    new DataView(bytes.buffer).setUint32(0, this.checksum(bytes.subarray(4)), true);
    this.chunkCount++;
    return this.emit(bytes);
  }

  private emit(bytes: Uint8Array): Uint8Array {
    this.fileChecksum = this.checksum(bytes, this.fileChecksum);
    this.bytes += bytes.length;
    return bytes;
  }
}

// ---------------------------------------------------------------- reading

/** What the decoder found in the bytes pushed so far, in file order. A chunk holds keys or sessions, not both. */
export type BackupItem =
  | { kind: 'header'; header: BackupHeader }
  | { kind: 'chunk'; chunk: SnapshotChunk }
  | { kind: 'trailer'; trailer: BackupTrailer };

/**
 * Decodes and verifies a backup fed in pieces of any size: `push` returns what became complete,
 * `end` checks the file was whole. Every problem throws a BackupFormatError naming the byte offset.
 * Chunks are returned only once their checksum holds, and keys only in order.
 */
export class BackupDecoder {
  private readonly pieces: Uint8Array[] = [];
  private pendingBytes = 0;
  /** Bytes of the file consumed (decoded) so far. */
  private consumed = 0;
  private fileChecksum = 0;
  private headerValue: BackupHeader | undefined;
  private trailerValue: BackupTrailer | undefined;
  private keys = 0;
  private sessions = 0;
  private chunks = 0;
  private lastKey: Uint8Array | undefined;
  private lastClientId: Uint8Array | undefined;
  private readonly textDecoder = new TextDecoder('utf-8', { fatal: true });

  constructor(private readonly checksum: Checksum = crc32) {}

  get header(): BackupHeader | undefined {
    return this.headerValue;
  }

  /** Bytes pushed so far. */
  get bytesRead(): number {
    return this.consumed + this.pendingBytes;
  }

  get keysRead(): number {
    return this.keys;
  }

  push(bytes: Uint8Array): BackupItem[] {
    if (bytes.length === 0) return [];
    if (this.trailerValue !== undefined) throw this.corrupt(this.consumed, `${bytes.length} bytes follow the trailer`);
    this.pieces.push(bytes);
    this.pendingBytes += bytes.length;
    const items: BackupItem[] = [];
    for (;;) {
      const item = this.next();
      if (item === undefined) break;
      items.push(item);
      if (item.kind === 'trailer' && this.pendingBytes > 0) throw this.corrupt(this.consumed, `${this.pendingBytes} bytes follow the trailer`);
    }
    return items;
  }

  /** The input ended: returns the summary of a whole backup, or throws TRUNCATED. */
  end(): BackupSummary {
    if (this.headerValue === undefined) {
      if (this.pendingBytes === 0) throw new BackupFormatError('TRUNCATED', 'The backup is empty', 0);
      throw new BackupFormatError('TRUNCATED', `The backup is truncated: it ends at byte ${this.bytesRead}, inside its ${backupHeaderBytes}-byte header`, this.bytesRead);
    }
    if (this.trailerValue === undefined) {
      const where = this.pendingBytes === 0
        ? `after chunk ${this.chunks}, before its trailer`
        : `inside chunk ${this.chunks + 1} (it starts at byte ${this.consumed})`;
      throw new BackupFormatError('TRUNCATED', `The backup is truncated: it ends at byte ${this.bytesRead}, ${where}; `
        + `it holds ${this.keys} of ${this.headerValue.keyCount} keys`, this.bytesRead);
    }
    return { header: this.headerValue, trailer: this.trailerValue, totalBytes: this.consumed };
  }

  /** Decodes the next complete piece, if the pending bytes hold one. */
  private next(): BackupItem | undefined {
    if (this.headerValue === undefined) {
      // Say "not a backup" as soon as the first bytes show it, even for a file shorter than a header.
      const prefix = this.peek(Math.min(this.pendingBytes, magicBytes.length)) as Uint8Array;
      if (compareBytes(prefix, magicBytes.subarray(0, prefix.length)) !== 0) throw notABackup();
      const bytes = this.take(backupHeaderBytes);
      return bytes === undefined ? undefined : this.decodeHeader(bytes);
    }
    const chunkHeader = this.peek(backupChunkHeaderBytes);
    if (chunkHeader === undefined) return undefined;
    const view = new DataView(chunkHeader.buffer, chunkHeader.byteOffset, chunkHeader.byteLength);
    const payloadLength = view.getUint32(12, true);
    if (payloadLength > backupChunkPayloadBytesMax) {
      throw this.corrupt(this.consumed, `chunk ${this.chunks + 1} claims ${payloadLength} bytes, more than the limit of ${backupChunkPayloadBytesMax}`);
    }
    const start = this.consumed;
    const bytes = this.take(backupChunkHeaderBytes + payloadLength);
    return bytes === undefined ? undefined : this.decodeChunk(bytes, start);
  }

  private decodeHeader(bytes: Uint8Array): BackupItem {
    if (compareBytes(bytes.subarray(0, magicBytes.length), magicBytes) !== 0) throw notABackup();
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const formatVersion = view.getUint32(16, true);
    if (formatVersion !== backupFormatVersion) {
      throw new BackupFormatError('UNSUPPORTED_VERSION', `The backup has format version ${formatVersion}; this version of Mainstay reads version ${backupFormatVersion}`, 16);
    }
    if (this.checksum(bytes.subarray(0, 64)) !== view.getUint32(64, true)) throw this.corrupt(0, 'the header fails its checksum');
    const numbers = [24, 32, 40, 48, 56].map((offset) => getU53(view, offset));
    if (numbers.some((value) => value === undefined)) throw this.corrupt(0, 'the header holds a number out of range');
    const [headerSeq, headerEpoch, createdAtMs, keyCount, sessionCount] = numbers as number[];
    if (view.getUint32(20, true) !== 0) throw this.corrupt(20, 'the header has flags this version does not know');
    this.fileChecksum = this.checksum(bytes, 0);
    this.consumed += bytes.length;
    this.headerValue = {
      formatVersion, seq: seq(headerSeq as number), epoch: epoch(headerEpoch as number), createdAtMs: createdAtMs as number,
      keyCount: keyCount as number, sessionCount: sessionCount as number,
    };
    return { kind: 'header', header: this.headerValue };
  }

  private decodeChunk(bytes: Uint8Array, start: number): BackupItem {
    const header = this.headerValue as BackupHeader;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const number = this.chunks + 1;
    if (this.checksum(bytes.subarray(4)) !== view.getUint32(0, true)) throw this.corrupt(start, `chunk ${number} fails its checksum`);
    const kind = view.getUint8(4);
    const recordCount = view.getUint32(8, true);
    if (view.getUint8(5) !== 0 || view.getUint16(6, true) !== 0) throw this.corrupt(start + 5, `chunk ${number} has reserved bytes set`);
    const payload = bytes.subarray(backupChunkHeaderBytes);
    let item: BackupItem;
    if (kind === chunkKinds.keys) {
      if (this.sessions > 0) throw this.corrupt(start, `chunk ${number} holds keys after sessions`);
      item = { kind: 'chunk', chunk: { items: this.decodeKeys(payload, recordCount, start + backupChunkHeaderBytes, number), sessions: [] } };
      this.keys += recordCount;
      if (this.keys > header.keyCount) throw this.corrupt(start, `chunk ${number} brings the keys to ${this.keys}, more than the ${header.keyCount} the header promised`);
    } else if (kind === chunkKinds.sessions) {
      item = { kind: 'chunk', chunk: { items: [], sessions: this.decodeSessions(payload, recordCount, start + backupChunkHeaderBytes, number) } };
      this.sessions += recordCount;
      if (this.sessions > header.sessionCount) throw this.corrupt(start, `chunk ${number} brings the sessions to ${this.sessions}, more than the ${header.sessionCount} the header promised`);
    } else if (kind === chunkKinds.trailer) {
      return this.decodeTrailer(payload, recordCount, start);
    } else {
      throw this.corrupt(start + 4, `chunk ${number} has an unknown kind ${kind}`);
    }
    this.chunks++;
    this.fileChecksum = this.checksum(bytes, this.fileChecksum);
    this.consumed += bytes.length;
    return item;
  }

  private decodeKeys(payload: Uint8Array, recordCount: number, payloadStart: number, number: number): KeyValue[] {
    const header = this.headerValue as BackupHeader;
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const keys: KeyValue[] = new Array<KeyValue>(recordCount);
    let offset = 0;
    for (let i = 0; i < recordCount; i++) {
      const at = payloadStart + offset;
      if (payload.length - offset < keyRecordOverheadBytes) throw this.corrupt(at, `chunk ${number} ends inside key ${i + 1} of ${recordCount}`);
      const keyLength = view.getUint16(offset, true);
      const version = getU53(view, offset + 2);
      const valueLength = view.getUint32(offset + 10, true);
      const keyStart = offset + keyRecordOverheadBytes;
      const end = keyStart + keyLength + valueLength;
      if (end > payload.length) throw this.corrupt(at, `chunk ${number} ends inside key ${i + 1} of ${recordCount}`);
      if (keyLength === 0) throw this.corrupt(at, `chunk ${number} holds an empty key`);
      const keyBytes = payload.subarray(keyStart, keyStart + keyLength);
      if (this.lastKey !== undefined && compareBytes(this.lastKey, keyBytes) >= 0) throw this.corrupt(at, `chunk ${number} holds a key out of order`);
      if (version === undefined || version < 1 || version > header.seq) throw this.corrupt(at, `chunk ${number} holds a key whose version ${version ?? 'is out of range'} is not within seq 1..${header.seq}`);
      let key: string;
      try {
        key = this.textDecoder.decode(keyBytes);
      } catch {
        throw this.corrupt(at, `chunk ${number} holds a key that is not UTF-8`);
      }
      this.lastKey = keyBytes;
      keys[i] = { key, value: payload.subarray(keyStart + keyLength, end), version };
      offset = end;
    }
    if (offset !== payload.length) throw this.corrupt(payloadStart + offset, `chunk ${number} has ${payload.length - offset} bytes after its last key`);
    return keys;
  }

  private decodeSessions(payload: Uint8Array, recordCount: number, payloadStart: number, number: number): SessionRecord[] {
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const sessions: SessionRecord[] = [];
    let offset = 0;
    for (let i = 0; i < recordCount; i++) {
      const at = payloadStart + offset;
      if (payload.length - offset < sessionRecordOverheadBytes) throw this.corrupt(at, `chunk ${number} ends inside session ${i + 1} of ${recordCount}`);
      const length = view.getUint32(offset, true);
      const end = offset + sessionRecordOverheadBytes + length;
      if (end > payload.length) throw this.corrupt(at, `chunk ${number} ends inside session ${i + 1} of ${recordCount}`);
      let record: unknown;
      try {
        record = JSON.parse(this.textDecoder.decode(payload.subarray(offset + sessionRecordOverheadBytes, end)));
      } catch {
        throw this.corrupt(at, `chunk ${number} holds a session that is not JSON`);
      }
      if (!isSessionRecord(record)) throw this.corrupt(at, `chunk ${number} holds a session record of the wrong shape`);
      const clientId = textEncoder.encode(record.clientId);
      if (this.lastClientId !== undefined && compareBytes(this.lastClientId, clientId) >= 0) throw this.corrupt(at, `chunk ${number} holds a session out of order`);
      this.lastClientId = clientId;
      sessions.push(record);
      offset = end;
    }
    if (offset !== payload.length) throw this.corrupt(payloadStart + offset, `chunk ${number} has ${payload.length - offset} bytes after its last session`);
    return sessions;
  }

  private decodeTrailer(payload: Uint8Array, recordCount: number, start: number): BackupItem {
    const header = this.headerValue as BackupHeader;
    if (recordCount !== 0 || payload.length !== trailerPayloadBytes) throw this.corrupt(start, 'the trailer has the wrong size');
    const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
    const trailer: BackupTrailer = {
      recordCount: getU53(view, 0) ?? -1,
      keyCount: getU53(view, 8) ?? -1,
      sessionCount: getU53(view, 16) ?? -1,
      chunkCount: view.getUint32(24, true),
      fileChecksum: view.getUint32(28, true),
    };
    if (trailer.fileChecksum !== this.fileChecksum) {
      throw this.corrupt(start, `the file fails its checksum: the trailer says ${formatChecksum(trailer.fileChecksum)}, the bytes give ${formatChecksum(this.fileChecksum)}`);
    }
    if (trailer.keyCount !== this.keys || trailer.keyCount !== header.keyCount || trailer.sessionCount !== this.sessions
      || trailer.sessionCount !== header.sessionCount || trailer.recordCount !== this.keys + this.sessions || trailer.chunkCount !== this.chunks) {
      throw this.corrupt(start, `the trailer's counts (${trailer.keyCount} keys, ${trailer.sessionCount} sessions, ${trailer.chunkCount} chunks) `
        + `disagree with the header (${header.keyCount} keys, ${header.sessionCount} sessions) or the chunks (${this.keys} keys, ${this.sessions} sessions, ${this.chunks} chunks)`);
    }
    this.consumed += backupChunkHeaderBytes + payload.length;
    this.trailerValue = trailer;
    return { kind: 'trailer', trailer };
  }

  private corrupt(offset: number, detail: string): BackupFormatError {
    return new BackupFormatError('CORRUPT', `The backup is corrupt at byte ${offset}: ${detail}`, offset);
  }

  /** The next `length` pending bytes without consuming them, if there are that many. */
  private peek(length: number): Uint8Array | undefined {
    if (this.pendingBytes < length) return undefined;
    const first = this.pieces[0] as Uint8Array;
    if (first.length >= length) return first.subarray(0, length);
    return this.gather(length, false);
  }

  /** Consumes the next `length` pending bytes as one array of this decoder's own, if there are that many. */
  private take(length: number): Uint8Array | undefined {
    if (this.pendingBytes < length) return undefined;
    return this.gather(length, true);
  }

  private gather(length: number, consume: boolean): Uint8Array {
    const bytes = new Uint8Array(length);
    let filled = 0;
    let index = 0;
    while (filled < length) {
      const piece = this.pieces[index] as Uint8Array;
      const part = Math.min(piece.length, length - filled);
      bytes.set(piece.subarray(0, part), filled);
      filled += part;
      if (consume) {
        if (part === piece.length) this.pieces.shift();
        else this.pieces[0] = piece.subarray(part);
      } else {
        index++;
      }
    }
    if (consume) this.pendingBytes -= length;
    return bytes;
  }
}

function isSessionRecord(value: unknown): value is SessionRecord {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Record<string, unknown>;
  return typeof record.clientId === 'string' && record.clientId.length > 0
    && Number.isSafeInteger(record.requestId) && Number.isSafeInteger(record.lastSeq)
    && typeof record.result === 'object' && record.result !== null;
}
