// Tests of the dashboard's reading of /metrics: the text format as prom-client writes it (with the
// server's metric names), label escapes, counter resets between scrapes, and quantiles from buckets.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Counter, Histogram as PromHistogram, Registry } from 'prom-client';
import type { Histogram } from './prometheus.ts';
import { histogramDelta, histogramQuantile, histogramSum, latencyMetric, parsePrometheus, requestCounters, requestsMetric } from './prometheus.ts';

/** Metrics shaped like a server's (src/runtime/metrics.ts), rendered by prom-client itself. */
async function serverMetrics(record: (requests: Counter<'kind' | 'outcome'>, latency: PromHistogram<'kind'>) => void): Promise<string> {
  const registry = new Registry();
  const requests = new Counter({ name: requestsMetric, help: 'requests', labelNames: ['kind', 'outcome'], registers: [registry] });
  const latency = new PromHistogram({ name: latencyMetric, help: 'latency', labelNames: ['kind'], registers: [registry], buckets: [0.001, 0.01, 0.1] });
  record(requests, latency);
  return registry.metrics();
}

describe('parsePrometheus', () => {
  it('reads names, labels with escapes, special values, and skips comments and unreadable lines', () => {
    const { samples, types } = parsePrometheus([
      '# HELP x help text',
      '# TYPE x counter',
      'plain 3',
      'labelled{a="1",b="say \\"hi\\"\\nthere"} 4.5 1700000000000',
      'bucket{le="+Inf"} +Inf',
      'broken{a="1" 2',
      'not a sample',
      '',
    ].join('\n'));
    assert.deepEqual(samples, [
      { name: 'plain', labels: {}, value: 3 },
      { name: 'labelled', labels: { a: '1', b: 'say "hi"\nthere' }, value: 4.5 },
      { name: 'bucket', labels: { le: '+Inf' }, value: Infinity },
    ]);
    assert.deepEqual([...types], [['x', 'counter']]);
  });
});

describe('requestCounters', () => {
  it('sums successful reads and writes and their latency histograms from prom-client output', async () => {
    const text = await serverMetrics((requests, latency) => {
      requests.inc({ kind: 'write', outcome: 'ok' }, 5);
      requests.inc({ kind: 'write', outcome: 'TIMEOUT' }, 2);
      requests.inc({ kind: 'read', outcome: 'ok' }, 7);
      requests.inc({ kind: 'list', outcome: 'ok' }, 1);
      requests.inc({ kind: 'read', outcome: 'NOT_MAIN' }, 9);
      for (const seconds of [0.0005, 0.005, 0.05]) latency.observe({ kind: 'write' }, seconds);
      latency.observe({ kind: 'read' }, 0.0005);
      latency.observe({ kind: 'list' }, 0.5);
    });
    const counters = requestCounters(parsePrometheus(text));
    assert.ok(counters !== undefined);
    assert.equal(counters.writes, 5);
    assert.equal(counters.reads, 8);
    assert.deepEqual(counters.writeLatency.buckets, [{ le: 0.001, count: 1 }, { le: 0.01, count: 2 }, { le: 0.1, count: 3 }, { le: Infinity, count: 3 }]);
    assert.equal(counters.writeLatency.count, 3);
    assert.ok(Math.abs(counters.writeLatency.sum - 0.0555) < 1e-9);
    assert.deepEqual(counters.readLatency.buckets, [{ le: 0.001, count: 1 }, { le: 0.01, count: 1 }, { le: 0.1, count: 1 }, { le: Infinity, count: 2 }]);
  });

  it('is zero for a server that has served no request yet, and undefined without the request counter', async () => {
    const idle = requestCounters(parsePrometheus(await serverMetrics(() => undefined)));
    assert.deepEqual([idle?.reads, idle?.writes, idle?.writeLatency.count], [0, 0, 0]);
    assert.equal(requestCounters(parsePrometheus('process_cpu_seconds_total 1\n')), undefined);
  });
});

const histogram = (counts: [number, number][], sum = 0): Histogram =>
  ({ buckets: counts.map(([le, count]) => ({ le, count })), sum, count: counts[counts.length - 1]?.[1] ?? 0 });

describe('histograms', () => {
  it('interpolates quantiles inside a bucket as histogram_quantile does', () => {
    const h = histogram([[0.001, 0], [0.01, 100], [0.1, 100], [Infinity, 100]]);
    assert.ok(Math.abs((histogramQuantile(h, 0.5) as number) - 0.0055) < 1e-12);
    assert.ok(Math.abs((histogramQuantile(h, 0.99) as number) - 0.00991) < 1e-12);
    assert.equal(histogramQuantile(histogram([[0.01, 0], [Infinity, 0]]), 0.5), null);
    // In the +Inf bucket: the highest finite bound.
    assert.equal(histogramQuantile(histogram([[0.01, 1], [Infinity, 10]]), 0.99), 0.01);
  });

  it('subtracts scrapes, and takes a counter that went down as a restart', () => {
    const earlier = histogram([[0.01, 4], [Infinity, 5]], 0.2);
    const later = histogram([[0.01, 6], [Infinity, 9]], 0.5);
    assert.deepEqual(histogramDelta(later, earlier), histogram([[0.01, 2], [Infinity, 4]], 0.5 - 0.2));
    const restarted = histogram([[0.01, 1], [Infinity, 1]], 0.001);
    assert.deepEqual(histogramDelta(restarted, earlier), restarted);
  });

  it('adds histograms bucket by bucket', () => {
    const sum = histogramSum([histogram([[0.01, 1], [Infinity, 2]], 1), histogram([[0.01, 3], [Infinity, 3]], 2)]);
    assert.deepEqual(sum, histogram([[0.01, 4], [Infinity, 5]], 3));
  });
});
