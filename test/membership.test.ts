// Membership and K changes on a real 3-server cluster (K = 1) on loopback, through the manager's
// HTTP API and the CLI: a fourth server process joins as a learner, catches up and is promoted to
// standby; K is raised to 2 (a joint configuration until the main confirms it); a learner that
// never reports is listed and removed; removing the main and other bad changes are refused with
// clear messages; a standby is removed. Writes keep succeeding throughout and every acknowledged
// write reads back at the end.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { connect, type Client } from '../src/client/client.ts';
import { freePorts, http, TestCluster, waitFor, type ServerInfo } from './harness.ts';

const entry = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

const clusters: TestCluster[] = [];
after(async () => {
  await Promise.all(clusters.map((cluster) => cluster.close()));
});

interface ServerView {
  id: string;
  role: string;
  address: string;
  peerAddress: string;
  health: string;
  status: { acting: string; lastSeq: number; commitSeq: number; appliedSeq: number; incomplete: boolean } | null;
}

interface ClusterView {
  epoch: number;
  main: string | null;
  phase: string;
  ackQuorum: number;
  mapVersion: number;
  configurationChangePending: boolean;
  jointWith: { ackQuorum: number; sinceMapVersion: number; members: { id: string; role: string }[] } | null;
  pendingRemoval: string | null;
  servers: ServerView[];
}

interface ErrorBody {
  error: { code: string; message: string; definite: boolean };
}

interface ServerStatus {
  role: string;
  lastSeq: number;
  commitSeq: number;
  appliedSeq: number;
}

async function view(cluster: TestCluster): Promise<ClusterView> {
  return (await http(`${cluster.managerUrl}/v1/cluster`, { timeoutMs: 2000 })).json() as ClusterView;
}

async function serverStatus(server: ServerInfo): Promise<ServerStatus> {
  return (await http(`${server.url}/v1/status`, { timeoutMs: 2000 })).json() as ServerStatus;
}

