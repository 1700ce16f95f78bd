// Binary encoding of log entries (the payload of a log record) and of every message between
// servers and the manager (the payload of a transport frame). Little-endian, length-prefixed
// strings and bytes, seqs as 53-bit integers. Pure: no Node built-ins.

import { assert } from '../lib/assert.ts';
import { allocBytes, copyBytes } from '../lib/bytes.ts';
import type {
  AppendReply, ClusterMap, ManagerToServer, Member, PeerMessage, ServerToManager,
} from './messages.ts';
import type { Compare, KeyValue, LogEntry, Operation, Session, SessionRecord, Write, WriteResult } from './types.ts';
import { epoch, seq, serverId } from './types.ts';

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });
/** Strings up to this many units are written by the ASCII path first (cheaper than a TextEncoder call). */
const asciiFastPathMax = 64;

export class CodecError extends Error {
  override name = 'CodecError';
}

export class Writer {
  private buffer: Uint8Array;
  private view: DataView;
  private length = 0;

  /** `capacity`: the expected size; a good guess saves copies as the buffer grows. */
  constructor(capacity = 256) {
    this.buffer = allocBytes(capacity);
    this.view = new DataView(this.buffer.buffer, this.buffer.byteOffset, this.buffer.byteLength);
  }

  private reserve(bytes: number): void {
    if (this.length + bytes <= this.buffer.length) return;
    // At least 64: a writer made with capacity 0 would otherwise double 0 forever.
    let capacity = Math.max(64, this.buffer.length * 2);
    while (capacity < this.length + bytes) capacity *= 2;
    const grown = allocBytes(capacity);
    grown.set(this.buffer.subarray(0, this.length));
    this.buffer = grown;
    this.view = new DataView(grown.buffer, grown.byteOffset, grown.byteLength);
  }

  u8(value: number): this {
    this.reserve(1);
    this.buffer[this.length++] = value;
    return this;
  }

  u32(value: number): this {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xffffffff, `u32 out of range: ${value}`);
    this.reserve(4);
    this.view.setUint32(this.length, value, true);
    this.length += 4;
    return this;
  }

  /** A non-negative integer up to 2^53 − 1. */
  u53(value: number): this {
    assert(Number.isSafeInteger(value) && value >= 0, `u53 out of range: ${value}`);
    this.reserve(8);
    this.view.setUint32(this.length, value % 0x100000000, true);
    this.view.setUint32(this.length + 4, Math.floor(value / 0x100000000), true);
    this.length += 8;
    return this;
  }

  bytes(value: Uint8Array): this {
    this.u32(value.length);
    this.reserve(value.length);
    this.buffer.set(value, this.length);
    this.length += value.length;
    return this;
  }

  string(value: string): this {
    const length = value.length;
    // Short ASCII strings (keys, ids) are copied byte by byte: no temporary array for each one.
    if (length <= asciiFastPathMax) {
      this.reserve(4 + length);
      const start = this.length + 4;
      let i = 0;
      while (i < length) {
        const code = value.charCodeAt(i);
        if (code >= 0x80) break;
        this.buffer[start + i] = code;
        i++;
      }
      if (i === length) {
        this.view.setUint32(this.length, length, true);
        this.length = start + length;
        return this;
      }
    }
    // At most 3 bytes per UTF-16 unit (a lone surrogate becomes U+FFFD, 3 bytes; a pair, 4 bytes for 2 units).
    this.reserve(4 + length * 3);
    const { written } = textEncoder.encodeInto(value, this.buffer.subarray(this.length + 4, this.length + 4 + length * 3));
    this.view.setUint32(this.length, written, true);
    this.length += 4 + written;
    return this;
  }

  /** Bytes written so far. */
  get byteLength(): number {
    return this.length;
  }

  finish(): Uint8Array {
    return this.buffer.subarray(0, this.length);
  }
}

export class Reader {
  private offset = 0;
  private readonly view: DataView;

  constructor(private readonly buffer: Uint8Array) {
    this.view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  }

  private need(bytes: number): void {
    if (this.offset + bytes > this.buffer.length) throw new CodecError(`Truncated input: need ${bytes} bytes at offset ${this.offset} of ${this.buffer.length}`);
  }

  u8(): number {
    this.need(1);
    return this.buffer[this.offset++] as number;
  }

  u32(): number {
    this.need(4);
    const value = this.view.getUint32(this.offset, true);
    this.offset += 4;
    return value;
  }

