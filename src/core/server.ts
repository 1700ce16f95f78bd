// The server's protocol logic (SPEC.md sections 2–6) as a pure, synchronous state machine. It
// plays the main (sequencer, replication sender, commit tracker) or a standby (log, acks), takes
// inputs — ticks, messages, disk completions, client requests — and returns effects as data:
// messages to send, disk operations to run, replies to clients. The shell that drives it runs
// disk operations strictly in order and reports each as done once it and all before are durable.

import { assert } from '../lib/assert.ts';
import type {
  AppendMessage, AppendReply, ClusterMap, EpochEndMessage, HeartbeatMessage, ManagerToServer, Member,
  PeerMessage, ServerMeta, ServerToManager, SnapshotAck, SnapshotChunkMessage, StatusMessage,
} from '../protocol/messages.ts';
import { encodeSnapshotPayload } from '../protocol/codec.ts';
import { crc32 } from '../lib/crc32.ts';
import type {
  ClientRequest, ClientResponse, Epoch, ErrorCode, LogEntry, Seq, ServerId, Session, Write, WriteResult,
} from '../protocol/types.ts';
import { epoch, errorResponse, seq } from '../protocol/types.ts';
import type { PlantedBugs } from './bugs.ts';
import { noBugs } from './bugs.ts';
import type { KvSnapshotReader, KvStore, SnapshotChunk } from './kv.ts';
import { KvState } from './kv.ts';
import { approximateEntryBytes, defaultLogViewOptions, LogView } from './log.ts';

export interface ServerTimings {
  /** How often a server reports status, pings peers, and a main sends heartbeats. */
  heartbeatMs: number;
  /** A peer not heard from for this long is out of contact (status reports it so). */
  contactTimeoutMs: number;
  /** A main resends from a standby's last ack when it made no progress for this long. */
  retransmitMs: number;
  /** A write not committed within this long gets an indefinite TIMEOUT error. */
  writeTimeoutMs: number;
  /** A read not served within this long gets a TIMEOUT error. */
  readTimeoutMs: number;
}

export interface ServerLimits {
  /** Most entries in one append message. */
  batchEntriesMax: number;
  /** Most entries sent to one standby and not yet acknowledged. */
  inflightEntriesMax: number;
  /** Most client requests waiting for commit or for a read round. */
  pendingRequestsMax: number;
  /** Most client sessions remembered by the state machine. */
  sessionsMax: number;
  /** Entries a server keeps in its log below the last one, for standbys that lag; older ones are compacted. */
  logRetentionEntries: number;
  /** Newest log entries kept in memory as objects; older retained ones are kept encoded (see LogView). */
  logHotEntries: number;
  /** Log entries per encoded chunk of the in-memory log. */
  logChunkEntries: number;
  /** Keys (or sessions) per snapshot chunk, where the store does not choose its own chunk size. */
  snapshotChunkItemsMax: number;
  /** Most bytes of keys and values in one snapshot chunk (about: at least one key goes in each). */
  snapshotChunkBytesMax: number;
  /** Snapshot chunks sent to one standby and not yet acknowledged. */
  snapshotChunksInflightMax: number;
  /** Most bytes (roughly) of entries in one replication message; a larger entry goes alone. */
  batchBytesMax: number;
}

export interface ServerConfig {
  id: ServerId;
  timings: ServerTimings;
  limits: ServerLimits;
  bugs?: PlantedBugs;
  /** CRC-32 (IEEE) for snapshot chunks: src/lib/crc32.ts by default; a shell may pass a faster function with the same values. */
  checksum?: (bytes: Uint8Array) => number;
}

export const defaultServerTimings: ServerTimings = {
  heartbeatMs: 100,
  contactTimeoutMs: 500,
  retransmitMs: 400,
  writeTimeoutMs: 5000,
  readTimeoutMs: 5000,
};

export const defaultServerLimits: ServerLimits = {
  batchEntriesMax: 512,
  inflightEntriesMax: 8192,
  pendingRequestsMax: 65536,
  sessionsMax: 100_000,
  logRetentionEntries: 100_000,
  logHotEntries: defaultLogViewOptions.hotEntries,
  logChunkEntries: defaultLogViewOptions.chunkEntries,
  snapshotChunkItemsMax: 4096,
  snapshotChunkBytesMax: 1024 * 1024,
  snapshotChunksInflightMax: 4,
  batchBytesMax: 1024 * 1024,
};

/** What the shell recovered from disk at start. */
export interface RecoveredState {
  meta: ServerMeta;
  /** The log as the recovery scan found it (torn tail cut), consecutive from firstSeq. */
  entries: LogEntry[];
  /** Seq of the first entry the log can hold: 1, or just above a snapshot or compaction. */
  firstSeq?: Seq;
  /** Epoch of the entry at firstSeq − 1 (compacted or in a snapshot); 0 when firstSeq is 1. */
  baseEpoch?: Epoch;
  /** The scan found a checksum failure below the last record and cut the log there. */
  corruptionFound: boolean;
  /** Distinct for every start of this server, at least 1 (0 means unknown); lets the main notice a restart. */
  bootId: number;
  store: KvStore;
}

export type DiskOperation =
  | { type: 'append'; entries: LogEntry[] }
  | { type: 'truncate'; afterSeq: Seq }
  | { type: 'meta'; meta: ServerMeta }
  /**
   * Drop the whole log and start it empty at firstSeq (after installing a snapshot of the state
   * at firstSeq − 1, whose last entry has baseEpoch). Durable only once the state store is.
   */
  | { type: 'resetLog'; firstSeq: Seq; baseEpoch: Epoch };

export type ServerEffect =
  | { kind: 'send'; to: ServerId; message: PeerMessage }
  | { kind: 'sendManager'; message: ServerToManager }
  | { kind: 'disk'; operationId: number; operation: DiskOperation }
  | { kind: 'reply'; requestId: number; response: ClientResponse }
  /**
   * The log below throughSeq + 1 is no longer needed: the shell may remove it from disk once the
   * state store is durable up to throughSeq (whose entry has the given epoch). Not ordered with
   * disk operations and not reported back.
   */
  | { kind: 'compact'; throughSeq: Seq; epoch: Epoch }
  | { kind: 'event'; level: 'info' | 'warn' | 'debug'; code: ServerEventCode; message: string };

/** What a server reports about itself, for logs, counters and the dashboard's timeline. */
export type ServerEventCode =
  | 'becameMain' | 'steppedDown' | 'refusedMain' | 'truncated' | 'repaired' | 'stateRebuilt'
  | 'committedLost' | 'duplicateAbsorbed' | 'staleMessage' | 'switchoverStarted' | 'switchoverAborted'
  | 'snapshotSent' | 'snapshotStarted' | 'snapshotInstalled' | 'fenced';

export interface IncomingRequest {
  requestId: number;
  request: ClientRequest;
}

interface PendingWrite {
  requestId: number;
  seq: Seq;
  deadlineMs: number;
}

interface PendingRead {
  requestId: number;
  request: ClientRequest & { type: 'read' | 'list' };
  /** Serve once appliedSeq reaches this. */
  readSeq: number;
  /** Linearizable reads: the confirmation round that must complete first (0 = none needed). */
  round: number;
  deadlineMs: number;
}

/** The main's view of one standby or learner. */
interface Peer {
  id: ServerId;
  /** Next seq to send. Invariant: matchSeq < nextSeq. */
  nextSeq: Seq;
  /** Highest seq the peer acknowledged durable and matching, in this epoch. Only grows (per boot). */
  matchSeq: Seq;
  generation: number;
  bootId: number;
  /** Highest read round the peer echoed in this epoch. */
  readRound: number;
  lastProgressMs: number;
  lastHeardMs: number;
  /** Where sending last restarted (a rewind or a jump): nothing below it is in flight. */
  windowStart: Seq;
  /** A snapshot being streamed to this peer, one chunk at a time. */
  snapshot: OutgoingSnapshot | undefined;
  /** The peer's appliedSeq as it last said (its state holds every entry up to it). */
  appliedSeq: Seq;
  /** Its log cannot be joined to this one (it ends below this log's start): send a snapshot. */
  needsSnapshot: boolean;
}

interface OutgoingSnapshot {
  id: number;
  reader: KvSnapshotReader;
  /** Chunks sent and not yet acknowledged, in index order (resent until acknowledged). */
  unacked: SnapshotChunkMessage[];
  /** The next chunk's data, read ahead to know whether the one before it is the last. */
  upcoming: SnapshotChunk | undefined;
  nextIndex: number;
  /** The last chunk has been built. */
  built: boolean;
  sentMs: number;
}

interface PendingDiskOperation {
  operationId: number;
  /** Log length once this operation is durable, capped by truncations issued after it. */
  lastSeqAfter: Seq;
  metaEpoch?: Epoch;
  metaIncomplete?: boolean;
}

