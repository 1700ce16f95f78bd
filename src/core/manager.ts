// The manager's logic (SPEC.md sections 2 and 5) as a pure state machine: it collects every
// server's status, derives and broadcasts the cluster map, detects a failed main from status
// reports counted in clock readings, and runs fenced failover — persist epoch + 1, fence, wait
// for S − K + 1 standby replies (or the old main's), appoint the replier with the latest and most
// complete log. It persists its own state before announcing anything.

import { assert } from '../lib/assert.ts';
import type { ClusterMap, FenceReply, ManagerToServer, Member, StatusMessage, SwitchoverReady } from '../protocol/messages.ts';
import type { Epoch, ServerId } from '../protocol/types.ts';
import { comparePosition, epoch } from '../protocol/types.ts';
import type { PlantedBugs } from './bugs.ts';
import { noBugs } from './bugs.ts';

export type SwitchoverResult =
  | { accepted: true; target: ServerId; message: string }
  | { accepted: false; message: string };

export interface ManagerTimings {
  /** How often the map is re-sent to every server, and fences to those that did not answer. */
  heartbeatMs: number;
  /** A main silent (or unable to commit) this long, with its standbys agreeing, is failed over. */
  failoverAfterMs: number;
  /** A status older than this is not fresh. */
  statusFreshMs: number;
  /**
   * A main whose connection closed and that has said nothing since, while no standby hears it
   * either, is failed over after this long (a crashed process closes its connections at once;
   * a partition or a pause does not, and waits for failoverAfterMs).
   */
  lostFailoverMs: number;
  /** How long a planned switchover may keep writes paused before it is abandoned. */
  switchoverPauseMs: number;
  /** A learner this close to the main's last seq (in entries) is promoted to standby. */
  learnerPromotionLagMax: number;
}

export const defaultManagerTimings: ManagerTimings = {
  heartbeatMs: 100,
  failoverAfterMs: 1000,
  statusFreshMs: 1000,
  lostFailoverMs: 250,
  switchoverPauseMs: 2000,
  learnerPromotionLagMax: 64,
};

/** What the manager persists (fsync) before it announces it. */
export interface ManagerState {
  epoch: Epoch;
  main: ServerId | null;
  /** The main before the failover in progress (fencing phase), if any. */
  previousMain: ServerId | null;
  members: Member[];
  ackQuorum: number;
  mapVersion: number;
  /** 'fencing': epoch was raised and fences sent, no main appointed yet. */
  phase: 'stable' | 'fencing';
  /** Why the failover in progress started. */
  reason: string;
  /** A planned switchover's target: preferred over equally complete candidates. */
  preferredMain: ServerId | null;
  /**
   * The previous configuration, while a change that makes failover less demanding (removing a
   * standby, raising K) is not yet confirmed by the main: failover then needs fence quorums under
   * both rules (a joint configuration, SPEC.md section 7).
   */
  jointWith: { members: Member[]; ackQuorum: number; sinceMapVersion: number } | null;
  /** A standby being removed: demoted to learner under the joint rule, removed once confirmed. */
  pendingRemoval: ServerId | null;
}

export type OperatorResult = { accepted: true; message: string } | { accepted: false; message: string };

export interface NewServer {
  id: ServerId;
  address: string;
  peerAddress: string;
  priority?: number;
}

export type ManagerEffect =
  | { kind: 'send'; to: ServerId; message: ManagerToServer }
  | { kind: 'persist'; persistId: number; state: ManagerState }
  | { kind: 'event'; level: 'info' | 'warn' | 'debug'; message: string; event?: ManagerEvent };

/** Why a failover started, in few values (for counters); `reason` says it in words. */
export type FailoverCause =
  | 'initial' | 'mainRestarted' | 'mainDidNotStart' | 'mainSilent' | 'mainConnectionClosed' | 'mainIsolated' | 'switchover';

export const failoverCauses: readonly FailoverCause[] = [
  'initial', 'mainRestarted', 'mainDidNotStart', 'mainSilent', 'mainConnectionClosed', 'mainIsolated', 'switchover',
];

