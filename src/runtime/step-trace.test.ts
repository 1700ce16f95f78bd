import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { monotonicMicroseconds, openStepTrace } from './step-trace.ts';

describe('step trace', () => {
  it('appends one line per mark, on the shared monotonic clock, by close', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'step-trace-'));
    try {
      const path = join(directory, 's1.steps');
      const trace = openStepTrace(path, (error) => assert.fail(error));
      assert.equal(trace.enabled, true);
      const before = monotonicMicroseconds();
      trace.mark('requests', 64);
      trace.mark('durable');
      trace.close();
      const after = monotonicMicroseconds();
      const lines = (await readFile(path, 'utf8')).trim().split('\n').map((line) => line.split(' '));
      assert.deepEqual(lines.map(([mark, , count]) => [mark, count]), [['requests', '64'], ['durable', '0']]);
      for (const [, us] of lines) assert.ok(Number(us) >= before && Number(us) <= after, `${us} within [${before}, ${after}]`);
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });

  it('records nothing without a file', () => {
    const trace = openStepTrace(undefined, (error) => assert.fail(error));
    assert.equal(trace.enabled, false);
    trace.mark('requests', 1);
    trace.close();
  });
});

describe('step trace failures', () => {
  it('reports a write that fails once and stops recording', async () => {
    const errors: Error[] = [];
    const trace = openStepTrace('/nonexistent-directory/s1.steps', (error) => errors.push(error));
    trace.mark('requests', 1);
    trace.close();
    trace.mark('requests', 1);
    trace.close();
    assert.equal(errors.length, 1);
    assert.match(errors[0]?.message ?? '', /ENOENT/);
  });
});