export class ServerCore {
  readonly id: ServerId;
  private readonly config: ServerConfig;
  private readonly bugs: PlantedBugs;
  private readonly checksum: (bytes: Uint8Array) => number;
  private readonly kv: KvState;
  private readonly log: LogView;
  private readonly bootId: number;

  /** Highest epoch promised (durably once metaDurableEpoch catches up). Only grows. */
  private promisedEpoch: Epoch;
  /** Highest promised epoch known durable. */
  private metaDurableEpoch: Epoch;
  /** The promised epoch found on disk at start: this incarnation is never main at or below it. */
  private readonly bootPromisedEpoch: Epoch;
  /** See ServerMeta.incomplete. */
  private incomplete: boolean;
  private incompleteDurable: boolean;

  /** Highest seq durable on this server's disk and equal to the in-memory log. */
  private durableSeq: Seq;
  private readonly pendingDisk: PendingDiskOperation[] = [];
  private nextOperationId = 1;
  /** Highest seq known committed. Invariant: appliedSeq <= commitSeq. Never goes back. */
  private commitSeq: Seq;

  private map: ClusterMap | undefined;
  private role: 'main' | 'standby' = 'standby';
  /** As a standby: the main of promisedEpoch, once heard from. */
  private mainId: ServerId | undefined;
  /** As a standby: highest seq known to match the current main's log in promisedEpoch. */
  private matchedSeq: Seq = seq(0);
  /** As a standby: the highest ack sent in promisedEpoch (acks are only sent when they grow). */
  private ackSentSeq: Seq = seq(0);
  private readonly contacts = new Map<ServerId, number>();
  private fenceReplyWanted = false;
  /** Counts K = 0 resets of state and log (see dropStateAndLog), so an input can tell one happened. */
  private dropCount = 0;
  /** A snapshot being installed (the state is partial until the last chunk). */
  private installing: { id: number; main: ServerId; epoch: Epoch; next: number } | undefined;
  private snapshotsStarted = 0;
  private refusedMainEpoch: Epoch | undefined;
  /** K as the main of promisedEpoch stated it, until a map arrives. */
  private ackQuorumFromMain: number | undefined;

  // Main state, valid while role === 'main'.
  private epochStartSeq: Seq = seq(0);
  private readonly peers = new Map<ServerId, Peer>();
  private readonly pendingWrites = new Map<number, PendingWrite>();
  private readonly pendingBySeq = new Map<number, number[]>();
  private pendingReads: PendingRead[] = [];
  private readRound = 0;
  private readRoundWanted = false;
  private unsentFrom: Seq = seq(1);
  /**
   * As a main: the configuration (map version) adopted last, and the seq of the last entry when it
   * was adopted. Once an entry at or above that seq commits under the map's rule, every committed
   * entry is on K standbys of that configuration (SPEC.md section 7).
   */
  private configToConfirm: { version: number; atSeq: Seq } = { version: 0, atSeq: seq(0) };
  private configConfirmed = 0;
  /** Planned switchover in progress: writes are refused until `untilMs` or the fence. */
  private switchover: { target: ServerId; untilMs: number; readySent: boolean } | undefined;

  private now = 0;
  private lastTickMs = -Infinity;
  private out: ServerEffect[] = [];

  constructor(config: ServerConfig, recovered: RecoveredState) {
    assertLimits(config);
    assert(Number.isSafeInteger(recovered.bootId) && recovered.bootId >= 1, 'bootId must be a positive integer');
    this.id = config.id;
    this.config = config;
    this.bugs = config.bugs ?? noBugs;
    this.checksum = config.checksum ?? crc32;
    this.bootId = recovered.bootId;
    this.log = new LogView(recovered.entries, recovered.firstSeq ?? seq(1), recovered.baseEpoch ?? epoch(0), {
      ...defaultLogViewOptions, hotEntries: config.limits.logHotEntries, chunkEntries: config.limits.logChunkEntries,
    });
    this.kv = new KvState(recovered.store, { sessionsMax: config.limits.sessionsMax });
    this.promisedEpoch = recovered.meta.promisedEpoch;
    this.metaDurableEpoch = recovered.meta.promisedEpoch;
    this.bootPromisedEpoch = recovered.meta.promisedEpoch;
    this.incomplete = recovered.meta.incomplete;
    this.incompleteDurable = recovered.meta.incomplete;
    this.durableSeq = this.log.lastSeq;
    this.commitSeq = this.kv.appliedSeq;
    // The recovery scan persists 'incomplete' before it cuts a corrupt log: a restart between the
    // two must not forget it.
    assert(!recovered.corruptionFound || recovered.meta.incomplete, 'a corrupt log was cut before its server was durably marked incomplete');
    if (this.incomplete && !this.incompleteDurable) this.persistMeta();
    if (this.kv.appliedSeq > this.log.lastSeq) {
      // The state is ahead of the log: a snapshot install finished in the state but its log reset
      // did not reach the disk, or a corrupt log was cut below the state. The state holds those
      // entries (applied means committed); the log continues after it.
      this.log.reset(seq(this.kv.appliedSeq + 1), this.kv.appliedEpoch);
      this.durableSeq = this.kv.appliedSeq;
      this.disk({ type: 'resetLog', firstSeq: this.log.firstSeq, baseEpoch: this.kv.appliedEpoch }, { lastSeqAfter: this.kv.appliedSeq });
    } else if (this.kv.appliedSeq < this.log.firstSeq - 1) {
      // The state is behind the start of the log (a snapshot install was cut short): the log is
      // of no use until a new snapshot arrives; restart it just above the state.
      this.log.reset(seq(this.kv.appliedSeq + 1), this.kv.appliedEpoch);
      this.durableSeq = this.kv.appliedSeq;
      this.disk({ type: 'resetLog', firstSeq: this.log.firstSeq, baseEpoch: this.kv.appliedEpoch }, { lastSeqAfter: this.kv.appliedSeq });
    }
  }

  // ---------------------------------------------------------------- inputs

  /** A clock reading; the shell calls it often (at least every heartbeatMs). */
  tick(now: number): ServerEffect[] {
    this.begin(now);
    if (now - this.lastTickMs >= this.config.timings.heartbeatMs) {
      this.lastTickMs = now;
      this.reportStatus();
      for (const member of this.map?.members ?? []) {
        if (member.id !== this.id) this.send(member.id, { type: 'ping' });
      }
      if (this.role === 'main') this.mainHeartbeat();
      this.maybeCompact();
      // Say it again every heartbeat until fenced, in case the message was lost.
      if (this.switchover !== undefined) this.switchover.readySent = false;
    }
    this.expireRequests();
    if (this.switchover !== undefined && now >= this.switchover.untilMs) {
      this.event('warn', 'switchoverAborted', `The switchover to ${this.switchover.target} did not complete in time; taking writes again`);
      this.switchover = undefined;
    }
    return this.end();
  }

  onManagerMessage(now: number, message: ManagerToServer): ServerEffect[] {
    this.begin(now);
    if (message.type === 'map') this.onMap(message.map);
    else if (message.type === 'fence') this.onFence(message.epoch);
    else this.onSwitchover(message.target, message.epoch, message.pauseMs);
    return this.end();
  }

  onPeerMessage(now: number, from: ServerId, message: PeerMessage): ServerEffect[] {
    this.begin(now);
    this.contacts.set(from, now);
    switch (message.type) {
      case 'append': this.onAppend(from, message); break;
      case 'heartbeat': this.onHeartbeat(from, message); break;
      case 'epochEnd': this.onEpochEnd(from, message); break;
      case 'appendReply': this.onAppendReply(from, message); break;
      case 'snapshotChunk': this.onSnapshotChunk(from, message); break;
      case 'snapshotAck': this.onSnapshotAck(from, message); break;
      case 'ping': break;
    }
    return this.end();
  }

  /**
   * The connection on which a peer sends to this server closed (its process may be gone): it no
   * longer counts as a contact, and the manager hears so at once rather than at the next
   * heartbeat, so a crashed main is failed over quickly. A hint only: anything heard from the
   * peer afterwards makes it a contact again.
   */
  onPeerLost(now: number, from: ServerId): ServerEffect[] {
    this.begin(now);
    if (this.contacts.delete(from)) this.reportStatus();
    return this.end();
  }

  /** Disk operation `operationId` and every one before it are durable. */
  onDiskDone(now: number, operationId: number): ServerEffect[] {
    this.begin(now);
    while (this.pendingDisk.length > 0 && (this.pendingDisk[0] as PendingDiskOperation).operationId <= operationId) {
      const done = this.pendingDisk.shift() as PendingDiskOperation;
      this.durableSeq = seq(Math.max(this.durableSeq, done.lastSeqAfter));
      if (done.metaEpoch !== undefined) {
        this.metaDurableEpoch = epoch(Math.max(this.metaDurableEpoch, done.metaEpoch));
        this.incompleteDurable = done.metaIncomplete as boolean;
      }
    }
    this.afterDurable();
    return this.end();
  }

