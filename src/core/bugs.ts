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