/** Notable events, for counters, logs and the dashboard's timeline. */
export type ManagerEvent =
  | { type: 'failoverStarted'; epoch: Epoch; cause: FailoverCause; reason: string }
  | { type: 'fenceQuorumWait'; epoch: Epoch; have: number; need: number }
  | { type: 'appointed'; epoch: Epoch; main: ServerId; reason: string; tookMs: number }
  | { type: 'switchoverRequested'; target: ServerId }
  | { type: 'configurationChanged'; change: string; mapVersion: number }
  | { type: 'switchoverAbandoned'; target: ServerId };

export interface ManagerConfig {
  timings: ManagerTimings;
  bugs?: PlantedBugs;
}

interface ServerView {
  status: StatusMessage;
  receivedMs: number;
}

type AfterPersist = 'broadcastMap' | 'sendFences';

export function initialManagerState(members: Member[], ackQuorum: number, initialEpoch = 0): ManagerState {
  assert(members.length >= 1, 'a cluster needs at least one server');
  assert(new Set(members.map((member) => member.id)).size === members.length, 'server ids must be unique');
  const standbys = members.filter((member) => member.role === 'standby').length;
  assert(ackQuorum >= 0 && ackQuorum <= Math.max(0, standbys - 1), `ackQuorum ${ackQuorum} needs at least ${ackQuorum + 1} standby-role servers`);
  return {
    epoch: epoch(initialEpoch), main: null, previousMain: null, members, ackQuorum, mapVersion: 0, phase: 'stable', reason: '',
    preferredMain: null, jointWith: null, pendingRemoval: null,
  };
}

export class ManagerCore {
  private readonly config: ManagerConfig;
  private readonly bugs: PlantedBugs;
  /** The state as last handed to persist (possibly not durable yet). */
  private state: ManagerState;
  private readonly views = new Map<ServerId, ServerView>();
  private readonly fenceReplies = new Map<ServerId, FenceReply>();
  /** Writes in flight: what to do once each is durable, and the state it made durable. */
  private readonly afterPersist = new Map<number, { then: AfterPersist; state: ManagerState }>();
  private nextPersistId = 1;
  /** Map announced last (durable). */
  private announced: ClusterMap | undefined;
  private fencesSent = false;
  private failoverStartedMs = 0;
  private lastBroadcastMs = -Infinity;
  private readonly startedMs: number;
  private appointedMs: number;
  /** bootId the main had when first seen acting as main in this epoch. */
  private mainBootId: number | undefined;
  /** Since when the main has reported fewer than K standbys in contact. */
  private mainIsolatedSinceMs: number | undefined;
  /** When the main's connection to the manager closed, if nothing came from it since. */
  private mainLostMs: number | undefined;
  private lastWaitReport = '';
  /** A planned switchover waiting for the main to be ready (not persisted: the main times out). */
  private switchover: { target: ServerId; untilMs: number } | undefined;
  private now: number;
  private out: ManagerEffect[] = [];

  /** Start from durable state (a fresh initialManagerState or what was persisted before a restart). */
  constructor(config: ManagerConfig, durable: ManagerState, now: number) {
    this.config = config;
    this.bugs = config.bugs ?? noBugs;
    this.state = { ...durable, jointWith: durable.jointWith ?? null, pendingRemoval: durable.pendingRemoval ?? null };
    this.now = now;
    this.startedMs = now;
    this.appointedMs = now;
    if (durable.phase === 'fencing') this.failoverStartedMs = now;
    if (durable.phase === 'stable' && durable.main !== null) this.announced = this.mapOf(durable);
  }

  // ---------------------------------------------------------------- inputs

  tick(now: number): ManagerEffect[] {
    this.begin(now);
    if (this.switchover !== undefined && now >= this.switchover.untilMs) {
      this.event('warn', `The switchover to ${this.switchover.target} was abandoned: the main did not report it ready in time`, { type: 'switchoverAbandoned', target: this.switchover.target });
      this.switchover = undefined;
    }
    if (this.state.phase === 'fencing') {
      if (this.fencesSent && now - this.lastBroadcastMs >= this.config.timings.heartbeatMs) {
        this.lastBroadcastMs = now;
        this.sendFences(false);
      }
      // Waits that end with time (the old main's grace, a switchover's target) are re-checked.
      this.tryAppoint();
      return this.end();
    }
    if (this.announced !== undefined && now - this.lastBroadcastMs >= this.config.timings.heartbeatMs) {
      this.lastBroadcastMs = now;
      this.broadcast();
    }
    this.detectFailure();
    if (this.state.phase === 'stable') this.advanceConfiguration();
    return this.end();
  }

