// Summarises a V8 CPU profile (`node --cpu-prof`): the functions with the most self time, the
// project functions with the most inclusive time, and self time by area (Node's HTTP stack, JSON,
// LMDB, logging, the protocol core…), optionally only over a window of CLOCK_MONOTONIC
// microseconds (the bench records each run's window). It samples the main JavaScript thread
// only: fsync and LMDB's writes run on other threads and show here as idle time.
//
//   node --import tsx scripts/bench/profile-summary.ts FILE.cpuprofile [--from US --to US] [--top N]

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileRow {
  name: string;
  where: string;
  ms: number;
  percent: number;
  /** For self time: the nearest project (src/) or package functions up the stack, by share of this row's time. */
  callers?: { name: string; where: string; percent: number }[];
}

export interface ProfileSummary {
  /** Sampled milliseconds in the window, idle included. */
  sampledMs: number;
  /** Sampled milliseconds that were not idle. */
  busyMs: number;
  topSelf: ProfileRow[];
  topInclusiveProject: ProfileRow[];
  areas: ProfileRow[];
}

const projectRoot = fileURLToPath(new URL('../../', import.meta.url));

function shortUrl(url: string): string {
  const path = url.startsWith('file://') ? fileURLToPath(url) : url;
  const inModules = path.lastIndexOf('node_modules/');
  if (inModules >= 0) return path.slice(inModules + 'node_modules/'.length);
  return path.startsWith(projectRoot) ? path.slice(projectRoot.length) : path;
}

/** The area a frame belongs to; '' for a frame without a script (native code), which takes its caller's. */
function areaOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === '') {
    if (functionName === '(garbage collector)') return 'garbage collection';
    if (functionName === '(idle)') return 'idle';
    if (functionName === '(program)') return 'V8/native, unattributed (program)';
    if (functionName === '(root)') return 'idle';
    if (functionName === 'parse' || functionName === 'stringify') return 'JSON';
    return '';
  }
  const path = shortUrl(url);
  if (/^node:(_http|internal\/http|http)/.test(path)) return 'node http (parser, headers, responses)';
  if (/^node:internal\/(url|querystring)|^node:url/.test(path)) return 'URL parsing';
  if (/^node:(net|internal\/stream|stream|internal\/net|internal\/dns|internal\/streams|_stream)/.test(path)) return 'node net / streams (socket reads and writes)';
  if (/^node:internal\/(timers|process\/task_queues|async_hooks|process)|^node:timers/.test(path)) return 'node timers / microtasks';
  if (/^node:internal\/fs|^node:fs/.test(path)) return 'node fs (log writes, fsync calls)';
  if (path.startsWith('node:internal/encoding')) return 'TextEncoder / TextDecoder';
  if (/^node:(internal\/)?buffer/.test(path)) return 'Buffer';
  if (/^node:internal\/(modules|deps\/cjs-module-lexer|bootstrap)/.test(path)) return 'module loading';
  if (path.startsWith('node:events')) return 'node events';
  if (path.startsWith('node:')) return 'node other';
  if (path.startsWith('lmdb') || path.startsWith('msgpackr')) return 'lmdb';
  if (path.startsWith('pino') || path.startsWith('sonic-boom') || path.startsWith('thread-stream')) return 'logging (pino)';
  if (path.startsWith('prom-client')) return 'metrics (prom-client)';
  if (path.startsWith('tsx') || path.startsWith('esbuild')) return 'tsx loader';
  if (path.startsWith('src/core/')) return 'core (protocol state machine, kv)';
  if (path.startsWith('src/server/')) return 'http-api (parse/render)';
  if (path.startsWith('src/runtime/')) return 'runtime shell (server-process)';
  if (path.startsWith('src/storage/')) return 'storage (file log, lmdb store)';
  if (path.startsWith('src/transport/')) return 'transport (tcp)';
  if (path.startsWith('src/protocol/')) return 'protocol (codec)';
  if (path.startsWith('src/')) return 'src other';
  return 'other';
}

