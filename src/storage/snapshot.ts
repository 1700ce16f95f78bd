// What a snapshot of the key-value state is on a real server: a position in the log (seq and epoch
// of the last entry it reflects) and the state at that position, read as chunks — every key with
// its value and version, in key order (UTF-8 byte order), then every client-session record, in
// clientId order. It is the core's KvSnapshotReader (what a main streams to a standby), with the
// counts and byte-sized chunks a backup needs. LmdbKvStore produces snapshots (openSnapshot) and
// installs them (installSnapshot); the backup format (backup-format.ts) carries the chunks.

import type { KvSnapshotReader, SnapshotChunk } from '../core/kv.ts';
import type { Epoch, Seq } from '../protocol/types.ts';

/** Where a snapshot stands in the log: the state after applying every entry up to `seq`. */
export interface SnapshotPosition {
  /** The last entry the state reflects (its appliedSeq). */
  seq: Seq;
  /** The epoch of that entry (its appliedEpoch); 0 when seq is 0. */
  epoch: Epoch;
}

/**
 * A consistent point-in-time view of the state, read while the store goes on taking writes.
 * Chunks hold keys or sessions, never both, keys first (in order across chunks too).
 */
export interface KvSnapshot extends KvSnapshotReader, SnapshotPosition {
  readonly seq: Seq;
  readonly epoch: Epoch;
  /** Number of keys in the view. */
  readonly keyCount: number;
  /** Number of client-session records in the view. */
  readonly sessionCount: number;
  /**
   * The whole view as chunks of about `maxBytes` of keys and values each (a chunk holds at least
   * one item, so one large value can exceed it). Each call starts from the beginning, apart from
   * next(), which keeps its own place.
   */
  chunks(maxBytes: number): Generator<SnapshotChunk>;
}

/** Default size of a chunk: big enough to amortize per-chunk costs, small enough to stream. */
export const snapshotChunkBytesDefault = 1024 * 1024;