  /** The connection on which a server sends to the manager closed (see ServerCore.onPeerLost). */
  onPeerLost(now: number, from: ServerId): ManagerEffect[] {
    this.begin(now);
    if (from === this.state.main) this.mainLostMs = now;
    return this.end();
  }

  onStatus(now: number, from: ServerId, status: StatusMessage): ManagerEffect[] {
    this.begin(now);
    if (this.member(from) === undefined) return this.end();
    if (from === this.state.main) this.mainLostMs = undefined;
    this.views.set(from, { status, receivedMs: now });
    if (this.announced !== undefined && status.mapVersion < this.announced.version) this.sendMap(from);
    return this.end();
  }

  onFenceReply(now: number, from: ServerId, reply: FenceReply): ManagerEffect[] {
    this.begin(now);
    if (this.state.phase !== 'fencing' || reply.epoch !== this.state.epoch || this.member(from) === undefined) {
      return this.end();
    }
    this.fenceReplies.set(from, reply);
    this.tryAppoint();
    return this.end();
  }

  onPersisted(now: number, persistId: number): ManagerEffect[] {
    this.begin(now);
    const written = this.afterPersist.get(persistId);
    this.afterPersist.delete(persistId);
    if (written === undefined) return this.end();
    // Announce exactly what this write made durable, never a later state still being written.
    const durable = written.state;
    if (written.then === 'sendFences') {
      if (this.state.phase === 'fencing' && this.state.epoch === durable.epoch) {
        this.fencesSent = true;
        this.lastBroadcastMs = now;
        this.sendFences(true);
      }
    } else if (durable.phase === 'stable' && durable.main !== null && durable.mapVersion > (this.announced?.version ?? -1)) {
      this.announced = this.mapOf(durable);
      this.lastBroadcastMs = now;
      this.broadcast();
    }
    return this.end();
  }

  /** The main paused writes and the switchover target holds its whole log: fence and appoint. */
  onSwitchoverReady(now: number, from: ServerId, ready: SwitchoverReady): ManagerEffect[] {
    this.begin(now);
    const switchover = this.switchover;
    if (switchover !== undefined && this.state.phase === 'stable' && from === this.state.main
      && ready.epoch === this.state.epoch && ready.target === switchover.target) {
      this.switchover = undefined;
      this.startFailover('switchover', `planned switchover from ${from} to ${switchover.target}`, switchover.target);
    }
    return this.end();
  }

  /**
   * An operator asks to move the main role, to `target` or to the best candidate. Refused unless
   * the cluster is stable, the main is acting, and the target is a fresh, complete standby.
   */
  requestSwitchover(now: number, target?: ServerId): { result: SwitchoverResult; effects: ManagerEffect[] } {
    this.begin(now);
    const result = this.startSwitchover(target);
    return { result, effects: this.end() };
  }

  private startSwitchover(requested: ServerId | undefined): SwitchoverResult {
    const main = this.state.main;
    if (this.state.phase !== 'stable' || main === null) return { accepted: false, message: 'A failover is in progress; try again when a main is appointed' };
    if (this.switchover !== undefined) return { accepted: false, message: `A switchover to ${this.switchover.target} is already in progress` };
    const mainStatus = this.fresh(main);
    if (mainStatus?.role !== 'main') return { accepted: false, message: `The main ${main} is not reporting as main; a failover will handle it` };
    const eligible = this.standbys(main).filter((member) => {
      const status = this.fresh(member.id);
      return status !== undefined && !status.incomplete;
    });
    let target: Member | undefined;
    if (requested !== undefined) {
      if (requested === main) return { accepted: false, message: `${requested} is already the main` };
      const member = this.member(requested);
      if (member === undefined) return { accepted: false, message: `No server ${requested} in the cluster` };
      if (member.role !== 'standby') return { accepted: false, message: `${requested} is a ${member.role}, not a standby` };
      target = eligible.find((candidate) => candidate.id === requested);
      if (target === undefined) return { accepted: false, message: `${requested} is not reporting, or its log is incomplete` };
    } else {
      target = [...eligible].sort((a, b) => {
        const byLog = comparePosition(this.fresh(b.id) as StatusMessage, this.fresh(a.id) as StatusMessage);
        return byLog !== 0 ? byLog : b.priority - a.priority || (a.id < b.id ? -1 : 1);
      })[0];
      if (target === undefined) return { accepted: false, message: 'No standby is reporting with a complete log' };
    }
    const pauseMs = this.config.timings.switchoverPauseMs;
    this.switchover = { target: target.id, untilMs: this.now + pauseMs };
    this.out.push({ kind: 'send', to: main, message: { type: 'switchover', epoch: this.state.epoch, target: target.id, pauseMs } });
    this.event('info', `Switchover from ${main} to ${target.id} requested: the main pauses writes until ${target.id} has caught up`, { type: 'switchoverRequested', target: target.id });
    return { accepted: true, target: target.id, message: `Switching the main role from ${main} to ${target.id}` };
  }

