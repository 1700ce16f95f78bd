// The web dashboard in a real browser: Debian's chromium (apt package `chromium`, never a
// downloaded browser) driven by playwright-core, against a real 3-server cluster on loopback with
// a light write and read load. The page lists the three servers with the main marked; after
// kill -9 of the main it shows the new main and the failover in its timeline; a switchover
// started from the page, through its confirmation dialog, completes and the page shows the new
// main; a change the manager refuses shows the manager's reason. Screenshots of each step go to
// test-output/dashboard/. Every wait is bounded.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { connect, type Client } from '../src/client/client.ts';
import { sleep, TestCluster, waitFor, type ServerInfo } from './harness.ts';

/** Debian's chromium; MAINSTAY_CHROMIUM may name another system browser binary. */
const chromiumPath = process.env.MAINSTAY_CHROMIUM ?? '/usr/bin/chromium';
const screenshotFolder = fileURLToPath(new URL('../test-output/dashboard/', import.meta.url));
/** The bound on every wait for the page or the cluster. */
const waitMs = 15_000;
const stepTimeoutMs = 60_000;
/** The background load: one write and one read per round, bounded in rounds and time. */
const loadRoundsMax = 5000;
const loadMsMax = 120_000;
const loadPauseMs = 20;

let cluster: TestCluster | undefined;
let browser: Browser | undefined;
let page: Page;
let client: Client | undefined;
let loadStopped = false;
let load: Promise<void> = Promise.resolve();
/** Errors the page reported: uncaught exceptions and console errors (a CSP violation is one). */
const pageErrors: string[] = [];

function running(): TestCluster {
  assert.ok(cluster !== undefined, 'the cluster did not start');
  return cluster;
}

async function screenshot(name: string): Promise<void> {
  await page.screenshot({ path: `${screenshotFolder}${name}.png`, fullPage: true, timeout: waitMs });
}

/** Waits until `probe` returns true, polling the page; says what it last saw on timeout. */
async function until(what: string, probe: () => Promise<boolean>): Promise<void> {
  await waitFor(what, waitMs, async () => ((await probe()) ? true : undefined));
}

const text = async (selector: string): Promise<string> => (await page.locator(selector).first().textContent({ timeout: waitMs })) ?? '';
const count = (selector: string): Promise<number> => page.locator(selector).count();

/** The server the page marks as main: the summary and the one table row marked main agree. */
async function pageMain(): Promise<string | undefined> {
  const summary = (await text('#summary-main')).trim();
  const rows = page.locator('#servers-body tr[data-role="main"]');
  if (await rows.count() !== 1) return undefined;
  const row = await rows.getAttribute('data-server', { timeout: waitMs });
  return row === summary ? summary : undefined;
}

/** Writes and reads through the client library until stopped, ignoring failures (failovers happen). */
async function runLoad(managerUrl: string): Promise<void> {
  client = connect({ endpoints: [managerUrl] });
  const deadline = Date.now() + loadMsMax;
  for (let round = 0; round < loadRoundsMax && !loadStopped && Date.now() < deadline; round += 1) {
    try {
      await client.put(`key-${round % 50}`, `value-${round}`);
      await client.get(`key-${round % 50}`);
    } catch {
      // A write during a failover may fail; the load only makes the charts move.
    }
    await sleep(loadPauseMs);
  }
}

