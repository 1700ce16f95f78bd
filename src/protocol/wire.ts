// The binary client protocol ("wire protocol", docs/PROTOCOL.md): the same requests and answers
// as the HTTP API, without HTTP. A client opens a TCP connection to a server's client port (the
// HTTP port: the server tells the two apart by the first byte), sends the 4-byte preamble, then
// length-prefixed frames (src/transport/framing.ts), each one request carrying a tag the client
// chose. The server answers each request with a frame carrying the same tag, in any order, so a
// client may keep many requests in flight on one connection (pipelining).
//
// This module is the encoding only, for both sides; src/server/wire-api.ts checks a decoded
// request against the server's limits. Pure: no Node built-ins.

import { CodecError, Reader, readResult, readWrite, Writer, writeResult, writeWrite } from './codec.ts';
import type { ClientRequest, ClientResponse, Consistency, ErrorBody, ErrorCode, KeyValue, Session } from './types.ts';
import { seq, serverId } from './types.ts';

/** First bytes a client sends, and the server echoes: a NUL (no HTTP request starts so), "MS", version 1. */
export const wirePreamble: Readonly<Uint8Array> = Uint8Array.of(0x00, 0x4d, 0x53, 0x01);
/** The tag of an answer that concerns the connection, not a request; the server closes it after. */
export const connectionTag = 0;
/** Tags are u32; 0 is the connection's. */
export const tagMax = 0xffffffff;

const enum RequestTag { Write = 1, Read = 2, List = 3 }
const enum ResponseTag { Write = 1, Read = 2, List = 3, Error = 4 }

const errorCodes: readonly ErrorCode[] = [
  'NOT_MAIN', 'TIMEOUT', 'PRECONDITION_FAILED', 'NOT_FOUND', 'UNAVAILABLE', 'BAD_REQUEST', 'METHOD_NOT_ALLOWED', 'TOO_LARGE', 'OVERLOADED',
];

/** An error answer on the wire: the core's error plus, with NOT_MAIN, the main's client address. */
export interface WireError extends ErrorBody {
  /** With NOT_MAIN: the base URL (http://host:port) of the main's client port, when known. */
  mainAddress?: string;
}

export type WireResponse =
  | Exclude<ClientResponse, { type: 'error' }>
  | { type: 'error'; error: WireError };

// ---------------------------------------------------------------- requests

export function encodeWireRequest(tag: number, request: ClientRequest): Uint8Array {
  // Sized for a put with a session in one go (no growing copies): ids and keys are mostly ASCII.
  let sizeHint = 64;
  if (request.type === 'write') {
    if (request.session !== undefined) sizeHint += request.session.clientId.length;
    if (request.write.type === 'put') sizeHint += request.write.key.length + request.write.value.length;
  }
  const writer = new Writer(sizeHint);
  writer.u32(tag);
  switch (request.type) {
    case 'write':
      writer.u8(RequestTag.Write);
      if (request.session === undefined) writer.u8(0);
      else writer.u8(1).string(request.session.clientId).u53(request.session.requestId);
      writeWrite(writer, request.write);
      break;
    case 'read':
      writer.u8(RequestTag.Read).string(request.key);
      writeReadOptions(writer, request.consistency, request.minSeq);
      break;
    case 'list':
      writer.u8(RequestTag.List).string(request.prefix).u32(request.limit);
      writeReadOptions(writer, request.consistency, request.minSeq);
      break;
  }
  return writer.finish();
}

/** The tag of a request frame, or undefined when the frame is too short to carry one. */
export function wireTag(payload: Uint8Array): number | undefined {
  if (payload.length < 4) return undefined;
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0, true);
}

/**
 * Decode a request frame. Throws CodecError when it does not decode (truncated, unknown tags,
 * invalid UTF-8, bytes left over); says nothing about limits.
 */
export function decodeWireRequest(payload: Uint8Array): { tag: number; request: ClientRequest } {
  return guard(() => {
    const reader = new Reader(payload);
    const tag = reader.u32();
    const kind = reader.u8();
    let request: ClientRequest;
    switch (kind) {
      case RequestTag.Write: {
        let session: Session | undefined;
        if (reader.bool()) session = { clientId: reader.string(), requestId: reader.u53() };
        const write = readWrite(reader);
        request = session === undefined ? { type: 'write', write } : { type: 'write', write, session };
        break;
      }
      case RequestTag.Read:
        request = { type: 'read', key: reader.string(), ...readReadOptions(reader) };
        break;
      case RequestTag.List:
        request = { type: 'list', prefix: reader.string(), limit: reader.u32(), ...readReadOptions(reader) };
        break;
      default:
        throw new CodecError(`Unknown request kind ${kind}`);
    }
    reader.end();
    return { tag, request };
  });
}

