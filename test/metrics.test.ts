// /metrics on real processes: every server and the manager answer in Prometheus text format that a
// Prometheus text parser (parse-prometheus-text-format) reads, with help texts and conventional
// names, and the metrics move as they should under load — write counts by the number of writes,
// commitSeq to the last write, the fsync histogram and group commits with the log, errors by
// code, lags back to zero — and after kill -9 of the main, the manager counts the failover.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, describe, it } from 'node:test';
import { parsePrometheus, requestCounters } from '../src/dashboard/prometheus.ts';
import { http, TestCluster, waitFor, type ServerInfo } from './harness.ts';

/** One metric family as parse-prometheus-text-format returns it (values are strings). */
interface Family {
  name: string;
  help: string;
  type: 'COUNTER' | 'GAUGE' | 'HISTOGRAM' | 'SUMMARY' | 'UNTYPED';
  metrics: { value?: string; labels?: Record<string, string>; buckets?: Record<string, string>; count?: string; sum?: string }[];
}

const parseText = createRequire(import.meta.url)('parse-prometheus-text-format') as (text: string) => Family[];

interface Scrape {
  text: string;
  families: Map<string, Family>;
}

async function scrape(url: string): Promise<Scrape> {
  const result = await http(`${url}/metrics`, { timeoutMs: 3000 });
  assert.equal(result.status, 200, `GET ${url}/metrics answered ${result.status}: ${result.text.slice(0, 200)}`);
  assert.match(result.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  // The parser throws on any line that is not valid exposition format.
  const families = new Map(parseText(result.text).map((family) => [family.name, family]));
  return { text: result.text, families };
}

function family(scraped: Scrape, name: string): Family {
  const found = scraped.families.get(name);
  assert.ok(found !== undefined, `the exposition has no ${name}`);
  return found;
}

/** Sum of a counter's or gauge's samples whose labels include `labels`. */
function value(scraped: Scrape, name: string, labels: Record<string, string> = {}): number {
  const found = family(scraped, name);
  assert.ok(found.type === 'COUNTER' || found.type === 'GAUGE', `${name} is a ${found.type}`);
  let total = 0;
  for (const sample of found.metrics) {
    if (Object.entries(labels).every(([key, wanted]) => sample.labels?.[key] === wanted)) total += Number(sample.value);
  }
  return total;
}

/** Samples of a labelled gauge, by the value of one label. */
function byLabel(scraped: Scrape, name: string, label: string): Map<string, number> {
  return new Map(family(scraped, name).metrics.map((sample) => [sample.labels?.[label] ?? '', Number(sample.value)]));
}

/** Observations of an unlabelled histogram (the parser reads those whole). */
function histogramCount(scraped: Scrape, name: string): { count: number; sum: number } {
  const found = family(scraped, name);
  assert.equal(found.type, 'HISTOGRAM');
  const only = found.metrics[0];
  return { count: Number(only?.count ?? 0), sum: Number(only?.sum ?? 0) };
}

/** Every Mainstay family: a help text, and a name in the conventions (units last, counters in _total). */
function checkConventions(scraped: Scrape): void {
  const ours = [...scraped.families.values()].filter((found) => found.name.startsWith('mainstay_'));
  assert.ok(ours.length > 10, 'the exposition has Mainstay metrics');
  for (const found of ours) {
    assert.match(found.name, /^mainstay_[a-z][a-z0-9_]*$/, `${found.name}: snake case under mainstay_`);
    assert.ok(found.help.length > 10, `${found.name} has a help text`);
    if (found.type === 'COUNTER') assert.match(found.name, /_total$/, `${found.name}: a counter ends in _total`);
    else assert.doesNotMatch(found.name, /_total$/, `${found.name}: only counters end in _total`);
  }
}

const serverMetricNames = [
  'mainstay_requests_total', 'mainstay_request_seconds', 'mainstay_http_responses_total', 'mainstay_errors_total',
  'mainstay_epoch', 'mainstay_role', 'mainstay_is_main', 'mainstay_last_seq', 'mainstay_durable_seq', 'mainstay_commit_seq',
  'mainstay_applied_seq', 'mainstay_apply_lag_entries', 'mainstay_incomplete', 'mainstay_log_fsync_seconds',
  'mainstay_log_group_commit_entries', 'mainstay_log_group_commit_bytes', 'mainstay_log_written_bytes_total',
  'mainstay_role_changes_total', 'mainstay_fences_total', 'mainstay_snapshots_sent_total', 'mainstay_snapshots_installed_total',
  'mainstay_compactions_total', 'mainstay_transport_peers_connected', 'mainstay_transport_peer_connected',
  'mainstay_transport_queued_messages', 'mainstay_transport_dropped_messages_total',
  'process_cpu_user_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds',
];

const managerMetricNames = [
  'mainstay_manager_epoch', 'mainstay_manager_main_present', 'mainstay_manager_failover_in_progress', 'mainstay_manager_ack_quorum',
  'mainstay_manager_servers_reporting', 'mainstay_manager_standbys_in_contact', 'mainstay_manager_configuration_change_pending',
  'mainstay_manager_failovers_total', 'mainstay_manager_fence_quorum_waits_total', 'mainstay_manager_appointments_total',
  'mainstay_manager_failover_seconds', 'mainstay_manager_server_up', 'mainstay_manager_server_lag_entries',
  'mainstay_manager_server_incomplete', 'mainstay_transport_peers_connected', 'process_cpu_user_seconds_total',
];

const clusters: TestCluster[] = [];
after(async () => {
  await Promise.all(clusters.map((cluster) => cluster.close()));
});

describe('/metrics on a real cluster', { timeout: 120_000 }, () => {
  it('exposes the listed metrics on every process, and they move under load and across a failover', async () => {
    const cluster = await TestCluster.start({ servers: 3, ackQuorum: 1 });
    clusters.push(cluster);
    const main = await cluster.waitForMain();
    const standbys = cluster.servers.filter((server) => server.id !== main.id);

    // Every process: parseable, conventional, complete.
    for (const server of cluster.servers) {
      const scraped = await scrape(server.url);
      checkConventions(scraped);
      for (const name of serverMetricNames) family(scraped, name);
      assert.equal(byLabel(scraped, 'mainstay_server_info', 'server').get(server.id), 1);
    }
    const managerBefore = await scrape(cluster.managerUrl);
    checkConventions(managerBefore);
    for (const name of managerMetricNames) family(managerBefore, name);
    assert.equal(value(managerBefore, 'mainstay_manager_failovers_total', { reason: 'initial' }), 1, 'the first appointment counts as the "initial" failover');
    assert.equal(value(managerBefore, 'mainstay_manager_ack_quorum'), 1);
    assert.equal(value(managerBefore, 'mainstay_manager_configuration_change_pending'), 0);

    // Load: writes to the main, reads of both consistencies, and some errors.
    const before = await scrape(main.url);
    const writes = 40;
    let lastSeq = 0;
    for (let i = 0; i < writes; i++) {
      const result = await http(`${main.url}/v1/kv/metric-${i}`, { method: 'PUT', body: `value-${i}` });
      assert.equal(result.status, 200, result.text);
      lastSeq = (result.json() as { seq: number }).seq;
    }
    for (let i = 0; i < 10; i++) assert.equal((await http(`${main.url}/v1/kv/metric-${i}`)).status, 200);
    for (let i = 0; i < 5; i++) assert.equal((await http(`${main.url}/v1/kv/metric-${i}?consistency=local`)).status, 200);
    assert.equal((await http(`${main.url}/v1/kv/absent-key`)).status, 404);
    const standby = standbys[0] as ServerInfo;
    assert.equal((await http(`${standby.url}/v1/kv/x`, { method: 'PUT', body: 'y' })).status, 421);
    assert.equal((await http(`${main.url}/v1/kv/`, { method: 'PUT', body: 'y' })).status, 400);
    const afterLoad = await scrape(main.url);

    const delta = (name: string, labels: Record<string, string> = {}): number => value(afterLoad, name, labels) - value(before, name, labels);
    assert.equal(delta('mainstay_requests_total', { kind: 'write', outcome: 'ok' }), writes, 'write count grows by the number of writes');
    assert.equal(delta('mainstay_requests_total', { kind: 'read', consistency: 'linearizable', outcome: 'ok' }), 11);
    assert.equal(delta('mainstay_requests_total', { kind: 'read', consistency: 'local', outcome: 'ok' }), 5);
    assert.equal(delta('mainstay_errors_total', { code: 'NOT_FOUND' }), 1);
    assert.equal(delta('mainstay_errors_total', { code: 'BAD_REQUEST' }), 1);
    assert.equal(delta('mainstay_http_responses_total', { route: 'write', status: '200' }), writes);
    assert.equal(delta('mainstay_http_responses_total', { route: 'invalid', status: '400' }), 1);
    assert.ok(value(await scrape(standby.url), 'mainstay_errors_total', { code: 'NOT_MAIN' }) >= 1, 'the standby counts its NOT_MAIN answer');

    // The dashboard's reader of the same text sees the same writes and their latency.
    const dashboardBefore = requestCounters(parsePrometheus(before.text));
    const dashboardAfter = requestCounters(parsePrometheus(afterLoad.text));
    assert.ok(dashboardBefore !== undefined && dashboardAfter !== undefined);
    assert.equal(dashboardAfter.writes - dashboardBefore.writes, writes);
    assert.equal(dashboardAfter.writeLatency.count - dashboardBefore.writeLatency.count, writes);

    // Sequential writes: each one its own group commit, each fsynced.
    const fsyncs = histogramCount(afterLoad, 'mainstay_log_fsync_seconds').count - histogramCount(before, 'mainstay_log_fsync_seconds').count;
    assert.ok(fsyncs >= writes, `the main's fsync histogram grew by ${fsyncs}, at least one per write`);
    const groupEntries = histogramCount(afterLoad, 'mainstay_log_group_commit_entries').sum - histogramCount(before, 'mainstay_log_group_commit_entries').sum;
    assert.ok(groupEntries >= writes, `group commits made ${groupEntries} entries durable`);
    assert.ok(histogramCount(afterLoad, 'mainstay_log_group_commit_bytes').sum > histogramCount(before, 'mainstay_log_group_commit_bytes').sum);
    assert.ok(delta('mainstay_log_written_bytes_total') > 0);

    // Commit progress: the main committed the last write, the standbys follow, every lag goes to zero.
    assert.equal(value(afterLoad, 'mainstay_commit_seq'), value(afterLoad, 'mainstay_last_seq'));
    assert.ok(value(afterLoad, 'mainstay_commit_seq') >= lastSeq, 'commitSeq reached the last write');
    assert.equal(value(afterLoad, 'mainstay_role', { role: 'main' }), 1);
    await waitFor('standbys to apply everything and every lag to be zero', 10_000, async () => {
      const mainNow = await scrape(main.url);
      const mainCommit = value(mainNow, 'mainstay_commit_seq');
      const peerLag = byLabel(mainNow, 'mainstay_peer_lag_entries', 'peer');
      if (standbys.some((server) => peerLag.get(server.id) !== 0)) return undefined;
      for (const server of standbys) {
        const scraped = await scrape(server.url);
        if (value(scraped, 'mainstay_applied_seq') !== mainCommit || value(scraped, 'mainstay_commit_seq') !== mainCommit) return undefined;
        if (byLabel(scraped, 'mainstay_standby_lag_entries', 'main').get(main.id) !== 0) return undefined;
        assert.equal(value(scraped, 'mainstay_role', { role: 'standby' }), 1);
        assert.equal(value(scraped, 'mainstay_transport_peers_connected'), 3, 'a standby connects to the manager and two peers');
      }
      const manager = await scrape(cluster.managerUrl);
      const lag = byLabel(manager, 'mainstay_manager_server_lag_entries', 'server');
      if (standbys.some((server) => lag.get(server.id) !== 0)) return undefined;
      assert.equal(value(manager, 'mainstay_manager_main_present'), 1);
      assert.equal(value(manager, 'mainstay_manager_servers_reporting'), 3);
      assert.equal(value(manager, 'mainstay_manager_standbys_in_contact'), 2);
      return true;
    });
    for (const server of standbys) {
      const scraped = await scrape(server.url);
      assert.ok(histogramCount(scraped, 'mainstay_log_fsync_seconds').count >= writes, `${server.id} fsynced what it received`);
    }

    // kill -9 of the main: the manager counts one failover (not "initial") and one appointment;
    // each surviving server was fenced once; the new main changed role.
    const fencesBefore = new Map<string, number>();
    for (const server of standbys) fencesBefore.set(server.id, value(await scrape(server.url), 'mainstay_fences_total'));
    const epochBefore = value(managerBefore, 'mainstay_manager_epoch');
    await cluster.kill(main);
    const newMain = await cluster.waitForMain(15_000, main.id);
    const managerAfter = await waitFor('the manager to report the new main', 10_000, async () => {
      const scraped = await scrape(cluster.managerUrl);
      return value(scraped, 'mainstay_manager_main_present') === 1 ? scraped : undefined;
    });
    const failovers = (scraped: Scrape, reason?: string): number => value(scraped, 'mainstay_manager_failovers_total', reason === undefined ? {} : { reason });
    assert.equal(failovers(managerAfter) - failovers(managerBefore), 1, 'one failover after kill -9');
    assert.equal(failovers(managerAfter, 'initial'), 1);
    const reasons = family(managerAfter, 'mainstay_manager_failovers_total').metrics
      .filter((sample) => Number(sample.value) > 0 && sample.labels?.reason !== 'initial').map((sample) => sample.labels?.reason);
    assert.ok(reasons.length === 1 && ['main_connection_closed', 'main_silent', 'main_restarted'].includes(reasons[0] as string), `failover reason: ${reasons.join(', ')}`);
    assert.equal(value(managerAfter, 'mainstay_manager_appointments_total') - value(managerBefore, 'mainstay_manager_appointments_total'), 1);
    assert.equal(histogramCount(managerAfter, 'mainstay_manager_failover_seconds').count - histogramCount(managerBefore, 'mainstay_manager_failover_seconds').count, 1);
    assert.equal(value(managerAfter, 'mainstay_manager_epoch'), epochBefore + 1);
    await waitFor('the manager to see the killed main as down', 5000, async () =>
      (byLabel(await scrape(cluster.managerUrl), 'mainstay_manager_server_up', 'server').get(main.id) === 0 ? true : undefined));
    for (const server of standbys) {
      const scraped = await scrape(server.url);
      assert.equal(value(scraped, 'mainstay_fences_total') - (fencesBefore.get(server.id) as number), 1, `${server.id} was fenced once`);
      assert.equal(value(scraped, 'mainstay_epoch'), epochBefore + 1);
    }
    const newMainScrape = await scrape(newMain.url);
    assert.equal(value(newMainScrape, 'mainstay_role_changes_total', { role: 'main' }), 1);
    assert.equal(value(newMainScrape, 'mainstay_is_main'), 1);
  });
});