  onRequests(now: number, requests: readonly IncomingRequest[]): ServerEffect[] {
    this.begin(now);
    for (const incoming of requests) this.onRequest(incoming);
    return this.end();
  }

  // ---------------------------------------------------------------- observation (for status pages and checkers)

  status(): StatusMessage {
    const standbysInContact = this.role === 'main'
      ? [...this.peers.values()].filter((peer) => this.countsTowardQuorum(peer.id) && this.now - peer.lastHeardMs < this.config.timings.contactTimeoutMs).length
      : 0;
    return {
      type: 'status',
      bootId: this.bootId,
      promisedEpoch: this.promisedEpoch,
      role: this.role,
      lastEpoch: this.log.epochAt(this.durableSeq) ?? epoch(0),
      lastSeq: this.durableSeq,
      commitSeq: this.commitSeq,
      appliedSeq: this.kv.appliedSeq,
      incomplete: this.incomplete,
      contacts: [...this.contacts].filter(([, heard]) => this.now - heard < this.config.timings.contactTimeoutMs).map(([id]) => id),
      standbysInContact,
      mapVersion: this.map?.version ?? 0,
      confirmedMapVersion: this.role === 'main' ? this.confirmedMapVersion() : 0,
    };
  }

  get isMain(): boolean {
    return this.role === 'main';
  }

  get epochAsMain(): Epoch | undefined {
    return this.role === 'main' ? this.promisedEpoch : undefined;
  }

  get committed(): Seq {
    return this.commitSeq;
  }

  get applied(): Seq {
    return this.kv.appliedSeq;
  }

  get promised(): Epoch {
    return this.promisedEpoch;
  }

  get lastSeq(): Seq {
    return this.log.lastSeq;
  }

  /** What the in-memory log holds (LogView.memory): for metrics. */
  get logMemory(): { objectEntries: number; frozenEntries: number; frozenBytes: number } {
    return this.log.memory;
  }

  entryAt(at: number): LogEntry | undefined {
    return this.log.entry(at);
  }

  /** Epoch of the last entry (or of the one the log starts after, when it is empty). */
  get lastEpoch(): Epoch {
    return this.log.lastEpoch;
  }

  get firstSeq(): Seq {
    return this.log.firstSeq;
  }

  get isIncomplete(): boolean {
    return this.incomplete;
  }

  get isInstallingSnapshot(): boolean {
    return this.installing !== undefined;
  }

  get currentMap(): ClusterMap | undefined {
    return this.map;
  }

  // ---------------------------------------------------------------- plumbing

  private begin(now: number): void {
    // Effects left in `out` come from the constructor (recovery) and go out with the first input.
    this.now = Math.max(this.now, now);
  }

  private end(): ServerEffect[] {
    if (this.role === 'main') {
      this.flushNewEntries();
      this.startReadRound();
      this.maybeSwitchoverReady();
    }
    const effects = this.out;
    this.out = [];
    return effects;
  }

  private send(to: ServerId, message: PeerMessage): void {
    this.out.push({ kind: 'send', to, message });
  }

  private reply(requestId: number, response: ClientResponse): void {
    this.out.push({ kind: 'reply', requestId, response });
  }

  private event(level: 'info' | 'warn' | 'debug', code: ServerEventCode, message: string): void {
    this.out.push({ kind: 'event', level, code, message });
  }

  private disk(operation: DiskOperation, pending: Omit<PendingDiskOperation, 'operationId'>): void {
    const operationId = this.nextOperationId++;
    this.pendingDisk.push({ operationId, ...pending });
    this.out.push({ kind: 'disk', operationId, operation });
  }

  private persistMeta(): void {
    const meta: ServerMeta = { promisedEpoch: this.promisedEpoch, incomplete: this.incomplete };
    this.disk({ type: 'meta', meta }, { lastSeqAfter: seq(0), metaEpoch: this.promisedEpoch, metaIncomplete: this.incomplete });
  }

  private appendToDisk(entries: LogEntry[]): void {
    if (entries.length === 0) return;
    this.disk({ type: 'append', entries }, { lastSeqAfter: this.log.lastSeq });
  }

  private truncateLog(after: Seq, reason: string): void {
    if (after < this.commitSeq) {
      // With K >= 1 a committed entry is in every future main's log: cutting one is a bug. With
      // K = 0 (asynchronous replication) a failover may lose committed entries, as documented.
      assert(this.ackQuorum === 0, `truncation at ${after} would cut committed entries (commitSeq ${this.commitSeq})`);
      this.event('warn', 'committedLost', `K = 0: entries up to seq ${this.commitSeq} that committed on a former main were lost in a failover`);
      this.commitSeq = after;
    }
    if (after < this.kv.appliedSeq) {
      const drops = this.dropCount;
      this.stateDiverged(`applied entries after seq ${after} were lost in a failover`);
      // K = 0 with a compacted log: state and log are gone, there is nothing left to cut.
      if (this.dropCount !== drops) return;
    }
    assert(after >= this.log.firstSeq - 1, 'a cut below the log start empties state and log first');
    this.log.truncateAfter(after);
    // Entries above the cut are gone from memory; no earlier durability report may resurrect them.
    this.durableSeq = seq(Math.min(this.durableSeq, after));
    for (const pending of this.pendingDisk) pending.lastSeqAfter = seq(Math.min(pending.lastSeqAfter, after));
    this.matchedSeq = seq(Math.min(this.matchedSeq, after));
    this.disk({ type: 'truncate', afterSeq: after }, { lastSeqAfter: after });
    this.event('info', 'truncated', `Truncated the log after seq ${after}: ${reason}`);
  }

  private members(): Member[] {
    return this.map?.members ?? [];
  }

  private countsTowardQuorum(id: ServerId): boolean {
    return this.members().some((member) => member.id === id && member.role === 'standby');
  }

  private get ackQuorum(): number {
    return this.map?.ackQuorum ?? this.ackQuorumFromMain ?? 1;
  }

  private reportStatus(): void {
    this.out.push({ kind: 'sendManager', message: this.status() });
  }

  // ---------------------------------------------------------------- epochs, maps and fencing

  /** Promise an epoch (persisting it first); a main of an older epoch steps down. */
  private adoptEpoch(newEpoch: Epoch): void {
    if (newEpoch <= this.promisedEpoch) return;
    if (this.role === 'main') this.stepDown(`a higher epoch ${newEpoch} exists`);
    // The main that sent the snapshot being installed can send no more of it.
    if (this.installing !== undefined) this.abandonInstall();
    this.promisedEpoch = newEpoch;
    this.mainId = undefined;
    this.matchedSeq = seq(0);
    this.ackSentSeq = seq(0);
    this.persistMeta();
  }

  private onFence(fenceEpoch: Epoch): void {
    if (fenceEpoch > this.promisedEpoch) {
      this.event('info', 'fenced', `Fenced by the manager for epoch ${fenceEpoch} (was ${this.promisedEpoch})`);
      if (this.role === 'main') this.stepDown(`the manager fenced this server for epoch ${fenceEpoch}, a failover or switchover`);
    }
    this.adoptEpoch(fenceEpoch);
    this.fenceReplyWanted = true;
    this.maybeReplyFence();
  }

  private maybeReplyFence(): void {
    if (!this.fenceReplyWanted || this.metaDurableEpoch < this.promisedEpoch) return;
    this.fenceReplyWanted = false;
    this.out.push({
      kind: 'sendManager',
      message: {
        type: 'fenceReply',
        epoch: this.promisedEpoch,
        lastEpoch: this.log.epochAt(this.durableSeq) ?? epoch(0),
        lastSeq: this.durableSeq,
        incomplete: this.incomplete,
      },
    });
  }

  private onMap(map: ClusterMap): void {
    if (this.map !== undefined && map.version <= this.map.version) return;
    const previous = this.map;
    this.map = map;
    this.adoptEpoch(map.epoch);
    if (map.main !== this.id || map.epoch < this.promisedEpoch) {
      if (map.epoch === this.promisedEpoch && map.main !== null) this.mainId = map.main;
      return;
    }
    if (this.role === 'main') {
      this.syncPeers();
      if (previous !== undefined && !sameConfiguration(previous, map)) {
        // Log the change; once this entry commits under the new rule, the main confirms it.
        const entry: LogEntry = { epoch: this.promisedEpoch, seq: seq(this.log.lastSeq + 1), write: { type: 'configChange', mapVersion: map.version } };
        this.log.append(entry);
        this.configToConfirm = { version: map.version, atSeq: entry.seq };
      } else {
        this.configToConfirm = { version: map.version, atSeq: this.configToConfirm.atSeq };
      }
      return;
    }
    this.maybeBecomeMain();
  }

