// fast-check arbitraries of the protocol's values, shared by the codec tests (codec.test.ts,
// wire.test.ts). Test support only: nothing outside tests imports it.

import fc from 'fast-check';
import type { Operation, Write } from './types.ts';

export const key = fc.string({ maxLength: 12 });
export const value = fc.uint8Array({ maxLength: 40 });
export const version = fc.nat({ max: Number.MAX_SAFE_INTEGER });
export const u32 = fc.nat({ max: 0xffffffff });

export const operation: fc.Arbitrary<Operation> = fc.oneof(
  fc.record({ type: fc.constant('put' as const), key, value }),
  fc.record({ type: fc.constant('delete' as const), key }),
);

/** The writes a client may send: put, delete, txn. */
export const clientWrite: fc.Arbitrary<Write> = fc.oneof(
  fc.record({ type: fc.constant('put' as const), key, value, ifVersion: version, ifAbsent: fc.constant(true) }, { requiredKeys: ['type', 'key', 'value'] }),
  fc.record({ type: fc.constant('delete' as const), key, ifVersion: version }, { requiredKeys: ['type', 'key'] }),
  fc.record({ type: fc.constant('txn' as const), compares: fc.array(fc.record({ key, version })), success: fc.array(operation), failure: fc.array(operation) }),
);

/** Every write a log entry may hold, the main's own included. */
export const write: fc.Arbitrary<Write> = fc.oneof(
  clientWrite,
  fc.constant({ type: 'epochStart' as const }),
  fc.record({ type: fc.constant('configChange' as const), mapVersion: version }),
);
