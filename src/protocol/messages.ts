// Messages between servers (replication) and between servers and the manager (status, cluster
// map, fencing). Pure data; codecs live beside the transports that need them.

import type { Epoch, KeyValue, LogEntry, Seq, ServerId, SessionRecord } from './types.ts';

export type MemberRole = 'standby' | 'learner';

export interface Member {
  id: ServerId;
  /** Standbys count toward K and toward failover; learners receive the log and count toward nothing. */
  role: MemberRole;
  /** Failover tie-break: higher wins among equally complete candidates. */
  priority: number;
  /** Where clients reach this server: its HTTP base URL (opaque to the core; for NOT_MAIN redirects). */
  address: string;
  /** Where servers and the manager reach this server: host:port of its peer (TCP) listener. */
  peerAddress: string;
}

/** What the manager derives and sends to every server (SPEC.md section 2). */
export interface ClusterMap {
  /** Grows on every change the manager announces, so servers ignore stale maps. */
  version: number;
  epoch: Epoch;
  /** The appointed main of `epoch`, or null while none is appointed (during a failover). */
  main: ServerId | null;
  /** Every server in the configuration, the main included. */
  members: Member[];
  ackQuorum: number;
}

/** The durable part of a server's own state besides its log. */
export interface ServerMeta {
  /** Highest epoch promised; appends of lower epochs are refused. Only grows. */
  promisedEpoch: Epoch;
  /**
   * Set when the log failed its checksum below its last entry: the server may miss entries it
   * acknowledged, so it does not count toward a fence quorum until repaired from the main.
   */
  incomplete: boolean;
}

// ---- server → server ----

export interface AppendMessage {
  type: 'append';
  epoch: Epoch;
  /** Bumped by the main each time it rewinds this standby; rejections of older generations are stale. */
  generation: number;
  prevSeq: Seq;
  prevEpoch: Epoch;
  entries: LogEntry[];
  commitSeq: Seq;
  /** K, so a standby knows it before the manager's map reaches it. */
  ackQuorum: number;
}

export interface HeartbeatMessage {
  type: 'heartbeat';
  epoch: Epoch;
  commitSeq: Seq;
  /** The main's epoch-start entry; commitSeq at or above it covers every earlier committed entry. */
  epochStartSeq: Seq;
  /** Confirmation round for linearizable reads; the standby echoes it. */
  readRound: number;
  /** The standby incarnation the main has seen; lets an incomplete standby know this commitSeq is fresh. */
  forBootId: number;
  /** The main's last seq: a standby whose state applied more holds writes the cluster lost (K = 0 only). */
  lastSeq: Seq;
  ackQuorum: number;
}

/** The main tells a standby with a divergent tail where an epoch ends in the main's log. */
export interface EpochEndMessage {
  type: 'epochEnd';
  epoch: Epoch;
  generation: number;
  /** The largest epoch of the main's log that is at most the standby's last epoch. */
  forEpoch: Epoch;
  /** Last seq of the main's log with an epoch at most forEpoch. */
  endSeq: Seq;
  /** The standby's log position this answers; a standby whose log moved on since ignores it. */
  answersLastEpoch: Epoch;
  answersLastSeq: Seq;
}

export interface AppendReply {
  type: 'appendReply';
  /** The standby's promised epoch. */
  epoch: Epoch;
  bootId: number;
  generation: number;
  /** true: ackSeq is durable and matches the main's log. false: see reason. */
  ok: boolean;
  reason?: 'mismatch' | 'staleEpoch';
  /** Highest seq durable on the standby and known to match the main's log in this epoch. */
  ackSeq: Seq;
  lastEpoch: Epoch;
  lastSeq: Seq;
  readRound: number;
  /** The standby's appliedSeq: a main resends from above it rather than send a snapshot it does not need. */
  appliedSeq: Seq;
}

export interface PingMessage {
  type: 'ping';
}

/**
 * One chunk of a snapshot of the main's state, for a standby that needs entries the main's log
 * no longer has. Chunks go one at a time, each acknowledged (so a broken connection resumes at
 * the chunk it lost); the last one ends with the state at (seq, snapshotEpoch).
 */
export interface SnapshotChunkMessage {
  type: 'snapshotChunk';
  epoch: Epoch;
  snapshotId: number;
  seq: Seq;
  snapshotEpoch: Epoch;
  index: number;
  last: boolean;
  items: KeyValue[];
  sessions: SessionRecord[];
  /** CRC-32 of the encoded items and sessions. */
  checksum: number;
}

export interface SnapshotAck {
  type: 'snapshotAck';
  epoch: Epoch;
  snapshotId: number;
  /**
   * The chunk installed last; −1: start again (the standby knows no such snapshot); −2: not needed
   * (the standby's log or state already holds the snapshot's entry: send entries after it).
   */
  index: number;
}

export type PeerMessage = AppendMessage | HeartbeatMessage | EpochEndMessage | AppendReply | PingMessage | SnapshotChunkMessage | SnapshotAck;

// ---- server → manager ----

export type ActingRole = 'main' | 'standby';

export interface StatusMessage {
  type: 'status';
  bootId: number;
  promisedEpoch: Epoch;
  /** What the server does now (a restarted main acts as a standby). */
  role: ActingRole;
  /** Position of the durable log: the "latest and most complete" key. */
  lastEpoch: Epoch;
  lastSeq: Seq;
  commitSeq: Seq;
  appliedSeq: Seq;
  incomplete: boolean;
  /** Servers heard from recently (the main included for a standby). */
  contacts: ServerId[];
  /** For a main: standbys that acknowledged recently; fewer than K means it cannot commit. */
  standbysInContact: number;
  mapVersion: number;
  /**
   * For a main: the newest map version whose configuration (standbys and K) it has confirmed —
   * an entry it appended after adopting that map committed under that map's rule, so every
   * committed entry is on K standbys of that configuration. 0 if none.
   */
  confirmedMapVersion: number;
}

export interface FenceReply {
  type: 'fenceReply';
  epoch: Epoch;
  lastEpoch: Epoch;
  lastSeq: Seq;
  incomplete: boolean;
}

/** The main paused writes for a switchover and `target` holds its whole log, all committed. */
export interface SwitchoverReady {
  type: 'switchoverReady';
  epoch: Epoch;
  target: ServerId;
  lastSeq: Seq;
}

export type ServerToManager = StatusMessage | FenceReply | SwitchoverReady;

// ---- manager → server ----

export interface MapMessage {
  type: 'map';
  map: ClusterMap;
}

export interface FenceMessage {
  type: 'fence';
  epoch: Epoch;
}

/** Planned switchover: the main of `epoch` stops taking writes until `target` has caught up. */
export interface SwitchoverMessage {
  type: 'switchover';
  epoch: Epoch;
  target: ServerId;
  /** How long the main keeps writes paused before it gives up and resumes. */
  pauseMs: number;
}

export type ManagerToServer = MapMessage | FenceMessage | SwitchoverMessage;