  private maybeBecomeMain(): void {
    const map = this.map;
    if (map === undefined || map.main !== this.id || map.epoch !== this.promisedEpoch || this.role === 'main') return;
    // A server that restarted is never main in an epoch it already held: it may have lost
    // unsynced entries that its standbys kept (SPEC.md section 2).
    const mayLead = map.epoch > this.bootPromisedEpoch || (this.bugs.has('restartAsMain') && map.epoch === this.bootPromisedEpoch);
    if (!mayLead) {
      this.refuseMain(map.epoch, `Refusing to act as main of epoch ${map.epoch}: this server restarted in that epoch`);
      return;
    }
    if (this.installing !== undefined) {
      this.refuseMain(map.epoch, `Refusing to act as main of epoch ${map.epoch}: a snapshot is being installed`);
      return;
    }
    if (this.incomplete) {
      this.refuseMain(map.epoch, `Refusing to act as main of epoch ${map.epoch}: the log is incomplete`);
      return;
    }
    if (this.metaDurableEpoch < map.epoch) return; // Retried once the promise is durable.
    this.becomeMain();
  }

  /** Say once per epoch why this server will not act as the main it was appointed. */
  private refuseMain(refusedEpoch: Epoch, message: string): void {
    if (this.refusedMainEpoch === refusedEpoch) return;
    this.refusedMainEpoch = refusedEpoch;
    this.event('warn', 'refusedMain', message);
  }

  private becomeMain(): void {
    this.role = 'main';
    this.mainId = this.id;
    this.peers.clear();
    this.syncPeers();
    const start: LogEntry = { epoch: this.promisedEpoch, seq: seq(this.log.lastSeq + 1), write: { type: 'epochStart' } };
    this.epochStartSeq = start.seq;
    this.unsentFrom = start.seq;
    this.configToConfirm = { version: this.map?.version ?? 0, atSeq: start.seq };
    this.configConfirmed = 0;
    this.log.append(start);
    this.event('info', 'becameMain', `Acting as main of epoch ${this.promisedEpoch} from seq ${start.seq}`);
  }

  private syncPeers(): void {
    const ids = new Set(this.members().map((member) => member.id));
    for (const id of ids) {
      if (id === this.id || this.peers.has(id)) continue;
      this.peers.set(id, {
        id, nextSeq: seq(this.log.lastSeq + 1), windowStart: seq(this.log.lastSeq + 1), matchSeq: seq(0), generation: 0, bootId: 0, readRound: 0,
        lastProgressMs: this.now, lastHeardMs: -Infinity, snapshot: undefined, appliedSeq: seq(0), needsSnapshot: false,
      });
    }
    for (const [id, peer] of [...this.peers]) {
      if (ids.has(id)) continue;
      peer.snapshot?.reader.close();
      this.peers.delete(id);
    }
  }

  private stepDown(reason: string): void {
    assert(this.role === 'main', 'only a main steps down');
    this.role = 'standby';
    this.switchover = undefined;
    this.event('warn', 'steppedDown', `Stopped acting as main of epoch ${this.promisedEpoch}: ${reason}`);
    for (const pending of this.pendingWrites.values()) {
      this.reply(pending.requestId, errorResponse('UNAVAILABLE', 'The main lost its role; the write may still commit', false));
    }
    this.pendingWrites.clear();
    this.pendingBySeq.clear();
    for (const read of this.pendingReads) {
      if (read.request.consistency === 'linearizable') this.failRead(read, 'NOT_MAIN', 'This server is no longer the main');
    }
    this.pendingReads = this.pendingReads.filter((read) => read.request.consistency !== 'linearizable');
    for (const peer of this.peers.values()) peer.snapshot?.reader.close();
    this.peers.clear();
  }

  // ---------------------------------------------------------------- planned switchover

  private onSwitchover(target: ServerId, switchoverEpoch: Epoch, pauseMs: number): void {
    if (this.role !== 'main' || switchoverEpoch !== this.promisedEpoch || !this.peers.has(target)) return;
    if (this.switchover?.target !== target) {
      this.event('info', 'switchoverStarted', `Switchover to ${target}: writes paused until it holds the whole log`);
    }
    this.switchover = { target, untilMs: this.now + pauseMs, readySent: false };
    this.sendEntries(this.peers.get(target) as Peer);
  }

  /** Ready once every entry is committed and durable on the target (resent until fenced). */
  private maybeSwitchoverReady(): void {
    const switchover = this.switchover;
    if (switchover === undefined || this.role !== 'main') return;
    const target = this.peers.get(switchover.target);
    if (target === undefined || target.matchSeq < this.log.lastSeq || this.commitSeq < this.log.lastSeq) return;
    if (switchover.readySent) return;
    switchover.readySent = true;
    this.out.push({ kind: 'sendManager', message: { type: 'switchoverReady', epoch: this.promisedEpoch, target: switchover.target, lastSeq: this.log.lastSeq } });
  }

  // ---------------------------------------------------------------- standby side

  /**
   * The common first step of every message a main sends a standby: a stale one is answered
   * 'staleEpoch', a newer epoch is adopted (a main of an older one steps down), and the sender
   * becomes this server's main. False if the message is not for a standby to handle.
   */
  private acceptFromMain(from: ServerId, messageEpoch: Epoch, generation: number, acceptStale = false): boolean {
    if (messageEpoch < this.promisedEpoch && !acceptStale) {
      this.replyToMain(from, generation, 'staleEpoch');
      return false;
    }
    this.adoptEpoch(messageEpoch);
    assert(!(this.role === 'main' && messageEpoch === this.promisedEpoch), `two mains in epoch ${messageEpoch}`);
    if (this.role === 'main') return false; // Only reachable with a planted bug: an older main's message.
    this.mainId = from;
    return true;
  }

  private onAppend(from: ServerId, message: AppendMessage): void {
    if (!this.acceptFromMain(from, message.epoch, message.generation, this.bugs.has('acceptLowerEpochAppend'))) return;
    if (this.installing !== undefined) {
      // The main that sends a snapshot sends no entries meanwhile: a late message, or the main
      // gave up on the snapshot. Say where this server is (nothing yet); if the main is still
      // sending chunks the answer changes nothing, else it starts a new snapshot.
      if (this.installing.main === from && this.installing.epoch === message.epoch) {
        this.replyToMain(from, message.generation, 'mismatch');
        return;
      }
      this.abandonInstall();
    }
    this.ackQuorumFromMain = message.ackQuorum;
    // Logs that hold the same (seq, epoch) hold the same entries up to it. Below this log's start
    // that is checked at its base (the entry at firstSeq - 1), which the append must carry.
    const base = seq(this.log.firstSeq - 1);
    const checkAt = message.prevSeq >= base ? message.prevSeq : base;
    const checkEpoch = message.prevSeq >= base ? message.prevEpoch : message.entries[base - message.prevSeq - 1]?.epoch;
    if (checkAt > this.log.lastSeq || this.log.epochAt(checkAt) !== checkEpoch) {
      this.replyToMain(from, message.generation, 'mismatch');
      return;
    }
    const drops = this.dropCount;
    const appended: LogEntry[] = [];
    for (const entry of message.entries) {
      if (entry.seq < this.log.firstSeq) continue;
      if (entry.seq <= this.log.lastSeq) {
        if (this.log.epochAt(entry.seq) === entry.epoch) continue;
        this.truncateLog(seq(entry.seq - 1), `entry ${entry.seq} conflicts with the main's`);
        if (this.dropCount !== drops) {
          // K = 0: the cut took the state, and with it the compacted log: start over from nothing.
          this.replyToMain(from, message.generation, 'mismatch');
          return;
        }
      }
      this.log.append(entry);
      appended.push(entry);
    }
    this.appendToDisk(appended);
    const matched = message.prevSeq + message.entries.length;
    if (matched > this.matchedSeq) this.matchedSeq = seq(matched);
    const applied = this.kv.appliedSeq;
    if (applied > 0 && applied <= this.matchedSeq && this.log.epochAt(applied) !== undefined && this.log.epochAt(applied) !== this.kv.appliedEpoch) {
      this.stateDiverged(`the main's entry at seq ${applied} is of epoch ${this.log.epochAt(applied)}, the state applied one of epoch ${this.kv.appliedEpoch}`);
      if (this.dropCount !== drops) {
        this.replyToMain(from, message.generation, 'mismatch');
        return;
      }
    }
    this.learnCommit(message.commitSeq);
    if (this.bugs.has('ackBeforeFsync')) this.sendAck(from, message.generation, true);
    else this.sendAck(from, message.generation, false);
  }

