// Test-only switches that plant known protocol bugs, so tests can prove the simulator and the
// fault harness catch each of them. Production configurations never set any.

export const plantedBugs = [
  /** The main commits with K − 1 standby acks. */
  'commitWithKMinusOneAcks',
  /** The manager promotes after fewer than S − K + 1 fence replies. */
  'failoverWithFewerReplies',
  /** The manager promotes the replier with the lowest (lastEpoch, lastSeq). */
  'chooseLowestLog',
  /** The commit rule counts entries of older epochs (Raft's "figure 8" loss). */
  'countOldEpochEntry',
  /** A standby acknowledges entries before they are durable. */
  'ackBeforeFsync',
  /** A standby accepts appends from a main of a lower epoch than it promised. */
  'acceptLowerEpochAppend',
  /** A restarted main resumes as main in its old epoch. */
  'restartAsMain',
  /** The main serves linearizable reads without confirming its epoch with K standbys. */
  'readWithoutConfirmation',
  /** A local read is served without waiting until minSeq is applied. */
  'localReadIgnoresMinSeq',
] as const;

export type PlantedBug = (typeof plantedBugs)[number];

export type PlantedBugs = ReadonlySet<PlantedBug>;

export const noBugs: PlantedBugs = new Set();

/**
 * The bugs named in MAINSTAY_PLANTED_BUGS (comma separated), for the fault harness's processes
 * only; an unknown name throws, so a typo cannot silently plant nothing.
 */
export function plantedBugsFromEnv(env: Readonly<Record<string, string | undefined>>): PlantedBugs {
  const text = env.MAINSTAY_PLANTED_BUGS ?? '';
  const names = text.split(',').map((name) => name.trim()).filter((name) => name !== '');
  for (const name of names) {
    if (!(plantedBugs as readonly string[]).includes(name)) throw new Error(`MAINSTAY_PLANTED_BUGS: unknown bug "${name}"; known: ${plantedBugs.join(', ')}`);
  }
  return new Set(names as PlantedBug[]);
}
