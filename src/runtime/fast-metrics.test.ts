// FastHistogram and fastCounter must look to Prometheus exactly like prom-client's Histogram and
// Counter fed the same observations.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Counter, Histogram, Registry } from 'prom-client';
import { FastHistogram, fastCounter } from './fast-metrics.ts';

const buckets = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 1];
const kinds = ['write', 'read', 'list'] as const;
const consistencies = ['linearizable', 'local'] as const;

const observation = fc.record({
  kind: fc.constantFrom(...kinds),
  consistency: fc.constantFrom(...consistencies),
  // Values on the bounds too: a value equal to a bound belongs to that bound's bucket.
  seconds: fc.oneof(fc.constantFrom(...buckets, 0, 2), fc.double({ min: 0, max: 3, noNaN: true })),
});

describe('fast metrics', () => {
  it('a FastHistogram renders as prom-client\'s Histogram does for the same observations', async () => {
    await fc.assert(fc.asyncProperty(fc.array(observation, { maxLength: 200 }), async (observations) => {
      const theirs = new Registry();
      const ours = new Registry();
      const reference = new Histogram({ name: 'h_seconds', help: 'help', labelNames: ['kind', 'consistency'], buckets, registers: [theirs] });
      const fast = new FastHistogram<'kind' | 'consistency'>({ name: 'h_seconds', help: 'help', labelNames: ['kind', 'consistency'], buckets, registers: [ours] });
      for (const { kind, consistency, seconds } of observations) {
        reference.observe({ kind, consistency }, seconds);
        fast.labels({ kind, consistency }).observe(seconds);
      }
      assert.equal(await ours.metrics(), await theirs.metrics());
    }), { numRuns: 200 });
  });

  it('a fastCounter renders as prom-client\'s Counter does, scrape after scrape', async () => {
    await fc.assert(fc.asyncProperty(fc.array(fc.array(fc.constantFrom(...kinds), { maxLength: 30 }), { maxLength: 4 }), async (rounds) => {
      const theirs = new Registry();
      const ours = new Registry();
      const reference = new Counter({ name: 'c_total', help: 'help', labelNames: ['kind'], registers: [theirs] });
      const fast = fastCounter({ name: 'c_total', help: 'help', labelNames: ['kind'], registers: [ours] });
      for (const round of rounds) {
        for (const kind of round) {
          reference.inc({ kind });
          fast.labels({ kind }).inc();
        }
        assert.equal(await ours.metrics(), await theirs.metrics());
      }
    }), { numRuns: 100 });
  });

  it('refuses bounds that do not increase and labels it does not have', () => {
    assert.throws(() => new FastHistogram({ name: 'x', help: 'x', labelNames: [], buckets: [1, 1], registers: [] }), /increase/);
    const histogram = new FastHistogram<'kind'>({ name: 'y', help: 'y', labelNames: ['kind'], buckets: [1], registers: [] });
    assert.throws(() => histogram.labels({ other: 'x' } as never), /no label other/);
  });
});

describe('fast metrics reset', () => {
  it('a registry reset zeroes a FastHistogram, and the series handed out before count on', async () => {
    const registry = new Registry();
    const histogram = new FastHistogram<'kind'>({ name: 'z_seconds', help: 'z', labelNames: ['kind'], buckets: [1], registers: [registry] });
    const series = histogram.labels({ kind: 'write' });
    series.observe(0.5);
    registry.resetMetrics();
    assert.match(await registry.metrics(), /z_seconds_count\{kind="write"\} 0/);
    series.observe(2);
    const text = await registry.metrics();
    assert.match(text, /z_seconds_bucket\{le="1",kind="write"\} 0/);
    assert.match(text, /z_seconds_count\{kind="write"\} 1/);
  });
});