  u53(): number {
    this.need(8);
    const low = this.view.getUint32(this.offset, true);
    const high = this.view.getUint32(this.offset + 4, true);
    this.offset += 8;
    if (high > 0x1fffff) throw new CodecError('Integer above 2^53');
    // A small value stays the integer getUint32 made (no boxed double in the objects it lands in).
    return high === 0 ? low : high * 0x100000000 + low;
  }

  /** A copy (the input may be a reused network buffer), cut from a shared slab when small. */
  bytes(): Uint8Array {
    const length = this.u32();
    this.need(length);
    const value = copyBytes(this.buffer.subarray(this.offset, this.offset + length));
    this.offset += length;
    return value;
  }

  string(): string {
    const length = this.u32();
    this.need(length);
    // TextDecoder beats any JavaScript loop here, short ASCII included (and checks the UTF-8).
    const value = textDecoder.decode(this.buffer.subarray(this.offset, this.offset + length));
    this.offset += length;
    return value;
  }

  bool(): boolean {
    const value = this.u8();
    if (value > 1) throw new CodecError(`Bad boolean ${value}`);
    return value === 1;
  }

  end(): void {
    if (this.offset !== this.buffer.length) throw new CodecError(`${this.buffer.length - this.offset} unexpected bytes at the end`);
  }
}

// ---------------------------------------------------------------- entries

const enum WriteTag { Put = 1, Delete = 2, Txn = 3, EpochStart = 4, ConfigChange = 5 }
const enum OperationTag { Put = 1, Delete = 2 }

function writeOperation(writer: Writer, operation: Operation): void {
  if (operation.type === 'put') writer.u8(OperationTag.Put).string(operation.key).bytes(operation.value);
  else writer.u8(OperationTag.Delete).string(operation.key);
}

function readOperation(reader: Reader): Operation {
  const tag = reader.u8();
  if (tag === OperationTag.Put) return { type: 'put', key: reader.string(), value: reader.bytes() };
  if (tag === OperationTag.Delete) return { type: 'delete', key: reader.string() };
  throw new CodecError(`Unknown operation tag ${tag}`);
}

function writeOptionalVersion(writer: Writer, version: number | undefined): void {
  if (version === undefined) writer.u8(0);
  else writer.u8(1).u53(version);
}

function readOptionalVersion(reader: Reader): number | undefined {
  return reader.bool() ? reader.u53() : undefined;
}

export function writeWrite(writer: Writer, write: Write): void {
  switch (write.type) {
    case 'put':
      writer.u8(WriteTag.Put).string(write.key).bytes(write.value);
      writeOptionalVersion(writer, write.ifVersion);
      writer.u8(write.ifAbsent === true ? 1 : 0);
      return;
    case 'delete':
      writer.u8(WriteTag.Delete).string(write.key);
      writeOptionalVersion(writer, write.ifVersion);
      return;
    case 'txn':
      writer.u8(WriteTag.Txn).u32(write.compares.length);
      for (const compare of write.compares) writer.string(compare.key).u53(compare.version);
      writer.u32(write.success.length);
      for (const operation of write.success) writeOperation(writer, operation);
      writer.u32(write.failure.length);
      for (const operation of write.failure) writeOperation(writer, operation);
      return;
    case 'epochStart':
      writer.u8(WriteTag.EpochStart);
      return;
    case 'configChange':
      writer.u8(WriteTag.ConfigChange).u53(write.mapVersion);
      return;
  }
}

export function readWrite(reader: Reader): Write {
  const tag = reader.u8();
  switch (tag) {
    case WriteTag.Put: {
      const write: Write = { type: 'put', key: reader.string(), value: reader.bytes() };
      const ifVersion = readOptionalVersion(reader);
      if (ifVersion !== undefined) write.ifVersion = ifVersion;
      if (reader.bool()) write.ifAbsent = true;
      return write;
    }
    case WriteTag.Delete: {
      const write: Write = { type: 'delete', key: reader.string() };
      const ifVersion = readOptionalVersion(reader);
      if (ifVersion !== undefined) write.ifVersion = ifVersion;
      return write;
    }
    case WriteTag.Txn: {
      const compares: Compare[] = [];
      for (let i = reader.u32(); i > 0; i--) compares.push({ key: reader.string(), version: reader.u53() });
      const success: Operation[] = [];
      for (let i = reader.u32(); i > 0; i--) success.push(readOperation(reader));
      const failure: Operation[] = [];
      for (let i = reader.u32(); i > 0; i--) failure.push(readOperation(reader));
      return { type: 'txn', compares, success, failure };
    }
    case WriteTag.EpochStart:
      return { type: 'epochStart' };
    case WriteTag.ConfigChange:
      return { type: 'configChange', mapVersion: reader.u53() };
    default:
      throw new CodecError(`Unknown write tag ${tag}`);
  }
}