describe('web dashboard in chromium', { timeout: 5 * stepTimeoutMs }, () => {
  let firstMain: ServerInfo;
  let secondMain: ServerInfo;

  before(async () => {
    assert.ok(existsSync(chromiumPath), `No browser at ${chromiumPath}: install Debian's package with "apt-get install chromium" (or set MAINSTAY_CHROMIUM)`);
    await mkdir(screenshotFolder, { recursive: true });
    cluster = await TestCluster.start({ servers: 3 });
    load = runLoad(cluster.managerUrl);
    browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: ['--no-sandbox'], timeout: waitMs * 2 });
    page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
    page.setDefaultTimeout(waitMs);
    page.on('pageerror', (error) => pageErrors.push(`uncaught: ${error.message}`));
    page.on('console', (message) => {
      // Chromium logs every 4xx answer as an error: the manager's expected refusal (409) is not one.
      if (message.type() === 'error' && !message.text().includes('status of 409')) pageErrors.push(`console: ${message.text()}`);
    });
  });

  after(async () => {
    loadStopped = true;
    await load;
    client?.close();
    await browser?.close();
    await cluster?.close();
  });

  it('lists the three servers with the main marked', { timeout: stepTimeoutMs }, async () => {
    firstMain = await running().waitForMain(waitMs);
    await page.goto(running().managerUrl, { timeout: waitMs });
    assert.equal(await page.title(), 'Mainstay cluster');
    await until('the page to list three servers, all up', async () => await count('#servers-body tr[data-health="up"]') === 3);
    for (const id of ['s1', 's2', 's3']) assert.equal(await count(`#servers-body tr[data-server="${id}"]`), 1, `the page lists ${id}`);
    await until(`the page to mark ${firstMain.id} as the main`, async () => await pageMain() === firstMain.id);
    await until('the page to show live updates', async () => await page.locator('#connection').getAttribute('data-status') === 'live');
    await until('the page to show two safe failover candidates', async () => await count('#servers-body td[data-candidate="safe"]') === 2);
    await screenshot('01-three-servers');
  });

  it('shows the new main and the failover after kill -9 of the main', { timeout: stepTimeoutMs }, async () => {
    const killedAt = Date.now();
    await running().kill(firstMain);
    secondMain = await running().waitForMain(waitMs, firstMain.id);
    await until(`the page to mark ${secondMain.id} as the new main`, async () => await pageMain() === secondMain.id);
    const failover = page.locator(`#timeline li[data-kind="failover"][data-server="${secondMain.id}"]`);
    await until('a failover entry in the timeline', async () => await failover.count() === 1);
    const entry = (await failover.textContent()) ?? '';
    assert.match(entry, new RegExp(`Failover: ${secondMain.id} is the main of epoch \\d+`));
    assert.match(entry, new RegExp(`Reason: .*${firstMain.id}`), 'the entry gives the reason, naming the old main');
    assert.match(entry, /Took \d+ ms/, 'the entry gives the failover\'s duration');
    await until(`the page to show ${firstMain.id} down`, async () => await count(`#servers-body tr[data-server="${firstMain.id}"][data-health="down"]`) === 1);
    // The charts read the load from the servers' /metrics (a renamed metric would leave them empty).
    await until('the charts to show request rates from /metrics', async () => /write requests \d/.test(await text('#chart-writes-now')) && /read requests \d/.test(await text('#chart-reads-now')));
    await sleep(Math.max(0, 4000 - (Date.now() - killedAt)));
    await screenshot('02-after-failover');
  });

  it('completes a switchover started from the page, through its confirmation dialog', { timeout: stepTimeoutMs }, async () => {
    // The killed server comes back as a standby: with every standby reporting, the fence quorum
    // of the switchover can be met without waiting for a dead one.
    running().restart(firstMain);
    await running().waitForServer(firstMain, waitMs);
    const target = firstMain.id;
    const targetCell = `#servers-body tr[data-server="${target}"] td[data-candidate="safe"]`;
    await until(`the page to show ${target} as a safe candidate again`, async () => await count(targetCell) === 1);

    await page.selectOption('#switchover-target', target, { timeout: waitMs });
    await page.getByRole('button', { name: 'Switch over…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor({ state: 'visible', timeout: waitMs });
    assert.match((await dialog.textContent()) ?? '', new RegExp(`from ${secondMain.id} to ${target}`));
    await screenshot('03-switchover-confirmation');
    await dialog.getByRole('button', { name: 'Switch over' }).click();
    await dialog.waitFor({ state: 'hidden', timeout: waitMs });

    await until('the manager to accept the switchover', async () => (await text('#action-result')).startsWith('Accepted:'));
    assert.match(await text('#action-result'), new RegExp(`Switching the main role from ${secondMain.id} to ${target}`));
    const appointed = await running().waitForMain(waitMs, secondMain.id);
    assert.equal(appointed.id, target, 'the switchover appointed the chosen server');
    await until(`the page to mark ${target} as the main`, async () => await pageMain() === target);
    await until('a switchover entry in the timeline', async () => await count(`#timeline li[data-kind="switchover"][data-server="${target}"]`) >= 2);
    await screenshot('04-after-switchover');
  });

  it('shows the manager\'s refusal of a change it will not make', { timeout: stepTimeoutMs }, async () => {
    await page.fill('#k-value', '5');
    await page.getByRole('button', { name: 'Change K…' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.waitFor({ state: 'visible', timeout: waitMs });
    await dialog.getByRole('button', { name: 'Change K' }).click();
    await until('the refusal to show', async () => await page.locator('#action-result').getAttribute('data-outcome') === 'refused');
    assert.match(await text('#action-result'), /^Refused: K = 5 needs at least 5 standbys/);
    await page.locator('#action-result').scrollIntoViewIfNeeded({ timeout: waitMs });
    await screenshot('05-refusal');
    assert.equal((await running().cluster()).main, firstMain.id, 'a refused change changes nothing');
  });

  it('reported no error in the page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