  private onHeartbeat(from: ServerId, message: HeartbeatMessage): void {
    if (!this.acceptFromMain(from, message.epoch, 0)) return;
    this.ackQuorumFromMain = message.ackQuorum;
    const applied = this.kv.appliedSeq;
    if (this.ackQuorum === 0 && applied > this.matchedSeq && applied > message.lastSeq) {
      // The state holds entries beyond the main's whole log (lost in a K = 0 failover). Heartbeats
      // may arrive late, so at worst this rebuilds a state that was fine. The log is left alone:
      // its entries up to matchedSeq are the main's, and a divergent tail is cut by the append path.
      this.stateDiverged(`the state applied seq ${applied}, beyond the main's last seq ${message.lastSeq}`);
    }
    this.learnCommit(message.commitSeq);
    this.maybeRepaired(message);
    this.replyToMain(from, 0, undefined, message.readRound);
  }

  private onEpochEnd(from: ServerId, message: EpochEndMessage): void {
    if (message.epoch !== this.promisedEpoch || this.role === 'main') return;
    if (message.answersLastEpoch !== this.log.lastEpoch || message.answersLastSeq !== this.log.lastSeq) {
      this.event('debug', 'staleMessage', `Ignoring a stale epochEnd that answers (${message.answersLastEpoch}, ${message.answersLastSeq})`);
      return;
    }
    // If the log's base is of a later epoch, forEpoch ended below the log's start (only after a
    // K = 0 failover lost entries this server compacted): the cut empties state and log.
    const ownEnd = this.log.startEpoch > message.forEpoch ? this.log.firstSeq - 2 : this.log.endOfEpoch(message.forEpoch);
    const cut = seq(Math.max(0, Math.min(message.endSeq, ownEnd)));
    if (cut < this.log.lastSeq) this.truncateLog(cut, `divergent tail after the end of epoch ${message.forEpoch}`);
    this.replyToMain(from, message.generation, 'mismatch');
  }

  /** Learn the main's commitSeq, trusting it only over entries known to match the main's log. */
  private learnCommit(mainCommitSeq: Seq): void {
    const known = Math.min(mainCommitSeq, this.matchedSeq);
    if (known > this.commitSeq) this.commitSeq = seq(known);
    this.applyCommitted();
  }

  /** An incomplete standby is repaired once it durably holds every entry any main committed. */
  private maybeRepaired(message: HeartbeatMessage): void {
    if (!this.incomplete || message.forBootId !== this.bootId) return;
    if (message.commitSeq < message.epochStartSeq) return;
    if (Math.min(this.durableSeq, this.matchedSeq) < message.commitSeq) return;
    this.incomplete = false;
    this.persistMeta();
    this.event('info', 'repaired', `Log repaired from the main up to seq ${message.commitSeq}; no longer incomplete`);
  }

  /**
   * The state applied entries that the main's log does not have. With K >= 1 that is a bug (they
   * were committed); with K = 0 a failover may lose them: rebuild the state from the log.
   */
  private stateDiverged(reason: string): void {
    assert(this.ackQuorum === 0, `the applied state diverged from the main's log: ${reason}`);
    this.event('warn', 'stateRebuilt', `K = 0: rebuilding the state from the log: ${reason}`);
    this.kv.reset();
    if (this.log.firstSeq > 1) {
      // The log no longer starts at 1, so it cannot rebuild the state: a snapshot will.
      this.dropLog();
      return;
    }
    if (this.commitSeq > this.matchedSeq) this.commitSeq = this.matchedSeq;
    this.applyCommitted();
  }

  /**
   * K = 0 only, with the state already emptied: forget the log too. The server then holds nothing
   * and the main sends it everything, from its log or as a snapshot.
   */
  private dropLog(): void {
    assert(this.ackQuorum === 0 && this.kv.appliedSeq === 0, 'only an emptied K = 0 standby drops its log');
    this.event('warn', 'snapshotStarted', 'K = 0: the log is compacted and cannot rebuild the state; waiting for everything from the main');
    this.dropCount++;
    // Nothing acknowledged before counts now: acknowledge afresh from nothing.
    this.ackSentSeq = seq(0);
    this.log.reset(seq(1), epoch(0));
    this.durableSeq = seq(0);
    for (const pending of this.pendingDisk) pending.lastSeqAfter = seq(0);
    this.disk({ type: 'resetLog', firstSeq: seq(1), baseEpoch: epoch(0) }, { lastSeqAfter: seq(0) });
    this.matchedSeq = seq(0);
    this.commitSeq = seq(0);
  }

  private ackValue(beforeFsync: boolean): Seq {
    return seq(Math.min(beforeFsync ? this.log.lastSeq : this.durableSeq, this.matchedSeq));
  }

  private sendAck(to: ServerId, generation: number, beforeFsync: boolean): void {
    const ack = this.ackValue(beforeFsync);
    if (ack <= this.ackSentSeq) return;
    this.ackSentSeq = ack;
    this.replyToMain(to, generation, undefined, 0, ack);
  }

  private replyToMain(to: ServerId, generation: number, reason: AppendReply['reason'], readRound = 0, ack?: Seq): void {
    const reply: AppendReply = {
      type: 'appendReply',
      epoch: this.promisedEpoch,
      bootId: this.bootId,
      generation,
      ok: reason === undefined,
      ackSeq: ack ?? this.ackValue(this.bugs.has('ackBeforeFsync')),
      lastEpoch: this.log.lastEpoch,
      lastSeq: this.log.lastSeq,
      readRound,
      appliedSeq: this.kv.appliedSeq,
    };
    if (reason !== undefined) reply.reason = reason;
    this.send(to, reply);
  }

  private afterDurable(): void {
    this.maybeReplyFence();
    this.maybeBecomeMain();
    if (this.role === 'main') {
      this.advanceCommit();
    } else {
      if (this.mainId !== undefined) this.sendAck(this.mainId, 0, false);
      this.applyCommitted();
    }
  }

  // ---------------------------------------------------------------- main side: writes

  private onRequest(incoming: IncomingRequest): void {
    const { requestId, request } = incoming;
    if (request.type === 'write') {
      this.onWrite(requestId, request.write, request.session);
      return;
    }
    if (this.pendingReads.length + this.pendingWrites.size >= this.config.limits.pendingRequestsMax) {
      this.reply(requestId, errorResponse('OVERLOADED', 'Too many requests are waiting; retry later', true));
      return;
    }
    const read: PendingRead = { requestId, request, readSeq: 0, round: 0, deadlineMs: this.now + this.config.timings.readTimeoutMs };
    if (request.consistency === 'linearizable') {
      if (this.role !== 'main') {
        this.reply(requestId, this.notMain());
        return;
      }
      read.readSeq = Math.max(this.commitSeq, this.epochStartSeq);
      if (this.ackQuorum > 0 && !this.bugs.has('readWithoutConfirmation')) {
        read.round = this.readRound + 1;
        this.readRoundWanted = true;
      }
    } else {
      read.readSeq = this.bugs.has('localReadIgnoresMinSeq') ? 0 : request.minSeq ?? 0;
    }
    this.pendingReads.push(read);
    this.serveReads();
  }

  private notMain(): ClientResponse {
    const main = this.map?.epoch === this.promisedEpoch && this.map.main !== null ? this.map.main : this.mainId;
    // A server appointed main that does not act as one (it refused, or is still taking over)
    // names no main rather than itself: a client would only come straight back.
    return errorResponse('NOT_MAIN', 'This server is not the main', true, main === this.id ? undefined : main);
  }

  private onWrite(requestId: number, write: Write, session: Session | undefined): void {
    if (this.role !== 'main') {
      this.reply(requestId, this.notMain());
      return;
    }
    if (write.type === 'epochStart' || write.type === 'configChange') {
      this.reply(requestId, errorResponse('BAD_REQUEST', 'Clients cannot write epoch-start or configuration entries', true));
      return;
    }
    if (this.switchover !== undefined) {
      this.reply(requestId, errorResponse('UNAVAILABLE', `A switchover to ${this.switchover.target} is in progress; retry shortly`, true));
      return;
    }
    if (session !== undefined) {
      const recorded = this.kv.sessionResult(session);
      if (recorded !== undefined) {
        this.event('debug', 'duplicateAbsorbed', `Request ${session.clientId}/${session.requestId} was already applied; returning its result`);
        this.reply(requestId, writeResponse(recorded));
        return;
      }
    }
    if (this.pendingReads.length + this.pendingWrites.size >= this.config.limits.pendingRequestsMax) {
      this.reply(requestId, errorResponse('OVERLOADED', 'Too many writes are waiting; retry later', true));
      return;
    }
    if (this.log.lastSeq - this.commitSeq >= this.config.limits.pendingRequestsMax) {
      // Nothing commits (too few standbys answer): do not let the log grow without bound meanwhile.
      this.reply(requestId, errorResponse('UNAVAILABLE', `The main cannot commit: ${this.log.lastSeq - this.commitSeq} entries are waiting for ${this.ackQuorum} standby acknowledgements`, true));
      return;
    }
    const at = seq(this.log.lastSeq + 1);
    // Whole literals, not a field added later (which costs every retained entry a property array).
    const entry: LogEntry = session === undefined ? { epoch: this.promisedEpoch, seq: at, write } : { epoch: this.promisedEpoch, seq: at, write, session };
    this.log.append(entry);
    this.pendingWrites.set(requestId, { requestId, seq: entry.seq, deadlineMs: this.now + this.config.timings.writeTimeoutMs });
    const waiting = this.pendingBySeq.get(entry.seq);
    if (waiting === undefined) this.pendingBySeq.set(entry.seq, [requestId]);
    else waiting.push(requestId);
  }