export function writeEntry(writer: Writer, entry: LogEntry): void {
  writer.u32(entry.epoch).u53(entry.seq);
  writeWrite(writer, entry.write);
  if (entry.session === undefined) writer.u8(0);
  else writer.u8(1).string(entry.session.clientId).u53(entry.session.requestId);
}

export function readEntry(reader: Reader): LogEntry {
  const entryEpoch = epoch(reader.u32());
  const entrySeq = seq(reader.u53());
  const write = readWrite(reader);
  if (!reader.bool()) return { epoch: entryEpoch, seq: entrySeq, write };
  const session: Session = { clientId: reader.string(), requestId: reader.u53() };
  // Whole literals, not a field added later: that would give every entry a separate property array.
  return { epoch: entryEpoch, seq: entrySeq, write, session };
}

export function encodeEntry(entry: LogEntry): Uint8Array {
  const writer = new Writer(64);
  writeEntry(writer, entry);
  return writer.finish();
}

export function decodeEntry(bytes: Uint8Array): LogEntry {
  const reader = new Reader(bytes);
  const entry = readEntry(reader);
  reader.end();
  return entry;
}

// ---------------------------------------------------------------- snapshot chunks

const enum ResultTag { Ok = 1, PreconditionFailed = 2, Txn = 3 }

/** A write's result (session records; the wire protocol's write answers). */
export function writeResult(writer: Writer, result: WriteResult): void {
  if (result.status === 'txn') writer.u8(ResultTag.Txn).u53(result.seq).u32(result.epoch).u8(result.succeeded ? 1 : 0);
  else writer.u8(result.status === 'ok' ? ResultTag.Ok : ResultTag.PreconditionFailed).u53(result.seq).u32(result.epoch).u53(result.version);
}

export function readResult(reader: Reader): WriteResult {
  const tag = reader.u8();
  const at = seq(reader.u53());
  const resultEpoch = epoch(reader.u32());
  if (tag === ResultTag.Txn) return { status: 'txn', seq: at, epoch: resultEpoch, succeeded: reader.bool() };
  if (tag === ResultTag.Ok) return { status: 'ok', seq: at, epoch: resultEpoch, version: reader.u53() };
  if (tag === ResultTag.PreconditionFailed) return { status: 'preconditionFailed', seq: at, epoch: resultEpoch, version: reader.u53() };
  throw new CodecError(`Unknown result tag ${tag}`);
}

export function writeSnapshotPayload(writer: Writer, items: readonly KeyValue[], sessions: readonly SessionRecord[]): void {
  writer.u32(items.length);
  for (const item of items) writer.string(item.key).bytes(item.value).u53(item.version);
  writer.u32(sessions.length);
  for (const record of sessions) {
    writer.string(record.clientId).u53(record.requestId).u53(record.lastSeq);
    writeResult(writer, record.result);
  }
}

function readSnapshotPayload(reader: Reader): { items: KeyValue[]; sessions: SessionRecord[] } {
  const items: KeyValue[] = [];
  for (let i = reader.u32(); i > 0; i--) items.push({ key: reader.string(), value: reader.bytes(), version: reader.u53() });
  const sessions: SessionRecord[] = [];
  for (let i = reader.u32(); i > 0; i--) {
    const clientId = reader.string();
    const requestId = reader.u53();
    const lastSeq = seq(reader.u53());
    sessions.push({ clientId, requestId, lastSeq, result: readResult(reader) });
  }
  return { items, sessions };
}

/** The bytes a snapshot chunk's checksum covers. */
export function encodeSnapshotPayload(items: readonly KeyValue[], sessions: readonly SessionRecord[]): Uint8Array {
  const writer = new Writer(256);
  writeSnapshotPayload(writer, items, sessions);
  return writer.finish();
}

// ---------------------------------------------------------------- messages

const enum MessageTag {
  Append = 1, Heartbeat = 2, EpochEnd = 3, AppendReply = 4, Ping = 5, SnapshotChunk = 6, SnapshotAck = 7,
  Status = 10, FenceReply = 11, SwitchoverReady = 12,
  Map = 20, Fence = 21, Switchover = 22,
}

const enum ReplyReason { None = 0, Mismatch = 1, StaleEpoch = 2 }

function writeIds(writer: Writer, ids: readonly string[]): void {
  writer.u32(ids.length);
  for (const id of ids) writer.string(id);
}