function writeReadOptions(writer: Writer, consistency: Consistency, minSeq: number | undefined): void {
  writer.u8(consistency === 'linearizable' ? 0 : 1);
  if (minSeq === undefined) writer.u8(0);
  else writer.u8(1).u53(minSeq);
}

function readReadOptions(reader: Reader): { consistency: Consistency; minSeq?: number } {
  const consistencyTag = reader.u8();
  if (consistencyTag > 1) throw new CodecError(`Unknown consistency ${consistencyTag}`);
  const consistency: Consistency = consistencyTag === 0 ? 'linearizable' : 'local';
  return reader.bool() ? { consistency, minSeq: reader.u53() } : { consistency };
}

// ---------------------------------------------------------------- responses

export function encodeWireResponse(tag: number, response: WireResponse): Uint8Array {
  const writer = new Writer(response.type === 'read' && response.item !== undefined ? 48 + response.item.value.length : 64);
  writer.u32(tag);
  switch (response.type) {
    case 'write':
      writer.u8(ResponseTag.Write);
      writeResult(writer, response.result);
      break;
    case 'read':
      writer.u8(ResponseTag.Read).u53(response.appliedSeq);
      if (response.item === undefined) writer.u8(0);
      else writeItem(writer.u8(1), response.item);
      break;
    case 'list':
      writer.u8(ResponseTag.List).u53(response.appliedSeq).u32(response.items.length);
      for (const item of response.items) writeItem(writer, item);
      break;
    case 'error': {
      const { error } = response;
      writer.u8(ResponseTag.Error).u8(errorCodes.indexOf(error.code)).string(error.message).u8(error.definite ? 1 : 0);
      writeOptionalString(writer, error.main);
      writeOptionalString(writer, error.mainAddress);
      break;
    }
  }
  return writer.finish();
}

export function decodeWireResponse(payload: Uint8Array): { tag: number; response: WireResponse } {
  return guard(() => {
    const reader = new Reader(payload);
    const tag = reader.u32();
    const kind = reader.u8();
    let response: WireResponse;
    switch (kind) {
      case ResponseTag.Write:
        response = { type: 'write', result: readResult(reader) };
        break;
      case ResponseTag.Read: {
        const appliedSeq = seq(reader.u53());
        response = { type: 'read', appliedSeq, item: reader.bool() ? readItem(reader) : undefined };
        break;
      }
      case ResponseTag.List: {
        const appliedSeq = seq(reader.u53());
        const items: KeyValue[] = [];
        for (let count = reader.u32(); count > 0; count--) items.push(readItem(reader));
        response = { type: 'list', appliedSeq, items };
        break;
      }
      case ResponseTag.Error: {
        const codeIndex = reader.u8();
        const code = errorCodes[codeIndex];
        if (code === undefined) throw new CodecError(`Unknown error code ${codeIndex}`);
        const error: WireError = { code, message: reader.string(), definite: reader.bool() };
        const main = readOptionalString(reader);
        if (main !== undefined) error.main = serverId(main);
        const mainAddress = readOptionalString(reader);
        if (mainAddress !== undefined) error.mainAddress = mainAddress;
        response = { type: 'error', error };
        break;
      }
      default:
        throw new CodecError(`Unknown response kind ${kind}`);
    }
    reader.end();
    return { tag, response };
  });
}

function writeItem(writer: Writer, item: KeyValue): void {
  writer.string(item.key).bytes(item.value).u53(item.version);
}

function readItem(reader: Reader): KeyValue {
  return { key: reader.string(), value: reader.bytes(), version: reader.u53() };
}

function writeOptionalString(writer: Writer, value: string | undefined): void {
  if (value === undefined) writer.u8(0);
  else writer.u8(1).string(value);
}

function readOptionalString(reader: Reader): string | undefined {
  return reader.bool() ? reader.string() : undefined;
}

/** Invalid UTF-8 makes the decoder throw a TypeError: report it as the CodecError it is. */
function guard<T>(decode: () => T): T {
  try {
    return decode();
  } catch (error) {
    if (error instanceof CodecError) throw error;
    throw new CodecError(`Cannot decode: ${(error as Error).message}`);
  }
}
