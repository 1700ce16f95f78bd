// Reading a server's /metrics (Prometheus text format) for the dashboard's charts: a small parser
// for the lines the dashboard needs, the request counters and latency histograms summed into
// reads and writes, their differences between two scrapes, and quantiles from histogram buckets
// (as PromQL's histogram_quantile computes them). Pure: the scraping itself is the shell's.

/** One sample line: `name{label="value",...} value`. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A parsed exposition: its samples, and the metrics its `# TYPE` lines declare (name → type). */
export interface Exposition {
  samples: Sample[];
  types: Map<string, string>;
}

/** A cumulative histogram: each bucket counts observations <= le (the last is +Inf). */
export interface Histogram {
  buckets: { le: number; count: number }[];
  sum: number;
  count: number;
}

/** What the dashboard reads from one server's metrics, as cumulative totals since it started. */
export interface RequestCounters {
  /** Successful reads (single keys and lists). */
  reads: number;
  /** Successful writes (puts, deletes, transactions). */
  writes: number;
  readLatency: Histogram;
  writeLatency: Histogram;
}

/** Names of the server metrics used (src/runtime/metrics.ts). */
export const requestsMetric = 'mainstay_requests_total';
export const latencyMetric = 'mainstay_request_seconds';

const readKinds = new Set(['read', 'list']);
const writeKinds = new Set(['write', 'txn']);

const sampleLine = /^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const labelPair = /\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?/y;

function parseValue(text: string): number {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  return Number(text);
}

function unescapeLabel(value: string): string {
  return value.replace(/\\(.)/g, (_, character: string) => (character === 'n' ? '\n' : character));
}

const typeLine = /^#\s*TYPE\s+(\S+)\s+(\S+)/;

/**
 * The samples and declared types of a Prometheus text exposition; other comments and lines it
 * cannot read are skipped. A labelled metric never incremented has a type and no sample.
 */
export function parsePrometheus(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#')) {
      const declared = typeLine.exec(line);
      if (declared !== null) types.set(declared[1] as string, declared[2] as string);
      continue;
    }
    if (line === '') continue;
    const match = sampleLine.exec(line);
    if (match === null) continue;
    const labels: Record<string, string> = {};
    const labelText = match[2] ?? '';
    labelPair.lastIndex = 0;
    let readable = true;
    while (labelPair.lastIndex < labelText.length) {
      const pair = labelPair.exec(labelText);
      if (pair === null) {
        readable = labelText.slice(labelPair.lastIndex).trim() === '';
        break;
      }
      labels[pair[1] as string] = unescapeLabel(pair[2] as string);
    }
    const value = parseValue(match[3] as string);
    if (readable && !Number.isNaN(value)) samples.push({ name: match[1] as string, labels, value });
  }
  return { samples, types };
}

const emptyHistogram = (): Histogram => ({ buckets: [], sum: 0, count: 0 });

function addToHistogram(histogram: Histogram, sample: Sample, suffix: string): void {
  if (suffix === '_sum') histogram.sum += sample.value;
  else if (suffix === '_count') histogram.count += sample.value;
  else {
    const le = parseValue(sample.labels.le ?? '');
    if (Number.isNaN(le)) return;
    const bucket = histogram.buckets.find((candidate) => candidate.le === le);
    if (bucket === undefined) histogram.buckets.push({ le, count: sample.value });
    else bucket.count += sample.value;
  }
}

/** Reads and writes with their latency (zero if none yet), or undefined if the metrics do not have them. */
export function requestCounters(exposition: Exposition): RequestCounters | undefined {
  const counters: RequestCounters = { reads: 0, writes: 0, readLatency: emptyHistogram(), writeLatency: emptyHistogram() };
  let found = exposition.types.has(requestsMetric);
  for (const sample of exposition.samples) {
    const kind = sample.labels.kind ?? '';
    if (sample.name === requestsMetric) {
      found = true;
      if (sample.labels.outcome !== 'ok') continue;
      if (readKinds.has(kind)) counters.reads += sample.value;
      else if (writeKinds.has(kind)) counters.writes += sample.value;
      continue;
    }
    if (!sample.name.startsWith(latencyMetric)) continue;
    const suffix = sample.name.slice(latencyMetric.length);
    if (suffix !== '_bucket' && suffix !== '_sum' && suffix !== '_count') continue;
    if (readKinds.has(kind)) addToHistogram(counters.readLatency, sample, suffix);
    else if (writeKinds.has(kind)) addToHistogram(counters.writeLatency, sample, suffix);
  }
  if (!found) return undefined;
  for (const histogram of [counters.readLatency, counters.writeLatency]) histogram.buckets.sort((a, b) => a.le - b.le);
  return counters;
}

/**
 * later − earlier, bucket by bucket. A counter that went down means the server restarted and its
 * counters began again from zero: then everything since the restart is `later` itself.
 */
export function histogramDelta(later: Histogram, earlier: Histogram): Histogram {
  const buckets = later.buckets.map((bucket) => ({ le: bucket.le, count: bucket.count - (earlier.buckets.find((old) => old.le === bucket.le)?.count ?? 0) }));
  const reset = later.count < earlier.count || buckets.some((bucket) => bucket.count < 0);
  if (reset) return { buckets: later.buckets.map((bucket) => ({ ...bucket })), sum: later.sum, count: later.count };
  return { buckets, sum: later.sum - earlier.sum, count: later.count - earlier.count };
}

/** Adds histograms with the same bucket bounds (a bound missing from one counts as zero there). */
export function histogramSum(histograms: readonly Histogram[]): Histogram {
  const total = emptyHistogram();
  for (const histogram of histograms) {
    total.sum += histogram.sum;
    total.count += histogram.count;
    for (const bucket of histogram.buckets) {
      const same = total.buckets.find((candidate) => candidate.le === bucket.le);
      if (same === undefined) total.buckets.push({ ...bucket });
      else same.count += bucket.count;
    }
  }
  total.buckets.sort((a, b) => a.le - b.le);
  return total;
}

/**
 * The q-quantile (0 < q < 1) of the observations, interpolated linearly inside its bucket like
 * PromQL's histogram_quantile; the highest finite bound if it falls in the +Inf bucket; null if
 * the histogram holds no observation.
 */
export function histogramQuantile(histogram: Histogram, q: number): number | null {
  const buckets = histogram.buckets;
  const total = buckets.length === 0 ? 0 : (buckets[buckets.length - 1] as { count: number }).count;
  if (total <= 0) return null;
  const rank = q * total;
  let lowerBound = 0;
  let lowerCount = 0;
  for (const bucket of buckets) {
    if (bucket.count >= rank) {
      if (bucket.le === Infinity) return lowerBound;
      const inBucket = bucket.count - lowerCount;
      return inBucket <= 0 ? bucket.le : lowerBound + (bucket.le - lowerBound) * ((rank - lowerCount) / inBucket);
    }
    lowerBound = bucket.le === Infinity ? lowerBound : bucket.le;
    lowerCount = bucket.count;
  }
  return lowerBound;
}