  // ---------------------------------------------------------------- membership and K

  /** Add a server as a learner; it is promoted to standby once it has caught up. */
  addServer(now: number, server: NewServer): { result: OperatorResult; effects: ManagerEffect[] } {
    this.begin(now);
    const result = this.changeConfiguration(() => {
      if (server.id === 'manager' || server.id.length === 0) return `"${server.id}" cannot be a server id`;
      if (this.member(server.id) !== undefined) return `A server ${server.id} is already in the cluster`;
      const clash = this.state.members.find((member) => member.address === server.address || member.peerAddress === server.peerAddress);
      if (clash !== undefined) return `${clash.id} already uses that address`;
      const member: Member = { id: server.id, role: 'learner', priority: server.priority ?? 0, address: server.address, peerAddress: server.peerAddress };
      this.announceConfiguration({ ...this.state, members: [...this.state.members, member] }, `added ${server.id} as a learner`);
      return undefined;
    });
    return { result, effects: this.end() };
  }

  /** Remove a server. A standby is first demoted to learner under the joint rule. */
  removeServer(now: number, id: ServerId): { result: OperatorResult; effects: ManagerEffect[] } {
    this.begin(now);
    const result = this.changeConfiguration(() => {
      const member = this.member(id);
      if (member === undefined) return `No server ${id} in the cluster`;
      if (id === this.state.main) return `${id} is the main: switch over to another server first`;
      if (member.role === 'learner') {
        this.announceConfiguration({ ...this.state, members: this.state.members.filter((other) => other.id !== id) }, `removed the learner ${id}`);
        return undefined;
      }
      const remaining = this.standbys(this.state.main).filter((other) => other.id !== id).length;
      if (remaining < this.state.ackQuorum) return `Removing ${id} would leave ${remaining} standbys, fewer than K = ${this.state.ackQuorum}: lower K first`;
      const members = this.state.members.map((other) => (other.id === id ? { ...other, role: 'learner' as const } : other));
      this.announceConfiguration({
        ...this.state, members, pendingRemoval: id,
        jointWith: { members: this.state.members, ackQuorum: this.state.ackQuorum, sinceMapVersion: this.state.mapVersion + 1 },
      }, `demoted ${id} to learner; it is removed once the main confirms the new configuration`);
      return undefined;
    });
    return { result, effects: this.end() };
  }

  /** Change K. Raising it is joint until the main confirms every committed entry is on K standbys. */
  setAckQuorum(now: number, ackQuorum: number): { result: OperatorResult; effects: ManagerEffect[] } {
    this.begin(now);
    const joint = this.state.jointWith;
    if (joint !== null && this.state.pendingRemoval === null && ackQuorum === joint.ackQuorum && this.state.phase === 'stable') {
      // Undo a raise not yet confirmed (say a standby went down meanwhile and writes are stuck):
      // the previous configuration was in force all along, so returning to it is safe.
      this.announceConfiguration({ ...this.state, ackQuorum, jointWith: null }, `K changed back from ${this.state.ackQuorum} to ${ackQuorum} before the raise was confirmed`);
      return { result: { accepted: true, message: this.lastChange }, effects: this.end() };
    }
    const result = this.changeConfiguration(() => {
      if (!Number.isInteger(ackQuorum) || ackQuorum < 0) return 'K must be a whole number, 0 or more';
      const standbys = this.standbys(this.state.main).length;
      if (ackQuorum > standbys) return `K = ${ackQuorum} needs at least ${ackQuorum} standbys besides the main; there are ${standbys}`;
      if (ackQuorum === this.state.ackQuorum) return `K is already ${ackQuorum}`;
      const raising = ackQuorum > this.state.ackQuorum;
      const reporting = this.standbys(this.state.main).filter((member) => this.fresh(member.id)?.incomplete === false).length;
      if (raising && ackQuorum > reporting) return `K = ${ackQuorum} needs ${ackQuorum} standbys reporting with complete logs; ${reporting} are: writes would stop`;
      this.announceConfiguration({
        ...this.state, ackQuorum,
        jointWith: raising ? { members: this.state.members, ackQuorum: this.state.ackQuorum, sinceMapVersion: this.state.mapVersion + 1 } : null,
      }, `K changed from ${this.state.ackQuorum} to ${ackQuorum}${raising ? '; the old rule also applies until the main confirms' : ''}`);
      return undefined;
    });
    return { result, effects: this.end() };
  }