/** A JSON request to the manager; `body` is sent as is when it is a string. */
async function manager(cluster: TestCluster, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown; text: string }> {
  const init: RequestInit & { timeoutMs?: number } = { method, timeoutMs: 5000 };
  if (body !== undefined) {
    init.headers = { 'content-type': 'application/json' };
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const result = await http(`${cluster.managerUrl}${path}`, init);
  let parsed: unknown;
  try {
    parsed = result.json();
  } catch {
    parsed = undefined;
  }
  return { status: result.status, body: parsed, text: result.text };
}

/** Run the `mainstay` CLI against the manager; bounded. */
function cli(cluster: TestCluster, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', entry, ...args, '--endpoint', cluster.managerUrl], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString(); });
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString(); });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mainstay ${args.join(' ')} did not finish within 30 s; stdout: ${stdout}; stderr: ${stderr}`));
    }, 30_000);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function assertRefused(result: { status: number; body: unknown; text: string }, pattern: RegExp, what: string): string {
  assert.equal(result.status, 409, `${what}: expected 409, got ${result.status} ${result.text}`);
  const error = (result.body as ErrorBody).error;
  assert.equal(error.code, 'REFUSED', `${what}: ${result.text}`);
  assert.match(error.message, pattern, `${what}: ${result.text}`);
  return error.message;
}

describe('membership and K changes (real processes)', { timeout: 240_000 }, () => {
  it('adds a server, raises K, refuses unsafe changes, removes a learner and a standby, and loses no write', async () => {
    const cluster = await TestCluster.start({ servers: 3, ackQuorum: 1 });
    clusters.push(cluster);
    const client: Client = connect({ endpoints: [cluster.managerUrl, ...cluster.servers.map((server) => server.url)], timeoutMs: 10_000 });
    const acknowledged = new Map<string, string>();
    let lastSeq = 0;
    const write = async (key: string, value: string): Promise<void> => {
      const result = await client.put(key, value);
      acknowledged.set(key, value);
      lastSeq = Math.max(lastSeq, result.seq);
    };
    try {
      for (let i = 0; i < 150; i++) await write(`before-${i % 100}`, `v${i}`);
      const main = await cluster.waitForMain();

      // A fourth server process, pointing at the manager but not a member yet.
      const s4 = await cluster.startExtraServer('s4');
      assert.equal((await view(cluster)).servers.some((server) => server.id === 's4'), false, 's4 is listed before it was added');
      const s4Body = { id: 's4', address: s4.url, peerAddress: `127.0.0.1:${s4.peerPort}` };

      // Bad requests are answered 400 with a message saying what is wrong, and change nothing.
      const badAdds: { name: string; body: unknown; pattern: RegExp }[] = [
        { name: 'not JSON', body: '{"id":', pattern: /parse/i },
        { name: 'an array', body: '[]', pattern: /JSON object/ },
        { name: 'unknown field', body: { ...s4Body, role: 'standby' }, pattern: /Unknown field "role"/ },
        { name: 'missing peerAddress', body: { id: 's4', address: s4.url }, pattern: /Missing field "peerAddress"/ },
        { name: 'missing id', body: { address: s4.url, peerAddress: s4Body.peerAddress }, pattern: /Missing field "id"/ },
        { name: 'id not a string', body: { ...s4Body, id: 4 }, pattern: /"id" must be a string/ },
        { name: 'id with a slash', body: { ...s4Body, id: 's/4' }, pattern: /letters, digits/ },
        { name: 'reserved id', body: { ...s4Body, id: 'manager' }, pattern: /reserved/ },
        { name: 'address not a URL', body: { ...s4Body, address: '127.0.0.1:7104' }, pattern: /"address"/ },
        { name: 'address with a path', body: { ...s4Body, address: `${s4.url}/v1` }, pattern: /no credentials, path/ },
        { name: 'address not http', body: { ...s4Body, address: 'ftp://127.0.0.1:7104' }, pattern: /http or https/ },
        { name: 'peerAddress without port', body: { ...s4Body, peerAddress: '127.0.0.1' }, pattern: /host:port/ },
        { name: 'peerAddress port too large', body: { ...s4Body, peerAddress: '127.0.0.1:70000' }, pattern: /65535/ },
        { name: 'priority not an integer', body: { ...s4Body, priority: 1.5 }, pattern: /"priority" must be a whole number/ },
        { name: 'priority a string', body: { ...s4Body, priority: '2' }, pattern: /"priority" must be a whole number/ },
      ];
      for (const bad of badAdds) {
        const result = await manager(cluster, 'POST', '/v1/servers', bad.body);
        assert.equal(result.status, 400, `${bad.name}: ${result.status} ${result.text}`);
        assert.equal((result.body as ErrorBody).error.code, 'BAD_REQUEST', `${bad.name}: ${result.text}`);
        assert.match((result.body as ErrorBody).error.message, bad.pattern, `${bad.name}: ${result.text}`);
      }
      assert.equal((await manager(cluster, 'GET', '/v1/servers')).status, 405);
      assert.equal((await view(cluster)).servers.length, 3, 'a bad request changed the members');
      // An address another member uses is refused by the core.
      assertRefused(await manager(cluster, 'POST', '/v1/servers', { ...s4Body, address: main.url }), /already uses that address/, 'a clashing address');

      // Add s4: it joins as a learner, catches up, and the manager promotes it to standby.
      const added = await manager(cluster, 'POST', '/v1/servers', { ...s4Body, address: `${s4.url}/`, priority: 0 });
      assert.equal(added.status, 202, added.text);
      assert.equal((added.body as { accepted: boolean }).accepted, true);
      assert.match((added.body as { message: string }).message, /s4/);
      assertRefused(await manager(cluster, 'POST', '/v1/servers', s4Body), /already in the cluster|not complete yet/, 'adding s4 twice');
      const joined = await waitFor('s4 to be promoted to standby', 20_000, async () => {
        const current = await view(cluster);
        const entry = current.servers.find((server) => server.id === 's4');
        return entry?.role === 'standby' ? entry : undefined;
      });
      assert.equal(joined.address, s4.url, 'the address is normalized to scheme://host:port');
      assert.equal(joined.peerAddress, s4Body.peerAddress);
      await waitFor('s4 to apply everything the main committed', 20_000, async () => {
        const [mainStatus, s4Status] = await Promise.all([serverStatus(main), serverStatus(s4)]);
        return s4Status.role === 'standby' && s4Status.appliedSeq >= mainStatus.commitSeq && s4Status.appliedSeq >= lastSeq ? true : undefined;
      });
      const local = await http(`${s4.url}/v1/kv/before-49?consistency=local&minSeq=${lastSeq}`);
      assert.equal(local.status, 200, local.text);
      assert.equal(local.text, 'v149');

      for (let i = 0; i < 50; i++) await write(`with-s4-${i}`, `w${i}`);

      // K: bad values are 400; raising K to 2 is accepted, writes still commit, the change completes.
      for (const bad of [{}, { ackQuorum: '2' }, { ackQuorum: -1 }, { ackQuorum: 1.5 }, { ackQuorum: 2, k: 2 }]) {
        const result = await manager(cluster, 'PUT', '/v1/ack-quorum', bad);
        assert.equal(result.status, 400, `${JSON.stringify(bad)}: ${result.text}`);
        assert.equal((result.body as ErrorBody).error.code, 'BAD_REQUEST');
      }
      assertRefused(await manager(cluster, 'PUT', '/v1/ack-quorum', { ackQuorum: 4 }), /K = 4 needs at least 4 standbys/, 'K larger than the standbys');
      assertRefused(await manager(cluster, 'PUT', '/v1/ack-quorum', { ackQuorum: 1 }), /already 1/, 'K unchanged');
      const raised = await manager(cluster, 'PUT', '/v1/ack-quorum', { ackQuorum: 2 });
      assert.equal(raised.status, 202, raised.text);
      assert.equal((await view(cluster)).ackQuorum, 2);
      for (let i = 0; i < 50; i++) await write(`k2-${i}`, `k${i}`);
      const settled = await waitFor('the K change to be confirmed', 20_000, async () => {
        const current = await view(cluster);
        return !current.configurationChangePending && current.jointWith === null && current.pendingRemoval === null ? current : undefined;
      });
      assert.equal(settled.ackQuorum, 2);
      assert.equal(settled.main, main.id, 'the main changed during the K change');

      // A learner that never reports (nothing listens at its addresses) is listed as one, and
      // removed at once: it counted toward nothing.
      const [deadHttp, deadPeer] = await freePorts(2) as [number, number];
      const ghost = await manager(cluster, 'POST', '/v1/servers', { id: 's5', address: `http://127.0.0.1:${deadHttp}`, peerAddress: `127.0.0.1:${deadPeer}` });
      assert.equal(ghost.status, 202, ghost.text);
      const status = await cli(cluster, ['status']);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /K = 2/);
      assert.match(status.stdout, /s5\s+learner \(catching up\)/);
      assert.match(status.stdout, /s4\s+standby/);
      const removedGhost = await cli(cluster, ['remove-server', 's5']);
      assert.equal(removedGhost.code, 0, removedGhost.stderr);
      assert.match(removedGhost.stdout, /learner s5/);
      await waitFor('s5 to be gone', 10_000, async () => ((await view(cluster)).servers.some((server) => server.id === 's5') ? undefined : true));

      // Refusals through the CLI: exit code 1 and the manager's reason.
      const removeMainCli = await cli(cluster, ['remove-server', main.id]);
      assert.equal(removeMainCli.code, 1, removeMainCli.stdout);
      assert.match(removeMainCli.stderr, new RegExp(`remove-server refused: ${main.id} is the main: switch over to another server first`));
      const tooLargeCli = await cli(cluster, ['set-ack-quorum', '9']);
      assert.equal(tooLargeCli.code, 1, tooLargeCli.stdout);
      assert.match(tooLargeCli.stderr, /set-ack-quorum refused: K = 9 needs at least 9 standbys/);
      const badUsage = await cli(cluster, ['set-ack-quorum', 'two']);
      assert.equal(badUsage.code, 2);
      assert.match(badUsage.stderr, /K must be a whole number/);
      const addCli = await cli(cluster, ['add-server', 's4', '--address', s4.url, '--peer-address', s4Body.peerAddress]);
      assert.equal(addCli.code, 1);
      assert.match(addCli.stderr, /add-server refused: A server s4 is already in the cluster/);

      // Removing the main is refused; so is an unknown server; a bad id is a bad request.
      const refusedMain = assertRefused(await manager(cluster, 'DELETE', `/v1/servers/${main.id}`), /is the main: switch over to another server first/, 'removing the main');
      assert.match(refusedMain, new RegExp(main.id));
      assertRefused(await manager(cluster, 'DELETE', '/v1/servers/nobody'), /No server nobody in the cluster/, 'removing an unknown server');
      assert.equal((await manager(cluster, 'DELETE', '/v1/servers/%zz')).status, 400);
      assert.equal((await manager(cluster, 'GET', `/v1/servers/${main.id}`)).status, 405);

      // Remove an original standby (K = 2 with 3 standbys besides the main: 2 remain).
      const leaving = cluster.servers.find((server) => server.id !== main.id && server.id !== 's4') as ServerInfo;
      const staying = cluster.servers.filter((server) => server.id !== leaving.id).map((server) => server.id).sort();
      const writes = (async (): Promise<void> => {
        for (let i = 0; i < 60; i++) await write(`during-removal-${i}`, `r${i}`);
      })();
      const removed = await manager(cluster, 'DELETE', `/v1/servers/${leaving.id}`);
      assert.equal(removed.status, 202, removed.text);
      // A second change right away: refused while the removal is pending (or, if it already
      // completed, because the server is gone).
      const again = assertRefused(await manager(cluster, 'DELETE', `/v1/servers/${leaving.id}`), /not complete yet|No server/, 'a change while another is pending');
      console.log(`second change right after the removal: ${again}`);
      await writes;
      await waitFor(`${leaving.id} to be gone from the cluster view`, 20_000, async () => {
        const current = await view(cluster);
        return !current.servers.some((server) => server.id === leaving.id) && !current.configurationChangePending ? true : undefined;
      });
      const final = await view(cluster);
      assert.deepEqual(final.servers.map((server) => server.id).sort(), staying);
      assert.equal(final.ackQuorum, 2);
      assert.equal(final.main, main.id);

      // Writes still commit (K = 2 of the 2 remaining standbys), and every acknowledged write reads back.
      for (let i = 0; i < 30; i++) await write(`after-removal-${i}`, `a${i}`);
      for (const [key, value] of acknowledged) {
        const item = await client.get(key);
        assert.equal(item?.text(), value, `acknowledged write ${key} was lost`);
      }
      const onS4 = await http(`${s4.url}/v1/kv/after-removal-29?consistency=local&minSeq=${lastSeq}`);
      assert.equal(onS4.text, 'a29');
      // The removed server is not told: it keeps running on its last map, no longer fed.
      const leftover = await serverStatus(leaving).then(
        (current) => `role ${current.role}, lastSeq ${current.lastSeq}, appliedSeq ${current.appliedSeq} (the main is at ${lastSeq})`,
        (error: unknown) => (error as Error).message);
      console.log(`membership: ${acknowledged.size} acknowledged writes checked; the removed ${leaving.id} reports ${leftover}`);
    } finally {
      client.close();
    }
  });

  it('refuses a K raise the reporting standbys cannot meet, lets a stuck raise be undone, and confirms a raise', async () => {
    const cluster = await TestCluster.start({ servers: 3, ackQuorum: 1 });
    clusters.push(cluster);
    const client: Client = connect({ endpoints: [cluster.managerUrl, ...cluster.servers.map((server) => server.url)], timeoutMs: 10_000 });
    try {
      for (let i = 0; i < 20; i++) await client.put(`p${i}`, `v${i}`);
      const main = await cluster.waitForMain();
      const [down, up] = cluster.servers.filter((server) => server.id !== main.id) as [ServerInfo, ServerInfo];
      // The standby dies right after the raise is accepted: nothing can commit on K = 2 standbys,
      // so the main cannot confirm and the joint configuration stays.
      await cluster.kill(down);
      const raised = await manager(cluster, 'PUT', '/v1/ack-quorum', { ackQuorum: 2 });
      assert.equal(raised.status, 202, JSON.stringify(raised.body));
      const pending = await view(cluster);
      assert.equal(pending.ackQuorum, 2);
      assert.equal(pending.configurationChangePending, true);
      assert.equal(pending.jointWith?.ackQuorum, 1);
      const status = await cli(cluster, ['status']);
      assert.equal(status.code, 0, status.stderr);
      console.log(`mainstay status while the raise is pending:\n${status.stdout}`);
      assert.match(status.stdout, /configuration change pending: K 1 → 2; until the main confirms configuration \d+, failover also follows the previous one \(K = 1/);
      // Another change while this one is pending: refused.
      assertRefused(await manager(cluster, 'DELETE', `/v1/servers/${up.id}`), /previous configuration change is not complete yet/, 'a change while another is pending');
      // Undoing the raise is allowed, and writes commit again on the one standby left.
      const undone = await cli(cluster, ['set-ack-quorum', '1']);
      assert.equal(undone.code, 0, undone.stderr);
      assert.match(undone.stdout, /changed back from 2 to 1/);
      assert.equal((await view(cluster)).configurationChangePending, false);
      const meanwhile = await client.put('while-down', 'yes');
      assert.ok(meanwhile.seq > 20);
      // Now that the manager sees only one standby reporting, a raise to 2 is refused outright.
      await waitFor('the manager to see the standby down', 10_000, async () => ((await view(cluster)).servers.find((server) => server.id === down.id)?.health === 'down' ? true : undefined));
      assertRefused(await manager(cluster, 'PUT', '/v1/ack-quorum', { ackQuorum: 2 }), /needs 2 standbys reporting/, 'a raise the reporting standbys cannot meet');
      // The standby returns and catches up; the raise is accepted and confirmed; writes commit under K = 2.
      cluster.restart(down);
      await cluster.waitForServer(down);
      await waitFor('the manager to see the standby again', 15_000, async () => ((await view(cluster)).servers.find((server) => server.id === down.id)?.health === 'up' ? true : undefined));
      const again = await manager(cluster, 'PUT', '/v1/ack-quorum', { ackQuorum: 2 });
      assert.equal(again.status, 202, JSON.stringify(again.body));
      await waitFor('the K raise to be confirmed', 30_000, async () => ((await view(cluster)).configurationChangePending ? undefined : true));
      const after = await client.put('after-k2', 'yes');
      assert.ok(after.seq > meanwhile.seq);
      for (let i = 0; i < 20; i++) assert.equal((await client.get(`p${i}`))?.text(), `v${i}`);
      assert.equal((await view(cluster)).main, main.id);
    } finally {
      client.close();
    }
  });
});