  /** Log and ship entries appended during this input (one disk write and one message per standby). */
  private flushNewEntries(): void {
    if (this.unsentFrom > this.log.lastSeq) return;
    this.appendToDisk(this.log.slice(this.unsentFrom, this.log.lastSeq));
    this.unsentFrom = seq(this.log.lastSeq + 1);
    for (const peer of this.peers.values()) this.sendEntries(peer);
  }

  /** Send a peer what it misses, within the inflight limit, in batches. */
  private sendEntries(peer: Peer): void {
    const limits = this.config.limits;
    if (peer.snapshot !== undefined) return;
    if (peer.needsSnapshot) {
      // The peer's log ends below this log's start: stream a snapshot of the state instead.
      this.startSnapshot(peer);
      return;
    }
    // A rewind below the log's start probes at its first entry; the answer decides (onMismatch).
    if (peer.nextSeq < this.log.firstSeq) this.restartSending(peer, this.log.firstSeq);
    // In flight: sent since sending last restarted, above the peer's acknowledged seq.
    // (A peer that answers nothing gets nothing more once the window is full, however far the
    // log moves on: its transport would only queue or drop what is sent.)
    const inflight = (): number => peer.nextSeq - Math.max(peer.matchSeq + 1, peer.windowStart);
    // A peer silent for a retransmit interval (down, restarting, cut off) gets one batch, a probe,
    // not a window: its transport would only queue what it cannot take.
    const silent = this.now - peer.lastHeardMs >= this.config.timings.retransmitMs;
    // So does a peer whose position is not confirmed since sending last restarted (Raft's probe):
    // if the logs part below, a window would be encoded and sent for nothing.
    const probing = peer.matchSeq + 1 < peer.windowStart;
    const window = silent || probing ? Math.min(limits.batchEntriesMax, limits.inflightEntriesMax) : limits.inflightEntriesMax;
    // Each call encodes a bounded amount; acknowledgements call again, so the window refills
    // without one long stall of the event loop (the main must keep answering heartbeats).
    let budget = 8 * limits.batchBytesMax;
    while (peer.nextSeq <= this.log.lastSeq && inflight() < window && budget > 0) {
      const prevSeq = seq(peer.nextSeq - 1);
      const prevEpoch = this.log.epochAt(prevSeq);
      assert(prevEpoch !== undefined, 'an append follows an entry the log holds');
      const room = window - inflight();
      const candidates = this.log.slice(peer.nextSeq, Math.min(this.log.lastSeq, peer.nextSeq + Math.min(limits.batchEntriesMax, room) - 1));
      // Bounded in bytes too: large entries (big values, big transactions) go fewer at a time.
      let bytes = 0;
      let count = candidates.length;
      for (let i = 0; i < candidates.length; i++) {
        bytes += approximateEntryBytes(candidates[i] as LogEntry);
        if (bytes > limits.batchBytesMax && i > 0) {
          count = i;
          break;
        }
      }
      budget -= bytes;
      const entries = count === candidates.length ? candidates : candidates.slice(0, count);
      const last = peer.nextSeq + count - 1;
      this.send(peer.id, {
        type: 'append', epoch: this.promisedEpoch, generation: peer.generation, prevSeq, prevEpoch, entries,
        commitSeq: this.commitSeq, ackQuorum: this.ackQuorum,
      });
      peer.nextSeq = seq(last + 1);
    }
  }

  /** Send from `to` on; replies to what was sent before are of an older generation. */
  private restartSending(peer: Peer, to: number): void {
    peer.generation++;
    peer.nextSeq = seq(to);
    peer.windowStart = seq(to);
  }

  private rewind(peer: Peer, to: number): void {
    this.restartSending(peer, Math.max(to, peer.matchSeq + 1));
    peer.lastProgressMs = this.now;
  }

  private onAppendReply(from: ServerId, reply: AppendReply): void {
    if (reply.epoch > this.promisedEpoch) {
      this.adoptEpoch(reply.epoch);
      return;
    }
    const peer = this.peers.get(from);
    if (this.role !== 'main' || peer === undefined || reply.epoch < this.promisedEpoch) return;
    peer.lastHeardMs = this.now;
    peer.appliedSeq = reply.appliedSeq;
    if (reply.bootId !== peer.bootId) {
      // A restarted peer may have lost what it acknowledged before: start counting afresh.
      peer.bootId = reply.bootId;
      peer.needsSnapshot = false;
      peer.matchSeq = seq(0);
      peer.readRound = 0;
      // Resend at least the last entry, so its prev check finds where the logs part.
      this.rewind(peer, Math.min(reply.lastSeq + 1, this.log.lastSeq));
    }
    if (reply.readRound > peer.readRound) peer.readRound = reply.readRound;
    if (reply.ackSeq > peer.matchSeq) {
      peer.matchSeq = reply.ackSeq;
      peer.lastProgressMs = this.now;
      if (peer.nextSeq <= peer.matchSeq) peer.nextSeq = seq(peer.matchSeq + 1);
    }
    if (!reply.ok && reply.reason === 'mismatch' && reply.generation === peer.generation) this.onMismatch(peer, reply);
    this.advanceCommit();
    this.serveReads();
    this.sendEntries(peer);
  }

  /** Find where the peer's log stops matching: directly, or by the epoch-boundary rule. */
  private onMismatch(peer: Peer, reply: AppendReply): void {
    if (reply.lastSeq < peer.matchSeq) {
      // The peer emptied its log since it acknowledged matchSeq (K = 0 lost what it applied, or it
      // installs a snapshot): what it holds now is all that counts, or every rewind would probe
      // above its end forever.
      peer.matchSeq = reply.lastSeq;
    }
    const ownEpoch = this.log.epochAt(reply.lastSeq);
    const joinable = reply.lastSeq >= this.log.firstSeq - 1 && reply.lastSeq <= this.log.lastSeq && ownEpoch === reply.lastEpoch;
    if (!joinable && (reply.lastSeq < this.log.firstSeq - 1 || reply.lastEpoch < this.log.startEpoch)) {
      if (reply.appliedSeq >= this.log.firstSeq - 1 && this.ackQuorum > 0) {
        // Where the logs part may lie below this log's start, but the peer's state holds every
        // entry up to its appliedSeq (committed, so matching; not so with K = 0, where a
        // failover may have lost what it applied): continue from there.
        this.restartSending(peer, reply.appliedSeq + 1);
      } else {
        peer.generation++;
        peer.needsSnapshot = true;
      }
      this.sendEntries(peer);
      return;
    }
    if (reply.lastSeq <= this.log.lastSeq && ownEpoch === reply.lastEpoch) {
      this.rewind(peer, reply.lastSeq + 1);
      return;
    }
    assert(reply.lastSeq >= this.log.firstSeq - 1 || ownEpoch === undefined, 'mismatch reply outside the log view');
    const forEpoch = this.log.largestEpochAtMost(reply.lastEpoch);
    this.restartSending(peer, this.log.lastSeq + 1);
    this.send(peer.id, {
      type: 'epochEnd', epoch: this.promisedEpoch, generation: peer.generation, forEpoch,
      endSeq: this.log.endOfEpoch(forEpoch), answersLastEpoch: reply.lastEpoch, answersLastSeq: reply.lastSeq,
    });
    // Sending holds (nextSeq is past the end) until the standby answers with its cut log.
  }