  private changeConfiguration(change: () => string | undefined): OperatorResult {
    if (this.state.phase !== 'stable' || this.state.main === null) return { accepted: false, message: 'A failover is in progress; try again when a main is appointed' };
    if (this.state.jointWith !== null || this.state.pendingRemoval !== null) return { accepted: false, message: 'The previous configuration change is not complete yet; try again shortly' };
    if (this.switchover !== undefined) return { accepted: false, message: 'A switchover is in progress; try again shortly' };
    const refusal = change();
    if (refusal !== undefined) return { accepted: false, message: refusal };
    return { accepted: true, message: this.lastChange };
  }

  private lastChange = '';

  private announceConfiguration(next: ManagerState, change: string): void {
    const mapVersion = this.state.mapVersion + 1;
    this.lastChange = change.charAt(0).toUpperCase() + change.slice(1);
    this.persist({ ...next, mapVersion }, 'broadcastMap');
    this.event('info', `Configuration ${mapVersion}: ${change}`, { type: 'configurationChanged', change, mapVersion });
  }

  /** Promote caught-up learners; end a joint configuration the main has confirmed. */
  private advanceConfiguration(): void {
    const main = this.state.main;
    if (main === null || this.afterPersist.size > 0) return;
    const mainStatus = this.fresh(main);
    if (mainStatus === undefined || mainStatus.role !== 'main' || mainStatus.promisedEpoch !== this.state.epoch) return;
    const joint = this.state.jointWith;
    const removed = this.state.pendingRemoval;
    if (joint !== null) {
      if (mainStatus.confirmedMapVersion < joint.sinceMapVersion) return;
      // Appointing the server being removed cancels its removal (configurationWithMain).
      assert(removed !== main, 'a server being removed is never the main');
      const members = removed === null ? this.state.members : this.state.members.filter((member) => member.id !== removed);
      this.announceConfiguration({ ...this.state, members, jointWith: null, pendingRemoval: null },
        `the main confirmed configuration ${joint.sinceMapVersion}${removed === null ? '' : `; removed ${removed}`}`);
      return;
    }
    assert(removed === null, 'a removal is pending only within a joint configuration');
    for (const member of this.state.members) {
      if (member.role !== 'learner' || member.id === this.state.pendingRemoval) continue;
      const status = this.fresh(member.id);
      if (status === undefined || status.incomplete || status.promisedEpoch !== this.state.epoch) continue;
      if (mainStatus.lastSeq - status.lastSeq > this.config.timings.learnerPromotionLagMax) continue;
      // Promoting raises S with K unchanged: every S − K + 1 quorum still meets the old one, so
      // no joint configuration is needed.
      const members = this.state.members.map((other) => (other.id === member.id ? { ...other, role: 'standby' as const } : other));
      this.announceConfiguration({ ...this.state, members }, `promoted the learner ${member.id} to standby (lag ${Math.max(0, mainStatus.lastSeq - status.lastSeq)} entries)`);
      return;
    }
  }

  /** Begin after a restart or at first start: announce the durable map or resume fencing. */
  start(now: number): ManagerEffect[] {
    this.begin(now);
    if (this.state.phase === 'fencing') {
      this.fencesSent = true;
      this.sendFences(true);
    } else if (this.state.main === null) {
      this.startFailover('initial', 'the cluster has no main yet');
    } else {
      this.broadcast();
    }
    return this.end();
  }

