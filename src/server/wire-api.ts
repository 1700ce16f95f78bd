// The server's side of the binary client protocol (src/protocol/wire.ts): a request frame is
// decoded and checked against the same limits as the HTTP API (section 9 of SPEC.md), so that
// both front doors accept exactly the same requests; the answer is the core's, encoded. Pure.

import { CodecError } from '../protocol/codec.ts';
import type { ClientRequest, ClientResponse, Operation, Write } from '../protocol/types.ts';
import { decodeWireRequest, encodeWireResponse, wireTag, type WireResponse } from '../protocol/wire.ts';
import type { HttpApiLimits } from './http-api.ts';
import { utf8Length } from '../lib/keys.ts';

export type WireRequestResult =
  | { kind: 'request'; tag: number; request: ClientRequest }
  /** The request is wrong; answer it with this frame and carry on. */
  | { kind: 'refused'; tag: number; answer: Uint8Array; code: 'BAD_REQUEST' | 'TOO_LARGE' }
  /** The frame has no tag to answer: the connection is unusable. */
  | { kind: 'broken'; message: string };

class Refusal extends Error {
  constructor(readonly code: 'BAD_REQUEST' | 'TOO_LARGE', message: string) {
    super(message);
  }
}

const printableAscii = /^[\x21-\x7e]+$/;

export function parseWireRequest(payload: Uint8Array, limits: HttpApiLimits): WireRequestResult {
  const tag = wireTag(payload);
  if (tag === undefined) return { kind: 'broken', message: `A request frame of ${payload.length} bytes is too short to carry a tag` };
  try {
    if (payload.length > limits.requestBodyBytesMax) {
      throw new Refusal('TOO_LARGE', `The request is ${payload.length} bytes, more than the limit of ${limits.requestBodyBytesMax}`);
    }
    let decoded;
    try {
      decoded = decodeWireRequest(payload);
    } catch (error) {
      if (error instanceof CodecError) throw new Refusal('BAD_REQUEST', `Cannot decode the request: ${error.message}`);
      throw error;
    }
    checkRequest(decoded.request, limits);
    return { kind: 'request', tag, request: decoded.request };
  } catch (error) {
    if (!(error instanceof Refusal)) throw error;
    const answer = encodeWireResponse(tag, { type: 'error', error: { code: error.code, message: error.message, definite: true } });
    return { kind: 'refused', tag, answer, code: error.code };
  }
}

/**
 * Encode the core's answer; with NOT_MAIN, name the main's client address when the map knows it.
 * An answer over `answerBytesMax` (a frame's limit) becomes TOO_LARGE on its tag instead.
 */
export function renderWireResponse(tag: number, response: ClientResponse, mainAddress: string | undefined, answerBytesMax: number): Uint8Array {
  const answer: WireResponse = response.type === 'error' && response.error.code === 'NOT_MAIN' && mainAddress !== undefined
    ? { type: 'error', error: { ...response.error, mainAddress } } : response;
  const encoded = encodeWireResponse(tag, answer);
  if (encoded.length <= answerBytesMax) return encoded;
  return encodeWireResponse(tag, { type: 'error', error: {
    code: 'TOO_LARGE', definite: true,
    message: `The answer is ${encoded.length} bytes, more than the wire protocol's frame limit of ${answerBytesMax}; ask for fewer items`,
  } });
}

