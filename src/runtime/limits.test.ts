// The largest write a server's limits admit must fit one log record and one replication message
// (a frame): otherwise the main would accept it and then stop on the assertion that guards the
// frame, or refuse to log it. Checked at the largest limits the options allow.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeMessage } from '../protocol/codec.ts';
import type { LogEntry, Operation } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import { RecordEncoder, recordPayloadBytesMax } from '../storage/log-format.ts';
import { frameBytesMax } from '../transport/framing.ts';
import { approximateEntryBytes } from '../core/log.ts';
import { parseOptions, serverHttpLimits, serverOptions } from './config.ts';

function largestOption(name: string): number {
  const spec = serverOptions.find((option) => option.name === name);
  assert.ok(spec !== undefined && spec.max !== undefined, `${name} has a maximum`);
  return spec.max;
}

function appendBytes(entries: LogEntry[]): number {
  return encodeMessage({ type: 'append', epoch: epoch(2 ** 31), generation: 2 ** 40, prevSeq: seq(2 ** 52), prevEpoch: epoch(2 ** 31), entries, commitSeq: seq(2 ** 52), ackQuorum: 4 }).length;
}

function fitsRecordAndFrame(entry: LogEntry): void {
  const message = { length: appendBytes([entry]) };
  assert.ok(message.length <= frameBytesMax, `an append of ${message.length} bytes exceeds the ${frameBytesMax}-byte frame`);
  const encoder = new RecordEncoder(() => 0);
  encoder.add(entry);
  assert.ok(encoder.byteLength <= recordPayloadBytesMax + 16, `a record of ${encoder.byteLength} bytes`);
}

describe('limits', () => {
  const options = parseOptions(serverOptions, ['--id', 's1', '--value-bytes-max', String(largestOption('value-bytes-max')), '--key-bytes-max', String(largestOption('key-bytes-max'))], {});
  const limits = serverHttpLimits(options);
  const session = { clientId: 'c'.repeat(limits.clientIdBytesMax), requestId: Number.MAX_SAFE_INTEGER };
  const key = (i: number): string => `${i}`.padStart(limits.keyBytesMax, 'k');

  it('the largest put fits a log record and a replication message', () => {
    fitsRecordAndFrame({ epoch: epoch(2 ** 31), seq: seq(2 ** 52), write: { type: 'put', key: key(0), value: new Uint8Array(limits.valueBytesMax), ifVersion: 2 ** 52 }, session });
  });

  it('the largest transaction fits a log record and a replication message', () => {
    // Every operation the limit allows, with the longest keys, and the rest of the byte budget in values.
    const operations = limits.txnOperationsMax;
    const keyBytes = operations * limits.keyBytesMax;
    const valueBytes = Math.min(limits.valueBytesMax, Math.floor((limits.txnBytesMax - keyBytes) / 2));
    const success: Operation[] = Array.from({ length: operations - 2 }, (_, i) => ({ type: 'delete', key: key(i) }));
    success.push({ type: 'put', key: key(operations - 2), value: new Uint8Array(valueBytes) });
    success.push({ type: 'put', key: key(operations - 1), value: new Uint8Array(valueBytes) });
    fitsRecordAndFrame({ epoch: epoch(2 ** 31), seq: seq(2 ** 52), write: { type: 'txn', compares: [], success, failure: [] }, session });
  });

  it('the largest batch fits a replication message, even of keys whose characters take three UTF-8 bytes', () => {
    // The main sizes batches by approximateEntryBytes, which counts a key's UTF-16 units, and stops
    // before the entry that would take it past batch-bytes-max (ServerCore.sendEntries).
    const batchBytesMax = largestOption('batch-bytes-max');
    const wideKey = '語'.repeat(Math.floor(limits.keyBytesMax / 3));
    const entries: LogEntry[] = [];
    let approximate = 0;
    for (let i = 0; ; i++) {
      const entry: LogEntry = { epoch: epoch(2 ** 31), seq: seq(2 ** 40 + i), write: { type: 'delete', key: wideKey }, session };
      if (approximate + approximateEntryBytes(entry) > batchBytesMax) break;
      approximate += approximateEntryBytes(entry);
      entries.push(entry);
    }
    const bytes = appendBytes(entries);
    assert.ok(bytes <= frameBytesMax, `a batch of ${entries.length} entries takes ${bytes} bytes, more than the ${frameBytesMax}-byte frame`);
  });
});