  // ---------------------------------------------------------------- observation

  get currentState(): Readonly<ManagerState> {
    return this.state;
  }

  get currentMap(): ClusterMap | undefined {
    return this.announced;
  }

  serverStatus(id: ServerId): { status: StatusMessage; ageMs: number } | undefined {
    const view = this.views.get(id);
    return view === undefined ? undefined : { status: view.status, ageMs: this.now - view.receivedMs };
  }

  // ---------------------------------------------------------------- plumbing

  private begin(now: number): void {
    assert(this.out.length === 0, 'effects of the previous input were not taken');
    this.now = Math.max(this.now, now);
  }

  private end(): ManagerEffect[] {
    const effects = this.out;
    this.out = [];
    return effects;
  }

  private event(level: 'info' | 'warn' | 'debug', message: string, event?: ManagerEvent): void {
    const effect: ManagerEffect = { kind: 'event', level, message };
    if (event !== undefined) effect.event = event;
    this.out.push(effect);
  }

  private persist(state: ManagerState, then: AfterPersist): void {
    this.state = state;
    const persistId = this.nextPersistId++;
    const snapshot = structuredCloneState(state);
    this.afterPersist.set(persistId, { then, state: snapshot });
    this.out.push({ kind: 'persist', persistId, state: snapshot });
  }

  private mapOf(state: ManagerState): ClusterMap {
    return { version: state.mapVersion, epoch: state.epoch, main: state.main, members: state.members, ackQuorum: state.ackQuorum };
  }

  private member(id: ServerId): Member | undefined {
    return this.state.members.find((member) => member.id === id);
  }

  private broadcast(): void {
    for (const member of this.state.members) this.sendMap(member.id);
  }

  private sendMap(to: ServerId): void {
    if (this.announced === undefined) return;
    this.out.push({ kind: 'send', to, message: { type: 'map', map: this.announced } });
  }

  private sendFences(all: boolean): void {
    for (const member of this.state.members) {
      if (!all && this.fenceReplies.has(member.id)) continue;
      this.out.push({ kind: 'send', to: member.id, message: { type: 'fence', epoch: this.state.epoch } });
    }
  }

  private fresh(id: ServerId): StatusMessage | undefined {
    const view = this.views.get(id);
    if (view === undefined || this.now - view.receivedMs > this.config.timings.statusFreshMs) return undefined;
    return view.status;
  }

  /** Standby-role members other than `main`: the S of SPEC.md section 5. */
  private standbys(main: ServerId | null): Member[] {
    return this.state.members.filter((member) => member.role === 'standby' && member.id !== main);
  }

  // ---------------------------------------------------------------- failure detection

  private detectFailure(): void {
    const main = this.state.main;
    if (main === null) return;
    const timings = this.config.timings;
    const view = this.views.get(main);
    const status = this.fresh(main);

    // The main restarted: a restarted server never resumes as main, so it cannot commit.
    if (status !== undefined && status.role === 'main' && status.promisedEpoch === this.state.epoch) {
      this.mainBootId ??= status.bootId;
    }
    if (status !== undefined && this.mainBootId !== undefined && status.bootId !== this.mainBootId) {
      this.startFailover('mainRestarted', `the main ${main} restarted`);
      return;
    }
    if (this.mainBootId === undefined && this.now - this.appointedMs >= timings.failoverAfterMs && status !== undefined) {
      this.startFailover('mainDidNotStart', `the appointed main ${main} did not start acting as main`);
      return;
    }

    // The main is silent and its standbys lost contact with it too. A manager–main partition alone
    // never gets here: standbys that still hear the main keep it in their contacts.
    const silentMs = Math.round(this.now - Math.max(view?.receivedMs ?? -Infinity, this.startedMs, this.appointedMs));
    if (status === undefined && silentMs >= timings.failoverAfterMs) {
      const reporters = this.standbys(main).map((member) => this.fresh(member.id)).filter((s): s is StatusMessage => s !== undefined);
      if (reporters.length > 0 && reporters.every((s) => !s.contacts.includes(main))) {
        this.startFailover('mainSilent', `the main ${main} is silent for ${silentMs} ms and no standby hears it`);
        return;
      }
    }

    // The main's connection closed and it has not come back: its process is most likely gone.
    // Still only if no standby hears it (a status sent after the loss, or fresh and without it).
    if (this.mainLostMs !== undefined && this.now - this.mainLostMs >= timings.lostFailoverMs) {
      const reporters = this.standbys(main).map((member) => this.fresh(member.id)).filter((s): s is StatusMessage => s !== undefined);
      if (reporters.length > 0 && reporters.every((s) => !s.contacts.includes(main))) {
        this.startFailover('mainConnectionClosed', `the main ${main}'s connection closed ${Math.round(this.now - this.mainLostMs)} ms ago, it has not come back, and no standby hears it`);
        return;
      }
    }

    // The main reports it cannot reach K standbys, while a candidate could.
    const quorum = this.state.ackQuorum;
    if (status !== undefined && quorum > 0 && status.role === 'main' && status.standbysInContact < quorum) {
      this.mainIsolatedSinceMs ??= this.now;
      if (this.now - this.mainIsolatedSinceMs >= timings.failoverAfterMs && this.someCandidateCouldCommit(main)) {
        this.startFailover('mainIsolated', `the main ${main} cannot reach ${quorum} standbys`);
        return;
      }
    } else {
      this.mainIsolatedSinceMs = undefined;
    }
  }

