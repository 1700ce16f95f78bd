// Log compaction and snapshot catch-up on real processes (SPEC.md section 6): servers with a tiny
// retention and small segments compact their logs as writes flow; a brand-new server added to the
// cluster, and a standby that was down while the log moved past it, each catch up from a snapshot
// streamed by the main and then from the log; the data on them equals the main's, key by key;
// and after the main is killed, a failover loses no acknowledged write.

import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { connect, type Client } from '../src/client/client.ts';
import { http, TestCluster, waitFor, type ServerInfo } from './harness.ts';

const clusters: TestCluster[] = [];
after(async () => {
  await Promise.all(clusters.map((cluster) => cluster.close()));
});

interface Item {
  key: string;
  value: string;
  version: number;
}

async function segments(server: ServerInfo): Promise<string[]> {
  return (await readdir(join(server.dataDir, 'log'))).filter((name) => name.endsWith('.seg')).sort();
}

/** Everything a server holds under the prefix, read locally once it has applied minSeq. */
async function localItems(server: ServerInfo, prefix: string, minSeq: number): Promise<Map<string, string>> {
  const result = await http(`${server.url}/v1/kv?prefix=${prefix}&limit=1000&consistency=local&minSeq=${minSeq}`, { timeoutMs: 10_000 });
  assert.equal(result.status, 200, `local list on ${server.id}: ${result.status} ${result.text}`);
  const items = (result.json() as { items: Item[] }).items;
  return new Map(items.map((item) => [item.key, item.value]));
}

async function status(server: ServerInfo): Promise<{ role: string; appliedSeq: number; lastSeq: number }> {
  return (await http(`${server.url}/v1/status`, { timeoutMs: 2000 })).json() as never;
}

describe('log compaction and snapshots (real processes)', { timeout: 240_000 }, () => {
  it('compacts logs, brings a new server and a long-dead standby back by snapshot, and loses nothing on failover', async () => {
    const cluster = await TestCluster.start({
      servers: 3, ackQuorum: 1,
      serverFlags: ['--log-retention-entries', '200', '--segment-bytes-max', '16384', '--snapshot-chunk-items', '50',
        // A dead standby's transport queue holds what was sent before the window filled: keep the
        // window small, so the log moves far past what the queue can bring back.
        '--inflight-entries-max', '256', '--batch-entries-max', '64'],
    });
    clusters.push(cluster);
    const client: Client = connect({ endpoints: cluster.servers.map((server) => server.url), timeoutMs: 10_000 });
    const acknowledged = new Map<string, string>();
    let lastSeq = 0;
    const writeBurst = async (count: number, tag: string): Promise<void> => {
      const writers = Array.from({ length: 8 }, async (_, writer) => {
        for (let i = writer; i < count; i += 8) {
          const key = `k${String(i % 700).padStart(4, '0')}`;
          const value = `${tag}-${i}-${'x'.repeat(64)}`;
          const result = await client.put(key, value);
          acknowledged.set(key, value);
          lastSeq = Math.max(lastSeq, result.seq);
        }
      });
      await Promise.all(writers);
    };
    try {
      const main = await cluster.waitForMain();
      const firstStandby = cluster.servers.find((server) => server.id !== main.id) as ServerInfo;

      // A standby goes down; the log moves far past it and is compacted on every running server.
      await cluster.kill(firstStandby);
      await writeBurst(3000, 'a');
      const mainSegments = await waitFor('the main to compact its log', 20_000, async () => {
        const names = await segments(main);
        return names[0] !== undefined && names[0] !== '00000000000000000001.seg' ? names : undefined;
      });
      const firstKept = Number(mainSegments[0]?.replace('.seg', ''));
      assert.ok(firstKept > 1 && firstKept <= lastSeq - 200 + 1, `the main's log starts at ${firstKept}, last seq ${lastSeq}`);

      // A brand-new server joins as a learner: it needs entries long compacted, so a snapshot.
      const s4 = await cluster.startExtraServer('s4');
      const added = await http(`${cluster.managerUrl}/v1/servers`, {
        method: 'POST', timeoutMs: 5000, headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ id: 's4', address: s4.url, peerAddress: `127.0.0.1:${s4.peerPort}` }),
      });
      assert.equal(added.status, 202, added.text);
      // Writes go on while it catches up.
      await writeBurst(600, 'b');
      await waitFor('s4 to be promoted to standby', 30_000, async () => {
        const view = (await http(`${cluster.managerUrl}/v1/cluster`, { timeoutMs: 2000 })).json() as { servers: { id: string; role: string }[] };
        return view.servers.find((server) => server.id === 's4')?.role === 'standby' ? true : undefined;
      });
      // The log line may reach the pipe a little after the server caught up.
      await waitFor('s4 to log its snapshot install', 5000, async () => (/Installed a snapshot of the state at seq \d+/.test(cluster.logs(s4)) ? true : undefined))
        .catch(() => assert.fail('s4 caught up without a snapshot'));

      // The dead standby comes back far behind the main's log start: a snapshot again.
      cluster.restart(firstStandby);
      await cluster.waitForServer(firstStandby);
      await writeBurst(200, 'c');
      await waitFor(`${firstStandby.id} to catch up`, 30_000, async () => ((await status(firstStandby)).appliedSeq >= lastSeq ? true : undefined));
      await waitFor(`${firstStandby.id} to log its snapshot install`, 5000, async () => (/Installed a snapshot of the state at seq \d+/.test(cluster.logs(firstStandby)) ? true : undefined))
        .catch(() => assert.fail(`${firstStandby.id} caught up without a snapshot`));

      // Key by key, every server holds what the main holds, which is every acknowledged write.
      const expected = await localItems(main, 'k', lastSeq);
      assert.equal(expected.size, acknowledged.size);
      for (const [key, value] of acknowledged) assert.equal(expected.get(key), value, `the main lost ${key}`);
      for (const server of [s4, firstStandby]) {
        const items = await localItems(server, 'k', lastSeq);
        assert.deepEqual(items, expected, `${server.id} differs from the main`);
        const names = await segments(server);
        // The log restarted after the snapshot (it may be empty if no write came after it).
        assert.ok(!names.includes('00000000000000000001.seg'), `${server.id}'s log does not start after its snapshot: ${names.join(',')}`);
      }

      // Kill the main: the new main (whichever it is) holds every acknowledged write.
      await cluster.kill(main);
      const newMain = await cluster.waitForMain(20_000, main.id);
      await writeBurst(100, 'd');
      const after = await localItems(newMain, 'k', lastSeq);
      for (const [key, value] of acknowledged) assert.equal(after.get(key), value, `${key} lost in the failover to ${newMain.id}`);
    } finally {
      client.close();
    }
  });
});