  /** Commit rule (SPEC.md section 3, step 6). */
  private advanceCommit(): void {
    if (this.role !== 'main') return;
    const quorum = this.bugs.has('commitWithKMinusOneAcks') ? Math.max(0, this.ackQuorum - 1) : this.ackQuorum;
    let candidate: number = this.durableSeq;
    if (quorum > 0) {
      const acks = [...this.peers.values()].filter((peer) => this.countsTowardQuorum(peer.id)).map((peer) => peer.matchSeq).sort((a, b) => b - a);
      if (acks.length < quorum) return;
      candidate = Math.min(candidate, acks[quorum - 1] as number);
    }
    if (candidate <= this.commitSeq) return;
    // Only an entry of this main's epoch commits by counting; older ones commit beneath it.
    if (candidate < this.epochStartSeq && !this.bugs.has('countOldEpochEntry')) return;
    this.commitSeq = seq(candidate);
    this.applyCommitted();
  }

  private confirmedMapVersion(): number {
    if (this.commitSeq >= this.configToConfirm.atSeq && this.configToConfirm.version > this.configConfirmed) {
      this.configConfirmed = this.configToConfirm.version;
    }
    return this.configConfirmed;
  }

  private applyCommitted(): void {
    if (this.installing !== undefined) return;
    // A server applies only what it holds durably, so a restart replays the log, never misses it.
    const upTo = Math.min(this.commitSeq, this.durableSeq);
    if (upTo <= this.kv.appliedSeq) return;
    const from = Math.max(this.kv.appliedSeq + 1, this.log.firstSeq);
    assert(from === this.kv.appliedSeq + 1, 'the log must hold every entry after appliedSeq');
    const outcomes = this.kv.apply(this.log.slice(from, upTo));
    for (const outcome of outcomes) {
      if (outcome.duplicate) this.event('debug', 'duplicateAbsorbed', `Entry ${outcome.seq} retried a request already applied; it changed nothing`);
    }
    if (this.role === 'main') {
      for (const outcome of outcomes) {
        const waiting = this.pendingBySeq.get(outcome.seq);
        if (waiting === undefined) continue;
        this.pendingBySeq.delete(outcome.seq);
        for (const requestId of waiting) {
          if (!this.pendingWrites.delete(requestId)) continue;
          this.reply(requestId, writeResponse(outcome.result));
        }
      }
    }
    this.serveReads();
  }

  // ---------------------------------------------------------------- main side: heartbeats and reads

  private mainHeartbeat(): void {
    this.readRoundWanted = false;
    this.readRound++;
    for (const peer of this.peers.values()) {
      if (peer.matchSeq < peer.nextSeq - 1 && this.now - peer.lastProgressMs >= this.config.timings.retransmitMs) {
        this.rewind(peer, peer.matchSeq + 1);
      }
      this.send(peer.id, {
        type: 'heartbeat', epoch: this.promisedEpoch, commitSeq: this.commitSeq, epochStartSeq: this.epochStartSeq,
        readRound: this.readRound, forBootId: peer.bootId, lastSeq: this.log.lastSeq, ackQuorum: this.ackQuorum,
      });
      const snapshot = peer.snapshot;
      if (snapshot !== undefined && this.now - snapshot.sentMs >= this.config.timings.retransmitMs) {
        // Lost or unanswered: send the unacknowledged chunks again (the standby resumes where it was).
        snapshot.sentMs = this.now;
        for (const chunk of snapshot.unacked) this.send(peer.id, chunk);
      }
      this.sendEntries(peer);
    }
  }

  // ---------------------------------------------------------------- compaction and snapshots

  /** Drop applied entries beyond the retention window, in bulk. */
  private maybeCompact(): void {
    const retention = this.config.limits.logRetentionEntries;
    if (this.log.length <= 2 * retention || this.installing !== undefined) return;
    // Only what a snapshot can show: a standby that needs an entry below the new start gets one.
    // And nothing a snapshot in flight continues from, or the standby would need another one.
    let through = Math.min(this.kv.snapshotSeq, this.durableSeq, this.log.lastSeq - retention);
    for (const peer of this.peers.values()) if (peer.snapshot !== undefined) through = Math.min(through, peer.snapshot.reader.seq);
    if (through < this.log.firstSeq) return;
    const throughEpoch = this.log.epochAt(through) as Epoch;
    this.log.compact(through);
    this.out.push({ kind: 'compact', throughSeq: seq(through), epoch: throughEpoch });
  }

  private startSnapshot(peer: Peer): void {
    const reader = this.kv.snapshotReader();
    if (reader.seq < this.log.firstSeq - 1) {
      // The durable state has not reached the log's start yet: try again at the next heartbeat.
      reader.close();
      return;
    }
    this.snapshotsStarted++;
    const outgoing: OutgoingSnapshot = {
      id: this.snapshotsStarted, reader, unacked: [], nextIndex: 0, built: false, sentMs: this.now,
      upcoming: reader.next(this.config.limits.snapshotChunkItemsMax, this.config.limits.snapshotChunkBytesMax) ?? { items: [], sessions: [] },
    };
    peer.snapshot = outgoing;
    this.event('info', 'snapshotSent', `Sending ${peer.id} a snapshot of the state at seq ${reader.seq}: it needs entries compacted from the log`);
    this.sendSnapshotChunks(peer, outgoing);
  }

  /** Build and send chunks until the window is full or the last one is out. */
  private sendSnapshotChunks(peer: Peer, snapshot: OutgoingSnapshot): void {
    const limits = this.config.limits;
    while (!snapshot.built && snapshot.unacked.length < limits.snapshotChunksInflightMax) {
      const data = snapshot.upcoming as SnapshotChunk;
      snapshot.upcoming = snapshot.reader.next(limits.snapshotChunkItemsMax, limits.snapshotChunkBytesMax);
      const chunk: SnapshotChunkMessage = {
        type: 'snapshotChunk', epoch: this.promisedEpoch, snapshotId: snapshot.id, seq: snapshot.reader.seq, snapshotEpoch: snapshot.reader.epoch,
        index: snapshot.nextIndex, last: snapshot.upcoming === undefined, items: data.items, sessions: data.sessions,
        checksum: this.checksum(encodeSnapshotPayload(data.items, data.sessions)),
      };
      snapshot.nextIndex++;
      snapshot.built = chunk.last;
      snapshot.unacked.push(chunk);
      snapshot.sentMs = this.now;
      this.send(peer.id, chunk);
    }
  }

  private endSnapshot(peer: Peer, snapshot: OutgoingSnapshot): void {
    snapshot.reader.close();
    peer.snapshot = undefined;
  }

  private onSnapshotAck(from: ServerId, ack: SnapshotAck): void {
    if (ack.epoch > this.promisedEpoch) {
      this.adoptEpoch(ack.epoch);
      return;
    }
    const peer = this.peers.get(from);
    const snapshot = peer?.snapshot;
    if (this.role !== 'main' || peer === undefined || snapshot === undefined || ack.epoch !== this.promisedEpoch || ack.snapshotId !== snapshot.id) return;
    peer.lastHeardMs = this.now;
    const snapshotSeq = snapshot.reader.seq;
    if (ack.index === -1) {
      // The standby lost the install (it restarted): start a fresh snapshot.
      this.endSnapshot(peer, snapshot);
      this.sendEntries(peer);
      return;
    }
    if (ack.index === -2) {
      // The decision rested on an old answer: the standby holds the snapshot's entry already.
      this.endSnapshot(peer, snapshot);
      peer.needsSnapshot = false;
      this.restartSending(peer, snapshotSeq + 1);
      this.sendEntries(peer);
      return;
    }
    // Acknowledgements are cumulative: every chunk up to ack.index is installed.
    let lastAcked: SnapshotChunkMessage | undefined;
    while (snapshot.unacked.length > 0 && (snapshot.unacked[0] as SnapshotChunkMessage).index <= ack.index) lastAcked = snapshot.unacked.shift();
    if (lastAcked === undefined) return;
    peer.lastProgressMs = this.now;
    if (lastAcked.last) {
      this.endSnapshot(peer, snapshot);
      peer.needsSnapshot = false;
      this.restartSending(peer, snapshotSeq + 1);
      this.sendEntries(peer);
      return;
    }
    this.sendSnapshotChunks(peer, snapshot);
  }