  private someCandidateCouldCommit(main: ServerId): boolean {
    const standbyIds = new Set(this.standbys(main).map((member) => member.id));
    for (const id of standbyIds) {
      const status = this.fresh(id);
      if (status === undefined || status.incomplete) continue;
      const reachable = status.contacts.filter((contact) => standbyIds.has(contact) && contact !== id).length;
      if (reachable >= this.state.ackQuorum) return true;
    }
    return false;
  }

  // ---------------------------------------------------------------- fenced failover

  private startFailover(cause: FailoverCause, reason: string, preferredMain: ServerId | null = null): void {
    assert(this.state.phase === 'stable', 'a failover is already in progress');
    this.switchover = undefined;
    const next = epoch(this.state.epoch + 1);
    this.fenceReplies.clear();
    this.fencesSent = false;
    this.failoverStartedMs = this.now;
    this.lastWaitReport = '';
    this.announced = undefined;
    this.persist({ ...this.state, epoch: next, previousMain: this.state.main, main: null, phase: 'fencing', reason, preferredMain }, 'sendFences');
    this.event('warn', `Failover to epoch ${next} started: ${reason}`, { type: 'failoverStarted', epoch: next, cause, reason });
  }

  /** Fence replies needed from standbys: S − K + 1 (any such set holds every committed entry). */
  private fenceQuorum(standbyCount: number, quorum: number): number {
    if (quorum === 0) return 1; // Asynchronous replication: the most complete reachable standby.
    const need = Math.max(1, standbyCount - quorum + 1);
    return this.bugs.has('failoverWithFewerReplies') ? Math.max(1, need - 1) : need;
  }

