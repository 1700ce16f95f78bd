// Assertions that stay on in production. A broken invariant is a bug: crash, do not limp on.

export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function unreachable(value: never, message = 'Unreachable case'): never {
  throw new AssertionError(`${message}: ${JSON.stringify(value)}`);
}