function readIds(reader: Reader): ReturnType<typeof serverId>[] {
  const ids = [];
  for (let i = reader.u32(); i > 0; i--) ids.push(serverId(reader.string()));
  return ids;
}

function writeMap(writer: Writer, map: ClusterMap): void {
  writer.u53(map.version).u32(map.epoch).string(map.main ?? '').u32(map.ackQuorum).u32(map.members.length);
  for (const member of map.members) {
    writer.string(member.id).u8(member.role === 'standby' ? 0 : 1).u32(member.priority).string(member.address).string(member.peerAddress);
  }
}

function readMap(reader: Reader): ClusterMap {
  const version = reader.u53();
  const mapEpoch = epoch(reader.u32());
  const main = reader.string();
  const ackQuorum = reader.u32();
  const members: Member[] = [];
  for (let i = reader.u32(); i > 0; i--) {
    const id = serverId(reader.string());
    const role = reader.u8() === 0 ? 'standby' : 'learner';
    members.push({ id, role, priority: reader.u32(), address: reader.string(), peerAddress: reader.string() });
  }
  return { version, epoch: mapEpoch, main: main === '' ? null : serverId(main), members, ackQuorum };
}

export type AnyMessage = PeerMessage | ServerToManager | ManagerToServer;

export function encodeMessage(message: AnyMessage): Uint8Array {
  const writer = new Writer(message.type === 'append' ? 128 + message.entries.length * 160 : 96);
  switch (message.type) {
    case 'append':
      writer.u8(MessageTag.Append).u32(message.epoch).u53(message.generation).u53(message.prevSeq).u32(message.prevEpoch)
        .u53(message.commitSeq).u32(message.ackQuorum).u32(message.entries.length);
      for (const entry of message.entries) writeEntry(writer, entry);
      break;
    case 'heartbeat':
      writer.u8(MessageTag.Heartbeat).u32(message.epoch).u53(message.commitSeq).u53(message.epochStartSeq)
        .u53(message.readRound).u53(message.forBootId).u53(message.lastSeq).u32(message.ackQuorum);
      break;
    case 'epochEnd':
      writer.u8(MessageTag.EpochEnd).u32(message.epoch).u53(message.generation).u32(message.forEpoch).u53(message.endSeq)
        .u32(message.answersLastEpoch).u53(message.answersLastSeq);
      break;
    case 'appendReply': {
      const reason = message.reason === 'mismatch' ? ReplyReason.Mismatch : message.reason === 'staleEpoch' ? ReplyReason.StaleEpoch : ReplyReason.None;
      writer.u8(MessageTag.AppendReply).u32(message.epoch).u53(message.bootId).u53(message.generation).u8(message.ok ? 1 : 0)
        .u8(reason).u53(message.ackSeq).u32(message.lastEpoch).u53(message.lastSeq).u53(message.readRound).u53(message.appliedSeq);
      break;
    }
    case 'ping':
      writer.u8(MessageTag.Ping);
      break;
    case 'snapshotChunk':
      writer.u8(MessageTag.SnapshotChunk).u32(message.epoch).u53(message.snapshotId).u53(message.seq).u32(message.snapshotEpoch)
        .u32(message.index).u8(message.last ? 1 : 0).u32(message.checksum);
      writeSnapshotPayload(writer, message.items, message.sessions);
      break;
    case 'snapshotAck':
      writer.u8(MessageTag.SnapshotAck).u32(message.epoch).u53(message.snapshotId).u32(message.index + 1);
      break;
    case 'status':
      writer.u8(MessageTag.Status).u53(message.bootId).u32(message.promisedEpoch).u8(message.role === 'main' ? 1 : 0)
        .u32(message.lastEpoch).u53(message.lastSeq).u53(message.commitSeq).u53(message.appliedSeq)
        .u8(message.incomplete ? 1 : 0).u32(message.standbysInContact).u53(message.mapVersion).u53(message.confirmedMapVersion);
      writeIds(writer, message.contacts);
      break;
    case 'fenceReply':
      writer.u8(MessageTag.FenceReply).u32(message.epoch).u32(message.lastEpoch).u53(message.lastSeq).u8(message.incomplete ? 1 : 0);
      break;
    case 'map':
      writer.u8(MessageTag.Map);
      writeMap(writer, message.map);
      break;
    case 'fence':
      writer.u8(MessageTag.Fence).u32(message.epoch);
      break;
    case 'switchover':
      writer.u8(MessageTag.Switchover).u32(message.epoch).string(message.target).u32(message.pauseMs);
      break;
    case 'switchoverReady':
      writer.u8(MessageTag.SwitchoverReady).u32(message.epoch).string(message.target).u53(message.lastSeq);
      break;
  }
  return writer.finish();
}