  private tryAppoint(): void {
    if (!this.fencesSent) return;
    const previous = this.state.previousMain;
    const complete = (id: ServerId): FenceReply | undefined => {
      const reply = this.fenceReplies.get(id);
      return reply !== undefined && !reply.incomplete ? reply : undefined;
    };
    // Every configuration in force (two while a change is unconfirmed) needs its own quorum.
    const configurations = [{ members: this.state.members, ackQuorum: this.state.ackQuorum }];
    if (this.state.jointWith !== null) configurations.push(this.state.jointWith);
    const tallies = configurations.map((configuration) => {
      const standbys = configuration.members.filter((member) => member.role === 'standby' && member.id !== previous);
      return {
        have: standbys.filter((member) => complete(member.id) !== undefined).length,
        need: this.fenceQuorum(standbys.length, configuration.ackQuorum),
      };
    });
    const quorumMet = tallies.every((tally) => tally.have >= tally.need);
    const asynchronous = configurations.every((configuration) => configuration.ackQuorum === 0);
    const waitedMs = this.now - this.failoverStartedMs;
    // A planned switchover waits (bounded) for its target's reply, so the target can be chosen.
    const preferred = this.state.preferredMain;
    if (preferred !== null && complete(preferred) === undefined && waitedMs < this.config.timings.switchoverPauseMs) return;
    let candidates: Member[] = [];
    if (asynchronous) {
      // Asynchronous replication: the most complete server that answered, the old main included.
      candidates = this.state.members.filter((member) => complete(member.id) !== undefined);
    } else if (quorumMet) {
      // The highest log among the repliers holds every committed entry. Learners may answer too
      // (a standby being removed is one): they are candidates, never counted toward a quorum.
      candidates = this.state.members.filter((member) => complete(member.id) !== undefined && member.id !== previous);
    } else if (previous !== null && complete(previous) !== undefined && this.member(previous) !== undefined
      && waitedMs >= (preferred === null ? this.config.timings.failoverAfterMs / 2 : this.config.timings.switchoverPauseMs)) {
      // The old main answered the fence but not enough standbys did, even after a grace: it can no
      // longer commit and holds every committed entry, so it may serve again. A planned switchover
      // waits longer first: taking this shortcut early would just return to where it started.
      candidates = [this.member(previous) as Member];
    }
    if (candidates.length === 0) {
      const report = tallies.map((tally) => `have ${tally.have} of ${tally.need} standby fence replies needed`).join('; and under the previous configuration ');
      if (report !== this.lastWaitReport) {
        this.lastWaitReport = report;
        const first = tallies[0] as { have: number; need: number };
        this.event('warn', `Cannot appoint a main for epoch ${this.state.epoch} yet: ${report}`,
          { type: 'fenceQuorumWait', epoch: this.state.epoch, have: first.have, need: first.need });
      }
      return;
    }
    const best = this.chooseMain(candidates);
    const tookMs = Math.round(this.now - this.failoverStartedMs);
    const reason = this.state.reason;
    this.appointedMs = this.now;
    this.mainBootId = undefined;
    this.mainIsolatedSinceMs = undefined;
    this.mainLostMs = undefined;
    const configuration = this.configurationWithMain(best);
    this.persist({ ...this.state, ...configuration.state, main: best.id, previousMain: null, phase: 'stable', mapVersion: this.state.mapVersion + 1, reason: '', preferredMain: null }, 'broadcastMap');
    this.event('info', `Appointed ${best.id} main of epoch ${this.state.epoch} after ${tookMs} ms (${reason})${configuration.note}`,
      { type: 'appointed', epoch: this.state.epoch, main: best.id, reason, tookMs });
  }

  /**
   * A main is always a standby: the fence rule counts the standbys besides the failed main, which
   * holds only if the main's own copy of what it committed sits on a standby. A learner appointed
   * because it had the most complete log (a standby being removed, or one still joining) becomes a
   * standby; a pending removal is cancelled by returning to the previous configuration, which is
   * at least as demanding as the one it was leaving for.
   */
  private configurationWithMain(main: Member): { state: Partial<ManagerState>; note: string } {
    if (main.role === 'standby') return { state: {}, note: '' };
    const joint = this.state.jointWith;
    if (main.id === this.state.pendingRemoval && joint !== null) {
      return { state: { members: joint.members, ackQuorum: joint.ackQuorum, jointWith: null, pendingRemoval: null }, note: `; the removal of ${main.id} is cancelled` };
    }
    const members = this.state.members.map((member) => (member.id === main.id ? { ...member, role: 'standby' as const } : member));
    return { state: { members }, note: `; ${main.id} is now a standby` };
  }

  /** The latest and most complete log wins; then a switchover's target; then priority; then the lowest id. */
  private chooseMain(candidates: Member[]): Member {
    const sign = this.bugs.has('chooseLowestLog') ? -1 : 1;
    const preferred = this.state.preferredMain;
    const sorted = [...candidates].sort((a, b) => {
      const byLog = comparePosition(this.fenceReplies.get(b.id) as FenceReply, this.fenceReplies.get(a.id) as FenceReply) * sign;
      if (byLog !== 0) return byLog;
      if ((a.id === preferred) !== (b.id === preferred)) return a.id === preferred ? -1 : 1;
      if (a.role !== b.role) return a.role === 'standby' ? -1 : 1;
      if (a.priority !== b.priority) return b.priority - a.priority;
      return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
    });
    return sorted[0] as Member;
  }
}

function structuredCloneState(state: ManagerState): ManagerState {
  return { ...state, members: state.members.map((member) => ({ ...member })) };
}