export function summarizeProfile(file: string, options: { fromUs?: number; toUs?: number; top?: number } = {}): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const top = options.top ?? 10;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);

  const selfUs = new Map<number, number>();
  let sampledUs = 0;
  let time = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    time += profile.timeDeltas[i] ?? 0;
    if (options.fromUs !== undefined && time < options.fromUs) continue;
    if (options.toUs !== undefined && time > options.toUs) break;
    // A sample stands for the interval until the next one.
    const durationUs = profile.timeDeltas[i + 1] ?? 0;
    const id = profile.samples[i] as number;
    selfUs.set(id, (selfUs.get(id) ?? 0) + durationUs);
    sampledUs += durationUs;
  }

  const frameKey = (frame: CallFrame): string => `${frame.functionName || '(anonymous)'}\u0000${frame.url}\u0000${frame.lineNumber}`;
  const describe = (frame: CallFrame): { name: string; where: string } => ({
    name: frame.functionName || '(anonymous)',
    // tsx's transform puts a whole module on line 1, so a line number would say nothing there.
    where: frame.url === '' ? '(native)' : frame.lineNumber === 0 ? shortUrl(frame.url) : `${shortUrl(frame.url)}:${frame.lineNumber + 1}`,
  });

  const self = new Map<string, { frame: CallFrame; us: number; callers: Map<string, { frame: CallFrame; us: number }> }>();
  const inclusive = new Map<string, { frame: CallFrame; us: number }>();
  const areas = new Map<string, number>();
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id) as ProfileNode;
    const key = frameKey(node.callFrame);
    const entry = self.get(key) ?? { frame: node.callFrame, us: 0, callers: new Map() };
    entry.us += us;
    self.set(key, entry);
    // Who it works for: the nearest caller in the project's code or in a package.
    for (let at = parent.get(id); at !== undefined; at = parent.get(at)) {
      const frame = (byId.get(at) as ProfileNode).callFrame;
      const where = shortUrl(frame.url);
      if (where === '' || where.startsWith('node:')) continue;
      const callerKey = frameKey(frame);
      const caller = entry.callers.get(callerKey) ?? { frame, us: 0 };
      caller.us += us;
      entry.callers.set(callerKey, caller);
      break;
    }
    // The area: the first frame up the stack that has one (native code counts for its caller).
    let area = '';
    const seen = new Set<string>();
    for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) {
      const frame = (byId.get(at) as ProfileNode).callFrame;
      if (area === '') area = areaOf(frame);
      // Inclusive time of project functions, each counted once per sample even when recursive.
      const frameId = frameKey(frame);
      if (shortUrl(frame.url).startsWith('src/') && !seen.has(frameId)) {
        seen.add(frameId);
        const total = inclusive.get(frameId) ?? { frame, us: 0 };
        total.us += us;
        inclusive.set(frameId, total);
      }
    }
    if (area === '') area = 'native, no JavaScript caller';
    if (area === 'idle') idleUs += us;
    areas.set(area, (areas.get(area) ?? 0) + us);
  }
  const busyUs = sampledUs - idleUs;
  const row = (frame: CallFrame, us: number): ProfileRow => ({ ...describe(frame), ms: us / 1000, percent: busyUs > 0 ? us / busyUs * 100 : 0 });
  const isIdle = (frame: CallFrame): boolean => frame.url === '' && (frame.functionName === '(idle)' || frame.functionName === '(root)');
  return {
    sampledMs: sampledUs / 1000,
    busyMs: busyUs / 1000,
    topSelf: [...self.values()].filter((entry) => !isIdle(entry.frame)).sort((a, b) => b.us - a.us).slice(0, top).map((entry) => ({
      ...row(entry.frame, entry.us),
      callers: [...entry.callers.values()].sort((a, b) => b.us - a.us).slice(0, 3)
        .map((caller) => ({ ...describe(caller.frame), percent: entry.us > 0 ? caller.us / entry.us * 100 : 0 })),
    })),
    topInclusiveProject: [...inclusive.values()].sort((a, b) => b.us - a.us).slice(0, top).map((entry) => row(entry.frame, entry.us)),
    areas: [...areas].filter(([area]) => area !== 'idle').sort((a, b) => b[1] - a[1])
      .map(([area, us]) => ({ name: area, where: '', ms: us / 1000, percent: busyUs > 0 ? us / busyUs * 100 : 0 })),
  };
}

export function formatProfileSummary(summary: ProfileSummary): string {
  const lines: string[] = [];
  lines.push(`sampled ${summary.sampledMs.toFixed(0)} ms of the main thread, busy ${summary.busyMs.toFixed(0)} ms (${(summary.busyMs / Math.max(1, summary.sampledMs) * 100).toFixed(0)} %); percentages are of busy time`);
  const table = (title: string, rows: ProfileRow[]): void => {
    lines.push('', title);
    for (const [i, entry] of rows.entries()) {
      lines.push(`  ${String(i + 1).padStart(2)}. ${entry.percent.toFixed(1).padStart(5)} %  ${entry.ms.toFixed(0).padStart(6)} ms  ${entry.name}${entry.where === '' ? '' : `  ${entry.where}`}`);
      if (entry.callers !== undefined && entry.callers.length > 0) {
        lines.push(`${' '.repeat(27)}called from ${entry.callers.map((caller) => `${caller.name} (${caller.where}) ${caller.percent.toFixed(0)} %`).join(', ')}`);
      }
    }
  };
  table('Top self time:', summary.topSelf);
  table('Self time by area (native code counted for its JavaScript caller):', summary.areas);
  table('Project functions by inclusive time:', summary.topInclusiveProject);
  return lines.join('\n');
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { values, positionals } = parseArgs({ allowPositionals: true, options: {
    from: { type: 'string' }, to: { type: 'string' }, top: { type: 'string', default: '10' },
  } });
  if (positionals.length !== 1) {
    console.error('Usage: profile-summary.ts FILE.cpuprofile [--from US --to US] [--top N]');
    process.exit(2);
  }
  const summary = summarizeProfile(positionals[0] as string, {
    ...(values.from === undefined ? {} : { fromUs: Number(values.from) }),
    ...(values.to === undefined ? {} : { toUs: Number(values.to) }),
    top: Number(values.top),
  });
  console.log(formatProfileSummary(summary));
}