export function decodeMessage(bytes: Uint8Array): AnyMessage {
  const reader = new Reader(bytes);
  const message = readMessage(reader);
  reader.end();
  return message;
}

function readMessage(reader: Reader): AnyMessage {
  const tag = reader.u8();
  switch (tag) {
    case MessageTag.Append: {
      const header = {
        type: 'append' as const, epoch: epoch(reader.u32()), generation: reader.u53(), prevSeq: seq(reader.u53()),
        prevEpoch: epoch(reader.u32()), commitSeq: seq(reader.u53()), ackQuorum: reader.u32(),
      };
      const entries: LogEntry[] = [];
      for (let i = reader.u32(); i > 0; i--) entries.push(readEntry(reader));
      return { ...header, entries };
    }
    case MessageTag.Heartbeat:
      return {
        type: 'heartbeat', epoch: epoch(reader.u32()), commitSeq: seq(reader.u53()), epochStartSeq: seq(reader.u53()),
        readRound: reader.u53(), forBootId: reader.u53(), lastSeq: seq(reader.u53()), ackQuorum: reader.u32(),
      };
    case MessageTag.EpochEnd:
      return {
        type: 'epochEnd', epoch: epoch(reader.u32()), generation: reader.u53(), forEpoch: epoch(reader.u32()), endSeq: seq(reader.u53()),
        answersLastEpoch: epoch(reader.u32()), answersLastSeq: seq(reader.u53()),
      };
    case MessageTag.AppendReply: {
      const reply: AppendReply = {
        type: 'appendReply', epoch: epoch(reader.u32()), bootId: reader.u53(), generation: reader.u53(), ok: reader.bool(),
        ackSeq: seq(0), lastEpoch: epoch(0), lastSeq: seq(0), readRound: 0, appliedSeq: seq(0),
      };
      const reason = reader.u8();
      if (reason === ReplyReason.Mismatch) reply.reason = 'mismatch';
      else if (reason === ReplyReason.StaleEpoch) reply.reason = 'staleEpoch';
      else if (reason !== ReplyReason.None) throw new CodecError(`Unknown reply reason ${reason}`);
      reply.ackSeq = seq(reader.u53());
      reply.lastEpoch = epoch(reader.u32());
      reply.lastSeq = seq(reader.u53());
      reply.readRound = reader.u53();
      reply.appliedSeq = seq(reader.u53());
      return reply;
    }
    case MessageTag.Ping:
      return { type: 'ping' };
    case MessageTag.SnapshotChunk: {
      const header = {
        type: 'snapshotChunk' as const, epoch: epoch(reader.u32()), snapshotId: reader.u53(), seq: seq(reader.u53()),
        snapshotEpoch: epoch(reader.u32()), index: reader.u32(), last: reader.bool(), checksum: reader.u32(),
      };
      const { items, sessions } = readSnapshotPayload(reader);
      return { ...header, items, sessions };
    }
    case MessageTag.SnapshotAck:
      return { type: 'snapshotAck', epoch: epoch(reader.u32()), snapshotId: reader.u53(), index: reader.u32() - 1 };
    case MessageTag.Status:
      return {
        type: 'status', bootId: reader.u53(), promisedEpoch: epoch(reader.u32()), role: reader.bool() ? 'main' : 'standby',
        lastEpoch: epoch(reader.u32()), lastSeq: seq(reader.u53()), commitSeq: seq(reader.u53()), appliedSeq: seq(reader.u53()),
        incomplete: reader.bool(), standbysInContact: reader.u32(), mapVersion: reader.u53(), confirmedMapVersion: reader.u53(), contacts: readIds(reader),
      };
    case MessageTag.FenceReply:
      return { type: 'fenceReply', epoch: epoch(reader.u32()), lastEpoch: epoch(reader.u32()), lastSeq: seq(reader.u53()), incomplete: reader.bool() };
    case MessageTag.Map:
      return { type: 'map', map: readMap(reader) };
    case MessageTag.Fence:
      return { type: 'fence', epoch: epoch(reader.u32()) };
    case MessageTag.Switchover:
      return { type: 'switchover', epoch: epoch(reader.u32()), target: serverId(reader.string()), pauseMs: reader.u32() };
    case MessageTag.SwitchoverReady:
      return { type: 'switchoverReady', epoch: epoch(reader.u32()), target: serverId(reader.string()), lastSeq: seq(reader.u53()) };
    default:
      throw new CodecError(`Unknown message tag ${tag}`);
  }
}
