// The simulator in CI: a time-bounded swarm of seeds must pass every check; a seed replays to
// the same trace; and each planted protocol bug is caught within a bounded number of seeds,
// which proves the checkers can fail.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PlantedBug } from '../core/bugs.ts';
import { plantedBugs } from '../core/bugs.ts';
import { runSimulation } from './cluster.ts';

const swarmSeeds = Number(process.env.MAINSTAY_SIM_SEEDS ?? 1500);
const swarmBudgetMs = 150_000;
/** Seeds tried per planted bug before the test gives up: each is caught well below (see below). */
const seedsPerBug = 2000;

describe('simulator', () => {
  it(`passes ${swarmSeeds} swarm seeds (stopping early after ${swarmBudgetMs / 1000} s)`, () => {
    const started = performance.now();
    let run = 0;
    let failovers = 0;
    let acknowledged = 0;
    let snapshots = 0;
    let compactions = 0;
    const kinds = new Set<string>();
    for (let seed = 1; seed <= swarmSeeds; seed++) {
      const result = runSimulation({ seed });
      assert.equal(result.failure, undefined, `seed ${seed} failed: ${result.failure} (replay: npm run sim -- --seed ${seed} --verbose)`);
      run++;
      failovers += result.counters.failovers;
      acknowledged += result.counters.writesAcknowledged;
      snapshots += result.counters.snapshotsInstalled;
      compactions += result.counters.compactions;
      kinds.add(`${result.servers}/${result.ackQuorum}`);
      if (performance.now() - started > swarmBudgetMs) break;
    }
    assert.ok(run >= 100, `only ${run} seeds ran within the budget`);
    // The swarm must really exercise the protocol, not pass by doing nothing.
    assert.ok(failovers > run / 2, `too few failovers: ${failovers} in ${run} seeds`);
    assert.ok(acknowledged > run * 20, `too few acknowledged writes: ${acknowledged} in ${run} seeds`);
    assert.ok(snapshots > run / 10 && compactions > run, `too few snapshots (${snapshots}) or compactions (${compactions}) in ${run} seeds`);
    assert.ok(kinds.size >= 8, `too few cluster shapes: ${[...kinds].join(' ')}`);
  });

  it('passes the pinned regression seeds', () => {
    // Each reproduced a bug once (see the commit that added it); they must keep passing.
    const regressionSeeds = [
      4761, // K = 0: a stale heartbeat made a standby cut an entry it had acknowledged
      2784, // a learner (a standby being removed) appointed main; a second removal during the first
      497, // the manager removed the server being removed after it had become the main
      5080, // the simulated manager's state writes completed out of order
      21, // a switchover in a joint configuration with an incomplete server never appointed anyone
      868, // an old main answering a retry after K was raised (checked at commit, not at reply)
      101, // a snapshot decided on an out-of-date reply emptied a log holding the last committed entry
      97, // a state ahead of a log cut by corruption: the log must continue after the state
      430, // after a jump in what is sent, the inflight window counted entries never sent
      7, // K = 0: an append below a compacted log's start was taken without checking its base
      536, // K = 0: the end of an epoch lost in a failover lay below the log's start
      4499, // K = 0: a cut that emptied state and log went on cutting, and the server became main at seq 1
      2675, // an append from the main during an install it had given up was ignored forever
      8167, // checker: a log reset after a corruption cut forgot entries destroyed while durable
      939, // a late chunk of an older snapshot emptied a standby whose state was already past it
      4251, // K = 0: the main kept a standby's old matchSeq after it emptied its log, and probed above its end forever
      9319, // an install whose main was gone kept the only complete server refusing to become main
      24766, 54857, 93388, // K = 0: a state applied up to the main's snapshot seq in a lost epoch refused the snapshot that would replace it
      31582, 28064, 29899, 40270, 47335, 59659, // a late chunk 0 of an older snapshot restarted a newer install whose acknowledged chunks the main no longer sends: stuck at seq 0
      40342, // the same, with the simulated clients of the next commit (the seeds above no longer reach it)
      11929, 24182, 11383, 21072, 26290, 39277, 21140, 47608, // clients cycled between removed servers' stale NOT_MAIN hints (and a server naming itself main)
    ];
    for (const seed of regressionSeeds) {
      const result = runSimulation({ seed });
      assert.equal(result.failure, undefined, `regression seed ${seed}: ${result.failure}`);
    }
  });

  it('replays a seed to the same trace', () => {
    for (const seed of [3, 17, 4242]) {
      const first = runSimulation({ seed });
      const second = runSimulation({ seed });
      assert.equal(first.traceHash, second.traceHash, `seed ${seed} is not deterministic`);
      assert.deepEqual(first.counters, second.counters);
    }
    assert.notEqual(runSimulation({ seed: 3 }).traceHash, runSimulation({ seed: 4 }).traceHash);
  });

  describe('catches every planted bug', () => {
    for (const bug of plantedBugs) {
      it(bug, () => {
        const bugs = new Set<PlantedBug>([bug]);
        for (let seed = 1; seed <= seedsPerBug; seed++) {
          const result = runSimulation({ seed, bugs });
          if (!result.ok) {
            assert.match(result.failure ?? '', /InvariantViolation|AssertionError/);
            return;
          }
        }
        assert.fail(`the planted bug ${bug} went unnoticed for ${seedsPerBug} seeds`);
      });
    }
  });
});