function checkRequest(request: ClientRequest, limits: HttpApiLimits): void {
  switch (request.type) {
    case 'write':
      if (request.session !== undefined) {
        const { clientId, requestId } = request.session;
        if (!printableAscii.test(clientId) || clientId.length > limits.clientIdBytesMax) {
          throw new Refusal('BAD_REQUEST', `Bad client id: use 1 to ${limits.clientIdBytesMax} visible ASCII characters`);
        }
        if (!(requestId >= 1 && requestId <= limits.requestIdMax)) {
          throw new Refusal('BAD_REQUEST', `Bad request id ${requestId}: use a whole number from 1 to ${limits.requestIdMax}, increasing per client`);
        }
      }
      checkWrite(request.write, limits);
      return;
    case 'read':
      checkKey(request.key, 'key', limits);
      checkMinSeq(request.minSeq, limits);
      return;
    case 'list':
      if (utf8Length(request.prefix) > limits.keyBytesMax) {
        throw new Refusal('TOO_LARGE', `The prefix is more than ${limits.keyBytesMax} bytes, the limit for keys`);
      }
      if (!(request.limit >= 1 && request.limit <= limits.listLimitMax)) {
        throw new Refusal('BAD_REQUEST', `Bad list limit ${request.limit}: use 1 to ${limits.listLimitMax}`);
      }
      checkMinSeq(request.minSeq, limits);
      return;
  }
}

function checkWrite(write: Write, limits: HttpApiLimits): void {
  switch (write.type) {
    case 'put':
    case 'delete':
      checkKey(write.key, 'key', limits);
      if (write.type === 'put') checkValue(write.value, 'value', limits);
      if (write.ifVersion !== undefined && write.ifVersion > limits.seqMax) {
        throw new Refusal('BAD_REQUEST', `Bad ifVersion ${write.ifVersion}: the largest is ${limits.seqMax}`);
      }
      if (write.type === 'put' && write.ifAbsent === true && write.ifVersion !== undefined) {
        throw new Refusal('BAD_REQUEST', 'A put may have ifVersion or ifAbsent, not both');
      }
      return;
    case 'txn': {
      const count = write.compares.length + write.success.length + write.failure.length;
      if (count > limits.txnOperationsMax) {
        throw new Refusal('TOO_LARGE', `The transaction has ${count} compares and operations, more than the limit of ${limits.txnOperationsMax}; split it`);
      }
      let bytes = 0;
      write.compares.forEach((compare, index) => {
        bytes += checkKey(compare.key, `compare[${index}].key`, limits);
        if (compare.version > limits.seqMax) throw new Refusal('BAD_REQUEST', `Bad compare[${index}].version: the largest is ${limits.seqMax}`);
      });
      const operation = (item: Operation, where: string): void => {
        bytes += checkKey(item.key, `${where}.key`, limits);
        if (item.type === 'put') bytes += checkValue(item.value, `${where}.value`, limits);
      };
      write.success.forEach((item, index) => operation(item, `success[${index}]`));
      write.failure.forEach((item, index) => operation(item, `failure[${index}]`));
      if (bytes > limits.txnBytesMax) {
        throw new Refusal('TOO_LARGE', `The transaction's keys and values are ${bytes} bytes, more than the limit of ${limits.txnBytesMax}; split it`);
      }
      return;
    }
    case 'epochStart':
    case 'configChange':
      throw new Refusal('BAD_REQUEST', `A client cannot write a ${write.type} entry`);
  }
}

/** Checks a key and returns its size in bytes. */
function checkKey(key: string, what: string, limits: HttpApiLimits): number {
  if (key === '') throw new Refusal('BAD_REQUEST', `The ${what} is empty; give a non-empty key`);
  const bytes = utf8Length(key);
  if (bytes > limits.keyBytesMax) throw new Refusal('TOO_LARGE', `The ${what} is ${bytes} bytes, more than the limit of ${limits.keyBytesMax}; use shorter keys`);
  return bytes;
}

function checkValue(value: Uint8Array, what: string, limits: HttpApiLimits): number {
  if (value.length > limits.valueBytesMax) {
    throw new Refusal('TOO_LARGE', `The ${what} is ${value.length} bytes, more than the limit of ${limits.valueBytesMax}`);
  }
  return value.length;
}

function checkMinSeq(minSeq: number | undefined, limits: HttpApiLimits): void {
  if (minSeq !== undefined && minSeq > limits.seqMax) throw new Refusal('BAD_REQUEST', `Bad minSeq ${minSeq}: the largest is ${limits.seqMax}`);
}