  private onSnapshotChunk(from: ServerId, message: SnapshotChunkMessage): void {
    if (!this.acceptFromMain(from, message.epoch, 0)) return;
    const ack = (index: number): void => this.send(from, { type: 'snapshotAck', epoch: this.promisedEpoch, snapshotId: message.snapshotId, index });
    if (this.checksum(encodeSnapshotPayload(message.items, message.sessions)) !== message.checksum) {
      this.event('warn', 'staleMessage', `Snapshot chunk ${message.index} from ${from} failed its checksum; waiting for it again`);
      return;
    }
    let installing = this.installing;
    if (installing === undefined || installing.id !== message.snapshotId || installing.main !== from || installing.epoch !== message.epoch) {
      // A late chunk of a snapshot this main has since replaced (ids grow per main and epoch):
      // restarting on it would throw away the newer install, whose acked chunks are not resent.
      if (installing !== undefined && installing.main === from && installing.epoch === message.epoch && message.snapshotId < installing.id) return;
      if (message.index !== 0) {
        ack(-1);
        return;
      }
      // A state already at or past the snapshot needs none (a late chunk of an older snapshot).
      // With K = 0 an applied seq proves nothing: the state may hold entries a failover lost
      // (applied up to the same seq in an older epoch), which only the snapshot replaces.
      if ((message.seq <= this.kv.appliedSeq && this.ackQuorum > 0) || this.holdsEntry(message.seq, message.snapshotEpoch)) {
        // Installing would empty a log that may hold the last committed entry (the main decided
        // from a reply that was out of date): entries after the snapshot's seq will do.
        ack(-2);
        return;
      }
      this.startInstall(`a snapshot at seq ${message.seq} from ${from}`);
      installing = { id: message.snapshotId, main: from, epoch: message.epoch, next: 0 };
      this.installing = installing;
    }
    // Chunks come in order unless the network reorders or loses them: a duplicate is answered
    // with what is installed; one that skips ahead waits for the main to resend the gap.
    if (message.index !== installing.next) {
      if (installing.next > 0) ack(installing.next - 1);
      return;
    }
    this.kv.installChunk({ items: message.items, sessions: message.sessions });
    installing.next++;
    if (message.last) this.finishInstall(message);
    ack(message.index);
  }

  /**
   * Whether this server holds the entry (at, atEpoch): in its log, or applied in its state (with
   * K >= 1 the applied state is committed, so it holds the main's entries up to appliedSeq).
   */
  private holdsEntry(at: Seq, atEpoch: Epoch): boolean {
    if (at <= this.log.lastSeq && at >= this.log.firstSeq - 1) return this.log.epochAt(at) === atEpoch;
    return at <= this.kv.appliedSeq && this.ackQuorum > 0;
  }

  /**
   * Empty state and log before the first chunk, which is safe because this server does not hold
   * the snapshot's entry (holdsEntry): the snapshot's seq S is committed and the sending main
   * holds every entry committed up to now (a later epoch's main would have fenced this server
   * above the chunk's epoch), so a server holding the last committed entry, at or above S, would
   * match the main's log at S. Every entry given up here is therefore either committed and held
   * by every later main, or never committed, and none is the last committed entry, so no
   * failover depends on it. The server reports an empty
   * log (lastSeq 0) until the install is done; if the install is cut short (a crash, another
   * main) it stays empty and catches up from nothing.
   */
  private startInstall(what: string): void {
    this.abandonInstall();
    this.event('info', 'snapshotStarted', `Emptied the state and the log to install ${what}`);
    this.kv.reset();
    this.dropCount++;
    // Nothing acknowledged before counts now: acknowledge afresh from nothing.
    this.ackSentSeq = seq(0);
    this.log.reset(seq(1), epoch(0));
    this.durableSeq = seq(0);
    for (const pending of this.pendingDisk) pending.lastSeqAfter = seq(0);
    this.disk({ type: 'resetLog', firstSeq: seq(1), baseEpoch: epoch(0) }, { lastSeqAfter: seq(0) });
    this.matchedSeq = seq(0);
    this.commitSeq = seq(0);
  }

  /** An install that will not finish (another main took over): forget its partial state. */
  private abandonInstall(): void {
    if (this.installing === undefined) return;
    this.installing = undefined;
    this.kv.reset();
  }

  private finishInstall(message: SnapshotChunkMessage): void {
    this.kv.finishSnapshot(message.seq, message.snapshotEpoch);
    this.installing = undefined;
    this.log.reset(seq(message.seq + 1), message.snapshotEpoch);
    // Nothing older may now count as durable; the log restarts at the snapshot once that is on disk.
    this.durableSeq = seq(0);
    for (const pending of this.pendingDisk) pending.lastSeqAfter = seq(0);
    this.disk({ type: 'resetLog', firstSeq: this.log.firstSeq, baseEpoch: message.snapshotEpoch }, { lastSeqAfter: message.seq });
    this.matchedSeq = message.seq;
    if (this.commitSeq < message.seq) this.commitSeq = message.seq;
    this.event('info', 'snapshotInstalled', `Installed a snapshot of the state at seq ${message.seq}; the log continues from seq ${message.seq + 1}`);
    this.serveReads();
  }

  /** One confirmation round serves every linearizable read that arrived before it was sent. */
  private startReadRound(): void {
    if (!this.readRoundWanted) return;
    this.readRoundWanted = false;
    this.readRound++;
    for (const peer of this.peers.values()) {
      if (!this.countsTowardQuorum(peer.id)) continue;
      this.send(peer.id, {
        type: 'heartbeat', epoch: this.promisedEpoch, commitSeq: this.commitSeq, epochStartSeq: this.epochStartSeq,
        readRound: this.readRound, forBootId: peer.bootId, lastSeq: this.log.lastSeq, ackQuorum: this.ackQuorum,
      });
    }
  }

  private confirmedRound(): number {
    const quorum = this.ackQuorum;
    if (quorum === 0) return Infinity;
    const rounds = [...this.peers.values()].filter((peer) => this.countsTowardQuorum(peer.id)).map((peer) => peer.readRound).sort((a, b) => b - a);
    return rounds.length < quorum ? 0 : rounds[quorum - 1] as number;
  }

  private serveReads(): void {
    if (this.pendingReads.length === 0 || this.installing !== undefined) return;
    const confirmed = this.role === 'main' ? this.confirmedRound() : 0;
    const applied = this.kv.appliedSeq;
    const waiting: PendingRead[] = [];
    for (const read of this.pendingReads) {
      if (read.round > confirmed || read.readSeq > applied) {
        waiting.push(read);
        continue;
      }
      this.reply(read.requestId, this.readNow(read.request));
    }
    this.pendingReads = waiting;
  }

  private readNow(request: ClientRequest & { type: 'read' | 'list' }): ClientResponse {
    const appliedSeq = this.kv.appliedSeq;
    if (request.type === 'list') return { type: 'list', items: this.kv.range(request.prefix, request.limit), appliedSeq };
    const stored = this.kv.get(request.key);
    return { type: 'read', item: stored === undefined ? undefined : { key: request.key, ...stored }, appliedSeq };
  }

  private failRead(read: PendingRead, code: ErrorCode, message: string): void {
    this.reply(read.requestId, errorResponse(code, message, true));
  }

  private expireRequests(): void {
    for (const pending of [...this.pendingWrites.values()]) {
      if (pending.deadlineMs > this.now) continue;
      this.pendingWrites.delete(pending.requestId);
      const waiting = this.pendingBySeq.get(pending.seq)?.filter((requestId) => requestId !== pending.requestId);
      if (waiting === undefined || waiting.length === 0) this.pendingBySeq.delete(pending.seq);
      else this.pendingBySeq.set(pending.seq, waiting);
      this.reply(pending.requestId, errorResponse('TIMEOUT', `The write was not committed within ${this.config.timings.writeTimeoutMs} ms; it may still commit`, false));
    }
    const waiting: PendingRead[] = [];
    for (const read of this.pendingReads) {
      if (read.deadlineMs > this.now) waiting.push(read);
      else this.failRead(read, 'TIMEOUT', `The read could not be served within ${this.config.timings.readTimeoutMs} ms`);
    }
    this.pendingReads = waiting;
  }
}

/** Same standbys, learners and K: what the commit rule and the fence rule depend on. */
function sameConfiguration(a: ClusterMap, b: ClusterMap): boolean {
  if (a.ackQuorum !== b.ackQuorum || a.members.length !== b.members.length) return false;
  return a.members.every((member) => b.members.some((other) => other.id === member.id && other.role === member.role));
}

function writeResponse(result: WriteResult): ClientResponse {
  if (result.status === 'preconditionFailed') {
    return errorResponse('PRECONDITION_FAILED', `The condition failed: the key's version is ${result.version}`, true);
  }
  return { type: 'write', result };
}

function assertLimits(config: ServerConfig): void {
  const { limits, timings } = config;
  assert(limits.batchEntriesMax >= 1, 'batchEntriesMax must be at least 1');
  assert(limits.inflightEntriesMax >= limits.batchEntriesMax, 'inflightEntriesMax must hold at least one batch');
  assert(limits.pendingRequestsMax >= 1, 'pendingRequestsMax must be at least 1');
  assert(timings.heartbeatMs > 0, 'heartbeatMs must be positive');
  assert(timings.contactTimeoutMs > timings.heartbeatMs, 'contactTimeoutMs must exceed heartbeatMs');
  assert(timings.retransmitMs >= timings.heartbeatMs, 'retransmitMs must be at least heartbeatMs');
}
