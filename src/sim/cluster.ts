// The seeded whole-cluster simulator: one manager, N servers and a few clients driven by the real
// cores over a simulated network, disks and clock. A seed draws the cluster's shape and its own
// fault rates (swarm testing); the run injects faults, heals, checks liveness, and checks the
// invariants of SPEC.md section 8 after every event. Same seed, same run, same trace hash.

import { assert, AssertionError } from '../lib/assert.ts';
import { Random } from '../lib/random.ts';
import type { PlantedBugs } from '../core/bugs.ts';
import { noBugs } from '../core/bugs.ts';
import type { ManagerEffect, ManagerState } from '../core/manager.ts';
import { defaultManagerTimings, initialManagerState, ManagerCore } from '../core/manager.ts';
import type { ServerEffect } from '../core/server.ts';
import { defaultServerLimits, defaultServerTimings, ServerCore } from '../core/server.ts';
import type { ManagerToServer, Member, PeerMessage, ServerToManager } from '../protocol/messages.ts';
import type { ClientRequest, ClientResponse, LogEntry, ServerId } from '../protocol/types.ts';
import { serverId } from '../protocol/types.ts';
import { KvState, MemoryKvStore } from '../core/kv.ts';
import { SimDisk } from './disk.ts';
import { EventHeap } from './heap.ts';
import type { HistoryOperation } from './linearizability.ts';
import { checkLinearizability } from './linearizability.ts';

export interface SimOptions {
  seed: number;
  bugs?: PlantedBugs;
  /** Receives the event trace, line by line. */
  trace?: (line: string) => void;
  /** Simulated time with faults, before healing. */
  faultPhaseMs?: number;
}

export interface SimCounters {
  events: number;
  messagesSent: number;
  messagesDropped: number;
  messagesDuplicated: number;
  partitions: number;
  oneWayPartitions: number;
  clogs: number;
  serverCrashes: number;
  newMainsCrashed: number;
  newMainsIsolated: number;
  serverPauses: number;
  /** Connections closed under a live process (a reset): the peers are told, as after a crash. */
  connectionResets: number;
  managerCrashes: number;
  unsyncedWritesLost: number;
  tornRecordsRecovered: number;
  bitFlipsDetected: number;
  incompleteRepaired: number;
  managerPauses: number;
  localReadsOk: number;
  failovers: number;
  switchoversRequested: number;
  switchoversCompleted: number;
  serversAdded: number;
  learnersPromoted: number;
  serversRemoved: number;
  ackQuorumChanges: number;
  jointConfirmed: number;
  fenceQuorumWaits: number;
  truncations: number;
  compactions: number;
  snapshotsInstalled: number;
  duplicatesAbsorbed: number;
  writesAcknowledged: number;
  readsOk: number;
  casOk: number;
  operationsUnknown: number;
  clientRetries: number;
}

/** What kind of check a failed seed broke, for the summary. */
export type FailureKind = 'acknowledgedWriteLost' | 'notLinearizable' | 'unknownVerdict' | 'liveness' | 'invariant' | 'assertion';

export function failureKind(failure: string): FailureKind {
  if (failure.startsWith('AssertionError')) return 'assertion';
  if (failure.includes('unknown linearizability verdict')) return 'unknownVerdict';
  if (failure.includes('not linearizable')) return 'notLinearizable';
  if (/acknowledged write .*(lost|not in the committed log)|could lose committed/.test(failure)) return 'acknowledgedWriteLost';
  if (failure.includes('liveness') || failure.includes('did not converge')) return 'liveness';
  return 'invariant';
}

export interface SimResult {
  seed: number;
  servers: number;
  ackQuorum: number;
  ok: boolean;
  failure?: string;
  traceHash: string;
  counters: SimCounters;
  simulatedMs: number;
  historyLength: number;
}

export function emptyCounters(): SimCounters {
  return {
    events: 0, messagesSent: 0, messagesDropped: 0, messagesDuplicated: 0, partitions: 0, oneWayPartitions: 0, clogs: 0,
    serverCrashes: 0, newMainsCrashed: 0, newMainsIsolated: 0, serverPauses: 0, connectionResets: 0, managerCrashes: 0, unsyncedWritesLost: 0, tornRecordsRecovered: 0,
    bitFlipsDetected: 0, incompleteRepaired: 0, managerPauses: 0, localReadsOk: 0, failovers: 0, switchoversRequested: 0, switchoversCompleted: 0, serversAdded: 0, learnersPromoted: 0, serversRemoved: 0, ackQuorumChanges: 0, jointConfirmed: 0, fenceQuorumWaits: 0, truncations: 0, compactions: 0, snapshotsInstalled: 0, duplicatesAbsorbed: 0,
    writesAcknowledged: 0, readsOk: 0, casOk: 0, operationsUnknown: 0, clientRetries: 0,
  };
}

/** A violated invariant or a failed end check. */
export class InvariantViolation extends Error {
  override name = 'InvariantViolation';
}

function violated(message: string): never {
  throw new InvariantViolation(message);
}

const MANAGER = 'manager';
type NodeName = string;

type Payload =
  | { kind: 'peer'; message: PeerMessage }
  | { kind: 'toManager'; message: ServerToManager }
  | { kind: 'fromManager'; message: ManagerToServer }
  | { kind: 'request'; attempt: number; request: ClientRequest }
  | { kind: 'response'; attempt: number; response: ClientResponse }
  /** The sender's connection to the receiver closed (its process died, or a reset). */
  | { kind: 'lost' };

type SimEvent =
  | { type: 'net'; from: NodeName; to: NodeName; payload: Payload }
  | { type: 'tick'; node: NodeName; incarnation: number }
  | { type: 'diskDone'; node: NodeName; incarnation: number; operationId: number }
  | { type: 'persistDone'; incarnation: number; persistId: number; state: ManagerState }
  | { type: 'nemesis' }
  | { type: 'restart'; node: NodeName }
  | { type: 'resume'; node: NodeName }
  | { type: 'heal'; partitionId: number }
  | { type: 'clientStep'; client: number }
  | { type: 'attemptTimeout'; client: number; attempt: number }
  | { type: 'retry'; client: number; attempt: number }
  | { type: 'crashNewMain'; node: NodeName };

/** Per-seed fault rates: swarm testing gives each seed its own mix. */
interface FaultProfile {
  lossChance: number;
  duplicateChance: number;
  delayMinMs: number;
  delayMaxMs: number;
  fsyncMinMs: number;
  fsyncMaxMs: number;
  nemesisEveryMs: number;
  weights: Record<NemesisKind, number>;
  survivalChance: number;
  tornChance: number;
  bitFlipChance: number;
  batchEntriesMax: number;
  inflightEntriesMax: number;
  /** Chance that a newly appointed main is crashed within tens of milliseconds (flapping). */
  killNewMainChance: number;
  logRetentionEntries: number;
  /** The in-memory log's layout (LogView): hot entries, entries per frozen chunk. */
  logHotEntries: number;
  logChunkEntries: number;
  snapshotChunkItemsMax: number;
  snapshotChunksInflightMax: number;
  batchBytesMax: number;
}

type NemesisKind = 'addServer' | 'removeServer' | 'setAckQuorum' | 'switchover' | 'crash' | 'pause' | 'crashManager' | 'pauseManager' | 'isolate' | 'isolateMain' | 'mainFromManager' | 'split' | 'oneWay' | 'clog';
const nemesisKinds: NemesisKind[] = ['addServer', 'removeServer', 'setAckQuorum', 'switchover', 'crash', 'pause', 'crashManager', 'pauseManager', 'isolate', 'isolateMain', 'mainFromManager', 'split', 'oneWay', 'clog'];

interface ServerNode {
  id: ServerId;
  core: ServerCore | undefined;
  disk: SimDisk;
  incarnation: number;
  paused: boolean;
  /** Events that arrived while paused, delivered on resume. */
  held: SimEvent[];
  /** Core request ids → (client, attempt). */
  requests: Map<number, { client: number; attempt: number }>;
  /** Highest commitSeq and appliedSeq seen (commitSeq per incarnation). */
  commitSeen: number;
  appliedSeen: number;
  /** Highest commitSeq whose prefix was checked against the committed log. */
  checkedUpTo: number;
  durableEpochSeen: number;
}

interface ClientOperation {
  history: HistoryOperation;
  request: ClientRequest;
  deadlineMs: number;
  done: boolean;
  /** A local read: sent to any server, kept out of the linearizability history. */
  local?: boolean;
}

interface Client {
  id: number;
  guess: number;
  /**
   * Round-robin position, moved only when an answer names no main: a hint moves guess alone, so
   * stale hints (removed servers keep the map of their last epoch) cannot trap the client in a cycle.
   */
  scan: number;
  operation: ClientOperation | undefined;
  attempt: number;
  nextRequestId: number;
  operationsLeft: number;
  known: Map<string, { value: string | null; version: number }>;
  /** Seq of this client's last acknowledged write, for read-your-writes on local reads. */
  lastWriteSeq: number;
}

interface Partition {
  id: number;
  blocked: string[];
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder();

export function runSimulation(options: SimOptions): SimResult {
  return new Simulation(options).run();
}

class Simulation {
  private readonly random: Random;
  private readonly bugs: PlantedBugs;
  private readonly trace: ((line: string) => void) | undefined;
  private readonly heap = new EventHeap<SimEvent>();
  private readonly counters = emptyCounters();
  private now = 0;
  private hash = 0x811c9dc5;
  private readonly faultPhaseMs: number;
  private readonly profile: FaultProfile;
  private readonly servers: ServerNode[] = [];
  private readonly members: Member[];
  private readonly ackQuorum: number;
  private manager: ManagerCore | undefined;
  private managerIncarnation = 0;
  private managerDurable: ManagerState;
  private managerPaused = false;
  private managerPersistDoneAt = 0;
  /** Events that reached the manager while it was paused, delivered on resume. */
  private managerHeld: SimEvent[] = [];
  private readonly blocked = new Map<string, number>();
  private readonly clogged = new Map<string, number>();
  private readonly partitions = new Map<number, Partition>();
  private nextPartitionId = 1;
  private readonly clients: Client[] = [];
  private readonly history: HistoryOperation[] = [];
  /** The cluster's committed log as observed so far: committed[s - 1] is the entry at seq s. */
  private readonly committed: LogEntry[] = [];
  /** Acknowledged writes by seq: what the client was told. */
  private readonly acknowledged = new Map<number, { key: string; value: string; epoch: number }>();
  /** Epoch → the server that committed as main in it. */
  private readonly committerOfEpoch = new Map<number, ServerId>();
  private failoverSafetyCheckedFor = '';
  private readonly committedState = new KvState(new MemoryKvStore(), { sessionsMax: 1_000_000 });
  private readonly committedChanges = new Map<string, { version: number; value: string }[]>();
  private readonly entryAtPosition = new Map<string, LogEntry>();
  private healed = false;
  private healedAtMs = 0;
  private livenessWrite = false;
  private livenessRead = false;

  constructor(options: SimOptions) {
    this.random = new Random(options.seed);
    this.bugs = options.bugs ?? noBugs;
    this.trace = options.trace;
    this.faultPhaseMs = options.faultPhaseMs ?? 15_000;
    const random = this.random;
    const serverCount = random.int(2, 5);
    this.members = [];
    for (let i = 1; i <= serverCount; i++) {
      this.members.push({ id: serverId(`s${i}`), role: 'standby', priority: 0, address: `sim://s${i}`, peerAddress: `sim:s${i}` });
    }
    // Spare servers run from the start but join only if the membership nemesis adds them.
    const spareCount = random.int(0, 2);
    this.ackQuorum = random.int(0, serverCount - 1);
    const delayMaxMs = random.pick([2, 10, 40]);
    const layoutRandom = new Random(options.seed ^ 0x6c6f67);
    const weights = {} as Record<NemesisKind, number>;
    for (const kind of nemesisKinds) weights[kind] = random.chance(0.7) ? random.int(1, 4) : 0;
    this.profile = {
      lossChance: random.pick([0, 0, 0.01, 0.05, 0.15]),
      duplicateChance: random.pick([0, 0.01, 0.05]),
      delayMinMs: random.int(0, 1),
      delayMaxMs,
      fsyncMinMs: random.pick([0, 1]),
      fsyncMaxMs: random.pick([1, 5, 20]),
      nemesisEveryMs: random.pick([100, 300, 1000, 3000]),
      weights,
      survivalChance: random.pick([0, 0.3, 0.7]),
      tornChance: random.pick([0, 0.5]),
      bitFlipChance: random.pick([0, 0.2, 0.5]),
      batchEntriesMax: 1,
      inflightEntriesMax: 1,
      killNewMainChance: random.pick([0, 0, 0.3, 0.7]),
      logRetentionEntries: random.pick([2, 8, 32, 1000]),
      // From a stream of its own, so that each seed keeps the scenario it had before this choice.
      logHotEntries: layoutRandom.pick([0, 2, 16, 2048]),
      logChunkEntries: layoutRandom.pick([1, 3, 8]),
      snapshotChunkItemsMax: random.pick([1, 2, 16]),
      snapshotChunksInflightMax: random.pick([1, 2, 4]),
      batchBytesMax: random.pick([1, 100, 1024 * 1024]),
    };
    this.profile.batchEntriesMax = random.pick([1, 2, 8, 64]);
    this.profile.inflightEntriesMax = this.profile.batchEntriesMax * random.pick([1, 4, 16]);
    const allServers = [...this.members.map((member) => member.id)];
    for (let i = 1; i <= spareCount; i++) allServers.push(serverId(`s${serverCount + i}`));
    for (const id of allServers) {
      this.servers.push({
        id, core: undefined, disk: new SimDisk(), incarnation: 0, paused: false, held: [], requests: new Map(),
        commitSeen: 0, appliedSeen: 0, checkedUpTo: 0, durableEpochSeen: 0,
      });
    }
    this.managerDurable = initialManagerState(this.members, this.ackQuorum);
    const clientCount = random.int(1, 5);
    for (let i = 0; i < clientCount; i++) {
      const guess = random.int(0, serverCount - 1);
      this.clients.push({ id: i, guess, scan: guess, operation: undefined, attempt: 0, nextRequestId: 1, operationsLeft: random.int(20, 120), known: new Map(), lastWriteSeq: 0 });
    }
  }

  run(): SimResult {
    let failure: string | undefined;
    try {
      this.log(`seed shape: servers=${this.members.length} K=${this.ackQuorum} clients=${this.clients.length} profile=${JSON.stringify(this.profile)}`);
      for (const node of this.servers) this.startServer(node);
      this.startManager();
      for (const client of this.clients) this.schedule(this.random.int(0, 200), { type: 'clientStep', client: client.id });
      this.schedule(this.profile.nemesisEveryMs, { type: 'nemesis' });
      this.loop(this.faultPhaseMs);
      this.heal();
      const livenessBoundMs = 30_000;
      this.loop(this.healedAtMs + livenessBoundMs, () => this.livenessWrite && this.livenessRead && this.clientsIdle());
      if (!this.livenessWrite || !this.livenessRead) {
        violated(`liveness: ${this.livenessWrite ? '' : 'no write'} ${this.livenessRead ? '' : 'no read'} succeeded within ${livenessBoundMs} ms of healing`);
      }
      this.finalChecks();
    } catch (error) {
      if (error instanceof InvariantViolation || error instanceof AssertionError) {
        failure = `${error.name}: ${error.message}`;
      } else {
        throw error;
      }
    }
    const result: SimResult = {
      seed: 0, servers: this.members.length, ackQuorum: this.ackQuorum, ok: failure === undefined,
      traceHash: (this.hash >>> 0).toString(16).padStart(8, '0'), counters: this.counters, simulatedMs: this.now,
      historyLength: this.history.length,
    };
    if (failure !== undefined) result.failure = failure;
    return result;
  }

  // ---------------------------------------------------------------- event loop

  private schedule(delayMs: number, event: SimEvent): void {
    this.heap.push(this.now + delayMs, event);
  }

  private loop(untilMs: number, done?: () => boolean): void {
    while (true) {
      const time = this.heap.peekTime();
      if (time === undefined || time > untilMs) break;
      const scheduled = this.heap.pop();
      assert(scheduled !== undefined, 'heap emptied under us');
      this.now = scheduled.time;
      this.counters.events++;
      this.mixHash(scheduled.time, scheduled.item);
      this.dispatch(scheduled.item);
      this.checkInvariants();
      if (done?.() === true) return;
    }
    this.now = Math.max(this.now, untilMs);
  }

  private mixHash(time: number, event: SimEvent): void {
    let text = `${time}|${event.type}|`;
    if (event.type === 'net') text += `${event.from}>${event.to}:${event.payload.kind}:${'message' in event.payload ? event.payload.message.type : ''}`;
    else if ('node' in event) text += event.node;
    for (let i = 0; i < text.length; i++) {
      this.hash ^= text.charCodeAt(i);
      this.hash = Math.imul(this.hash, 0x01000193) >>> 0;
    }
  }

  private log(line: string): void {
    this.trace?.(`${String(this.now).padStart(7)} ${line}`);
  }

  private dispatch(event: SimEvent): void {
    switch (event.type) {
      case 'net': return this.deliver(event);
      case 'tick': return this.onTick(event);
      case 'diskDone': {
        const node = this.server(event.node);
        if (node.incarnation !== event.incarnation || node.core === undefined) return;
        if (node.paused) {
          node.held.push(event);
          return;
        }
        node.disk.complete(event.operationId);
        this.runServerEffects(node, node.core.onDiskDone(this.now, event.operationId));
        return;
      }
      case 'persistDone': {
        if (event.incarnation !== this.managerIncarnation || this.manager === undefined) return;
        if (this.managerPaused) {
          this.managerHeld.push(event);
          return;
        }
        this.managerDurable = event.state;
        this.runManagerEffects(this.manager.onPersisted(this.now, event.persistId));
        return;
      }
      case 'nemesis': return this.nemesis();
      case 'restart':
        if (event.node === MANAGER) {
          if (this.manager === undefined) this.startManager();
        } else if (this.server(event.node).core === undefined) {
          this.startServer(this.server(event.node));
        }
        return;
      case 'resume': return this.resume(event.node);
      case 'crashNewMain': {
        const node = this.server(event.node);
        if (this.healed || node.core === undefined) return;
        this.counters.newMainsCrashed++;
        this.crashServer(node);
        this.schedule(this.random.int(50, 3000), { type: 'restart', node: node.id });
        return;
      }
      case 'heal': return this.healPartition(event.partitionId);
      case 'clientStep': return this.clientStep(this.clients[event.client] as Client);
      case 'attemptTimeout': return this.onAttemptTimeout(this.clients[event.client] as Client, event.attempt);
      case 'retry': {
        const client = this.clients[event.client] as Client;
        if (client.attempt === event.attempt && client.operation !== undefined) this.retryOrGiveUp(client);
        return;
      }
    }
  }

  private server(name: NodeName): ServerNode {
    const node = this.servers.find((candidate) => candidate.id === name);
    assert(node !== undefined, `unknown server ${name}`);
    return node;
  }

  // ---------------------------------------------------------------- processes

  private startServer(node: ServerNode): void {
    assert(node.core === undefined, `server ${node.id} is already running`);
    node.incarnation++;
    const recovery = node.disk.recover();
    if (recovery.corruptionFound) this.counters.bitFlipsDetected++;
    node.core = new ServerCore(
      { id: node.id, timings: defaultServerTimings, limits: {
        ...defaultServerLimits, batchEntriesMax: this.profile.batchEntriesMax, inflightEntriesMax: this.profile.inflightEntriesMax,
        logRetentionEntries: this.profile.logRetentionEntries, logHotEntries: this.profile.logHotEntries, logChunkEntries: this.profile.logChunkEntries,
        snapshotChunkItemsMax: this.profile.snapshotChunkItemsMax,
        snapshotChunksInflightMax: this.profile.snapshotChunksInflightMax, batchBytesMax: this.profile.batchBytesMax,
      }, bugs: this.bugs },
      { meta: recovery.meta, entries: recovery.entries, firstSeq: recovery.firstSeq, baseEpoch: recovery.baseEpoch, corruptionFound: recovery.corruptionFound, bootId: this.random.uint32() + 1, store: node.disk.store },
    );
    node.commitSeen = node.core.committed;
    node.paused = false;
    node.held = [];
    node.requests.clear();
    this.log(`${node.id} started (incarnation ${node.incarnation}, lastSeq ${node.core.lastSeq}, promised ${node.core.promised}${recovery.corruptionFound ? ', INCOMPLETE' : ''})`);
    this.schedule(this.random.int(0, 20), { type: 'tick', node: node.id, incarnation: node.incarnation });
  }

  private crashServer(node: ServerNode): void {
    if (node.core === undefined) return;
    node.core = undefined;
    node.incarnation++;
    node.paused = false;
    node.held = [];
    const outcome = node.disk.crash(this.random, this.profile.survivalChance, this.profile.tornChance);
    if (outcome.torn) this.counters.tornRecordsRecovered++;
    this.counters.unsyncedWritesLost += outcome.lost;
    this.counters.serverCrashes++;
    // One corrupt disk at a time: two at once can destroy every copy of a committed entry, which
    // no replication scheme survives without an operator.
    const anotherIncomplete = this.servers.some((other) => other !== node && (other.disk.durableMeta.incomplete || other.disk.hasFlippedRecord));
    if (!anotherIncomplete && this.random.chance(this.profile.bitFlipChance) && node.disk.flipBit(this.random)) this.log(`${node.id} bit flip planted`);
    // Answer nothing for the requests in flight: clients time out.
    node.requests.clear();
    // Its sockets close: every process it talked to sees the connection end (unless the network
    // loses that too).
    this.connectionsLost(node.id);
    this.log(`${node.id} crashed (survived ${outcome.survived} unsynced operations${outcome.torn ? ', torn tail' : ''})`);
  }

  private connectionsLost(from: NodeName): void {
    for (const to of this.nodeNames()) if (to !== from) this.send(from, to, { kind: 'lost' });
  }

  private startManager(): void {
    assert(this.manager === undefined, 'manager is already running');
    this.managerIncarnation++;
    this.managerPaused = false;
    this.managerHeld = [];
    this.manager = new ManagerCore({ timings: defaultManagerTimings, bugs: this.bugs }, this.managerDurable, this.now);
    this.log(`manager started (epoch ${this.managerDurable.epoch}, main ${this.managerDurable.main}, phase ${this.managerDurable.phase})`);
    this.runManagerEffects(this.manager.start(this.now));
    this.schedule(this.random.int(0, 20), { type: 'tick', node: MANAGER, incarnation: this.managerIncarnation });
  }

  private crashManager(): void {
    if (this.manager === undefined) return;
    this.manager = undefined;
    this.managerIncarnation++;
    this.managerPaused = false;
    this.managerHeld = [];
    this.counters.managerCrashes++;
    this.log('manager crashed');
  }

  private onTick(event: SimEvent & { type: 'tick' }): void {
    if (event.node === MANAGER) {
      if (event.incarnation !== this.managerIncarnation || this.manager === undefined) return;
      if (!this.managerPaused) this.runManagerEffects(this.manager.tick(this.now));
      this.schedule(defaultManagerTimings.heartbeatMs / 2, event);
      return;
    }
    const node = this.server(event.node);
    if (node.incarnation !== event.incarnation || node.core === undefined) return;
    if (!node.paused) this.runServerEffects(node, node.core.tick(this.now));
    this.schedule(defaultServerTimings.heartbeatMs / 2, event);
  }

  private resume(name: NodeName): void {
    if (name === MANAGER) {
      if (!this.managerPaused || this.manager === undefined) return;
      this.managerPaused = false;
      const held = this.managerHeld;
      this.managerHeld = [];
      this.log(`manager resumed with ${held.length} held events`);
      for (const event of held) {
        this.dispatch(event);
        this.checkInvariants();
      }
      return;
    }
    const node = this.server(name);
    if (!node.paused || node.core === undefined) return;
    node.paused = false;
    this.log(`${name} resumed with ${node.held.length} held events`);
    const held = node.held;
    node.held = [];
    for (const event of held) {
      this.dispatch(event);
      this.checkInvariants();
    }
  }

  private runServerEffects(node: ServerNode, effects: ServerEffect[]): void {
    const core = node.core;
    assert(core !== undefined, 'effects from a stopped server');
    for (const effect of effects) {
      switch (effect.kind) {
        case 'send':
          this.send(node.id, effect.to, { kind: 'peer', message: effect.message });
          break;
        case 'sendManager':
          this.send(node.id, MANAGER, { kind: 'toManager', message: effect.message });
          break;
        case 'disk': {
          if (effect.operation.type === 'append') this.checkEntriesUnique(node, effect.operation.entries);
          node.disk.issue(effect.operationId, effect.operation);
          const latency = this.random.int(this.profile.fsyncMinMs, this.profile.fsyncMaxMs);
          node.disk.lastDoneAt = Math.max(node.disk.lastDoneAt, this.now) + latency;
          this.heap.push(node.disk.lastDoneAt, { type: 'diskDone', node: node.id, incarnation: node.incarnation, operationId: effect.operationId });
          break;
        }
        case 'reply': {
          const target = node.requests.get(effect.requestId);
          if (target === undefined) break;
          node.requests.delete(effect.requestId);
          if (effect.response.type === 'write') this.checkAcknowledgedWrite(node, effect.response);
          this.send(node.id, `client:${target.client}`, { kind: 'response', attempt: target.attempt, response: effect.response });
          break;
        }
        case 'compact':
          // The simulated state store is durable at once, so the log may go now.
          node.disk.compact(effect.throughSeq, effect.epoch);
          this.counters.compactions++;
          break;
        case 'event':
          if (effect.code === 'duplicateAbsorbed') this.counters.duplicatesAbsorbed++;
          if (effect.code === 'snapshotInstalled') this.counters.snapshotsInstalled++;
          // The server empties its state to install a snapshot (or, with K = 0, to start over).
          if (effect.code === 'snapshotStarted') {
            node.appliedSeen = 0;
            node.commitSeen = 0;
          }
          if (effect.code === 'truncated') this.counters.truncations++;
          if (effect.code === 'repaired') this.counters.incompleteRepaired++;
          if (effect.level !== 'debug') this.log(`${node.id}: ${effect.message}`);
          break;
      }
    }
  }

  private runManagerEffects(effects: ManagerEffect[]): void {
    for (const effect of effects) {
      switch (effect.kind) {
        case 'send':
          this.send(MANAGER, effect.to, { kind: 'fromManager', message: effect.message });
          break;
        case 'persist': {
          // One state file, written in order: a later write never completes before an earlier one.
          const latency = this.random.int(this.profile.fsyncMinMs, this.profile.fsyncMaxMs);
          this.managerPersistDoneAt = Math.max(this.managerPersistDoneAt, this.now) + latency;
          this.heap.push(this.managerPersistDoneAt, { type: 'persistDone', incarnation: this.managerIncarnation, persistId: effect.persistId, state: effect.state });
          break;
        }
        case 'event':
          if (effect.event?.type === 'appointed' && effect.event.epoch > 1) this.counters.failovers++;
          if (effect.event?.type === 'appointed' && effect.event.reason.startsWith('planned switchover')) this.counters.switchoversCompleted++;
          if (effect.event?.type === 'appointed' && !this.healed && this.random.chance(this.profile.killNewMainChance)) {
            if (this.random.chance(0.5)) {
              this.schedule(this.random.int(1, 60), { type: 'crashNewMain', node: effect.event.main });
            } else {
              // Cut it off before its first append leaves: it may log entries no one else sees.
              const main = effect.event.main;
              const others = this.servers.filter((node) => node.id !== main).map((node) => node.id);
              this.partition(others.flatMap((other) => [`${main}>${other}`, `${other}>${main}`]), this.random.int(200, 3000), `isolate new main ${main} from servers`);
              this.counters.newMainsIsolated++;
            }
          }
          if (effect.event?.type === 'fenceQuorumWait') this.counters.fenceQuorumWaits++;
          if (effect.event?.type === 'configurationChanged') {
            const change = effect.event.change;
            if (change.startsWith('added')) this.counters.serversAdded++;
            if (change.startsWith('promoted')) this.counters.learnersPromoted++;
            if (change.startsWith('removed') || change.includes('; removed')) this.counters.serversRemoved++;
            if (change.startsWith('K changed')) this.counters.ackQuorumChanges++;
            if (change.startsWith('the main confirmed')) this.counters.jointConfirmed++;
          }
          this.log(`manager: ${effect.message}`);
          break;
      }
    }
  }

  // ---------------------------------------------------------------- network

  private send(from: NodeName, to: NodeName, payload: Payload): void {
    this.counters.messagesSent++;
    const link = `${from}>${to}`;
    if (this.blocked.has(link) || this.random.chance(this.profile.lossChance)) {
      this.counters.messagesDropped++;
      return;
    }
    const copies = this.random.chance(this.profile.duplicateChance) ? 2 : 1;
    if (copies === 2) this.counters.messagesDuplicated++;
    for (let i = 0; i < copies; i++) {
      const delay = this.random.int(this.profile.delayMinMs, this.profile.delayMaxMs) + (this.clogged.get(link) ?? 0);
      this.schedule(delay, { type: 'net', from, to, payload });
    }
  }

  private deliver(event: SimEvent & { type: 'net' }): void {
    const { from, to, payload } = event;
    if (to === MANAGER) {
      if (this.manager === undefined || (payload.kind !== 'toManager' && payload.kind !== 'lost')) return;
      if (this.managerPaused) {
        this.managerHeld.push(event);
        return;
      }
      if (payload.kind === 'lost') {
        this.runManagerEffects(this.manager.onPeerLost(this.now, serverId(from)));
        return;
      }
      if (payload.message.type === 'fenceReply') this.log(`manager <- ${from}: fence reply ${JSON.stringify(payload.message)}`);
      const message = payload.message;
      const effects = message.type === 'status' ? this.manager.onStatus(this.now, serverId(from), message)
        : message.type === 'fenceReply' ? this.manager.onFenceReply(this.now, serverId(from), message)
          : this.manager.onSwitchoverReady(this.now, serverId(from), message);
      this.runManagerEffects(effects);
      return;
    }
    if (to.startsWith('client:')) {
      if (payload.kind === 'response') this.onResponse(this.clients[Number(to.slice(7))] as Client, payload.attempt, payload.response);
      return;
    }
    const node = this.server(to);
    if (node.core === undefined) return;
    if (node.paused) {
      node.held.push(event);
      return;
    }
    const core = node.core;
    if (this.trace !== undefined && payload.kind === 'peer' && payload.message.type !== 'ping') this.log(`${from} -> ${to}: ${describeMessage(payload.message)}`);
    switch (payload.kind) {
      case 'peer':
        this.runServerEffects(node, core.onPeerMessage(this.now, serverId(from), payload.message));
        break;
      case 'fromManager':
        this.runServerEffects(node, core.onManagerMessage(this.now, payload.message));
        break;
      case 'lost':
        if (from !== MANAGER) this.runServerEffects(node, core.onPeerLost(this.now, serverId(from)));
        break;
      case 'request': {
        const requestId = this.nextRequestId++;
        node.requests.set(requestId, { client: Number(from.slice(7)), attempt: payload.attempt });
        this.runServerEffects(node, core.onRequests(this.now, [{ requestId, request: payload.request }]));
        break;
      }
      default:
        break;
    }
  }

  // ---------------------------------------------------------------- nemesis

  private nodeNames(): NodeName[] {
    return [MANAGER, ...this.servers.map((node) => node.id)];
  }

  private currentMain(): ServerNode | undefined {
    return this.servers.find((node) => node.core?.isMain === true && !node.paused);
  }

  private nemesis(): void {
    if (this.healed) return;
    this.schedule(this.random.int(1, 2 * this.profile.nemesisEveryMs), { type: 'nemesis' });
    const kinds = nemesisKinds.filter((kind) => this.profile.weights[kind] > 0);
    if (kinds.length === 0) return;
    let total = 0;
    for (const kind of kinds) total += this.profile.weights[kind];
    let pick = this.random.int(1, total);
    let kind = kinds[0] as NemesisKind;
    for (const candidate of kinds) {
      pick -= this.profile.weights[candidate];
      if (pick <= 0) {
        kind = candidate;
        break;
      }
    }
    const duration = this.random.int(200, 4000);
    const random = this.random;
    if (random.chance(0.1)) {
      // A connection reset under a live server: its peers are told it is lost, yet it lives on.
      const node = random.pick(this.servers);
      if (node.core !== undefined) {
        this.counters.connectionResets++;
        this.connectionsLost(node.id);
      }
    }
    switch (kind) {
      case 'crash': {
        const node = random.chance(0.5) ? this.currentMain() ?? random.pick(this.servers) : random.pick(this.servers);
        if (node.core === undefined) return;
        this.crashServer(node);
        this.schedule(duration, { type: 'restart', node: node.id });
        return;
      }
      case 'pause': {
        const node = random.chance(0.5) ? this.currentMain() ?? random.pick(this.servers) : random.pick(this.servers);
        if (node.core === undefined || node.paused) return;
        node.paused = true;
        this.counters.serverPauses++;
        this.log(`${node.id} paused`);
        this.schedule(duration, { type: 'resume', node: node.id });
        return;
      }
      case 'addServer': {
        if (this.manager === undefined || this.managerPaused) return;
        const members = new Set(this.managerDurable.members.map((member) => member.id as string));
        const spares = this.servers.filter((node) => !members.has(node.id));
        if (spares.length === 0) return;
        const node = random.pick(spares);
        const { result, effects } = this.manager.addServer(this.now, { id: node.id, address: `sim://${node.id}`, peerAddress: `sim:${node.id}` });
        this.log(`add ${node.id}: ${result.message}`);
        this.runManagerEffects(effects);
        return;
      }
      case 'removeServer': {
        // Keep two servers at least: with one, a corrupt disk would be the only copy (a double fault).
        if (this.manager === undefined || this.managerPaused || this.managerDurable.members.length <= 2) return;
        const id = random.pick(this.managerDurable.members).id;
        const { result, effects } = this.manager.removeServer(this.now, id);
        this.log(`remove ${id}: ${result.message}`);
        this.runManagerEffects(effects);
        return;
      }
      case 'setAckQuorum': {
        // K = 0 seeds stay asynchronous; the others move K within 1..S.
        if (this.manager === undefined || this.managerPaused || this.ackQuorum === 0) return;
        const standbys = this.managerDurable.members.filter((member) => member.role === 'standby' && member.id !== this.managerDurable.main).length;
        if (standbys < 1) return;
        const ackQuorum = random.int(1, standbys);
        const { result, effects } = this.manager.setAckQuorum(this.now, ackQuorum);
        this.log(`set K = ${ackQuorum}: ${result.message}`);
        this.runManagerEffects(effects);
        return;
      }
      case 'switchover': {
        if (this.manager === undefined || this.managerPaused) return;
        const target = random.chance(0.5) ? random.pick(this.servers).id : undefined;
        const { result, effects } = this.manager.requestSwitchover(this.now, target);
        this.log(`switchover requested${target === undefined ? '' : ` to ${target}`}: ${result.message}`);
        if (result.accepted) this.counters.switchoversRequested++;
        this.runManagerEffects(effects);
        return;
      }
      case 'pauseManager':
        if (this.manager === undefined || this.managerPaused) return;
        this.managerPaused = true;
        this.counters.managerPauses++;
        this.log('manager paused');
        this.schedule(duration, { type: 'resume', node: MANAGER });
        return;
      case 'crashManager':
        if (this.manager === undefined) return;
        this.crashManager();
        this.schedule(duration, { type: 'restart', node: MANAGER });
        return;
      case 'isolate': {
        const victim = random.pick(this.nodeNames());
        this.partition(this.nodeNames().filter((name) => name !== victim).flatMap((other) => [`${victim}>${other}`, `${other}>${victim}`]), duration, `isolate ${victim}`);
        return;
      }
      case 'isolateMain': {
        const main = this.currentMain();
        if (main === undefined) return;
        const others = this.servers.filter((node) => node !== main).map((node) => node.id);
        this.partition(others.flatMap((other) => [`${main.id}>${other}`, `${other}>${main.id}`]), duration, `isolate main ${main.id} from servers`);
        return;
      }
      case 'mainFromManager': {
        const main = this.currentMain();
        if (main === undefined) return;
        this.partition([`${main.id}>${MANAGER}`, `${MANAGER}>${main.id}`], duration, `partition main ${main.id} from the manager`);
        return;
      }
      case 'split': {
        const names = random.shuffle(this.nodeNames());
        const cut = random.int(1, names.length - 1);
        const left = names.slice(0, cut);
        const right = names.slice(cut);
        const blocked = left.flatMap((a) => right.flatMap((b) => [`${a}>${b}`, `${b}>${a}`]));
        // A bridge: one node of the right keeps talking to the left.
        if (random.chance(0.3) && right.length > 1) {
          const bridge = right[0] as NodeName;
          this.partition(blocked.filter((link) => !link.includes(bridge)), duration, `split ${left.join(',')} | ${right.join(',')} bridged by ${bridge}`);
        } else {
          this.partition(blocked, duration, `split ${left.join(',')} | ${right.join(',')}`);
        }
        return;
      }
      case 'oneWay': {
        const names = random.shuffle(this.nodeNames());
        this.counters.oneWayPartitions++;
        this.partition([`${names[0]}>${names[1]}`], duration, `one-way cut ${names[0]} > ${names[1]}`);
        return;
      }
      case 'clog': {
        const names = random.shuffle(this.nodeNames());
        const link = `${names[0]}>${names[1]}`;
        this.clogged.set(link, random.int(50, 1500));
        this.counters.clogs++;
        const id = this.nextPartitionId++;
        this.partitions.set(id, { id, blocked: [] });
        this.log(`clog ${link}`);
        this.schedule(duration, { type: 'heal', partitionId: -id });
        this.clogLinks.set(id, link);
        return;
      }
    }
  }

  private readonly clogLinks = new Map<number, string>();
  private nextRequestId = 1;

  private partition(blocked: string[], duration: number, description: string): void {
    const id = this.nextPartitionId++;
    this.partitions.set(id, { id, blocked });
    for (const link of blocked) this.blocked.set(link, (this.blocked.get(link) ?? 0) + 1);
    this.counters.partitions++;
    this.log(`partition #${id}: ${description}`);
    this.schedule(duration, { type: 'heal', partitionId: id });
  }

  private healPartition(id: number): void {
    if (id < 0) {
      const link = this.clogLinks.get(-id);
      if (link !== undefined) this.clogged.delete(link);
      this.clogLinks.delete(-id);
      this.partitions.delete(-id);
      return;
    }
    const partition = this.partitions.get(id);
    if (partition === undefined) return;
    this.partitions.delete(id);
    for (const link of partition.blocked) {
      const count = (this.blocked.get(link) ?? 1) - 1;
      if (count <= 0) this.blocked.delete(link);
      else this.blocked.set(link, count);
    }
    this.log(`partition #${id} healed`);
  }

  /** End of the fault phase: every process up, every link clean. */
  private heal(): void {
    this.healed = true;
    this.healedAtMs = this.now;
    this.log('healing every fault');
    this.blocked.clear();
    this.clogged.clear();
    this.partitions.clear();
    this.profile.lossChance = 0;
    this.profile.duplicateChance = 0;
    for (const node of this.servers) {
      if (node.core === undefined) this.startServer(node);
      else if (node.paused) this.resume(node.id);
    }
    if (this.manager === undefined) this.startManager();
    else this.resume(MANAGER);
    for (const client of this.clients) client.operationsLeft = Math.max(client.operationsLeft, 3);
    for (const client of this.clients) if (client.operation === undefined) this.schedule(1, { type: 'clientStep', client: client.id });
  }

  // ---------------------------------------------------------------- clients

  private clientsIdle(): boolean {
    return this.clients.every((client) => client.operation === undefined);
  }

  private clientStep(client: Client): void {
    if (client.operation !== undefined || client.operationsLeft <= 0) return;
    client.operationsLeft--;
    const random = this.random;
    const key = `k${random.int(0, 2)}`;
    let roll = random.float();
    // After healing, probe liveness: a plain write, then a linearizable read.
    if (this.healed && !this.livenessWrite) roll = 0.5;
    else if (this.healed && !this.livenessRead) roll = 0.2;
    const invokeTime = this.now;
    const deadlineMs = this.now + 3000;
    let operation: ClientOperation;
    const known = client.known.get(key);
    if (roll < 0.1 && client.lastWriteSeq > 0) {
      // A local read on any server, with read-your-writes: not linearizable, checked apart.
      operation = {
        history: { process: client.id, key, kind: 'read', value: null, invokeTime, completeTime: Infinity, outcome: 'info' },
        request: { type: 'read', key, consistency: 'local', minSeq: client.lastWriteSeq }, deadlineMs, done: false, local: true,
      };
      client.operation = operation;
      this.sendAttempt(client);
      return;
    }
    if (roll < 0.4 || (roll >= 0.8 && known === undefined)) {
      operation = {
        history: { process: client.id, key, kind: 'read', value: null, invokeTime, completeTime: Infinity, outcome: 'info' },
        request: { type: 'read', key, consistency: 'linearizable' }, deadlineMs, done: false,
      };
    } else {
      const requestId = client.nextRequestId++;
      const value = `v${client.id}.${requestId}`;
      const session = { clientId: `c${client.id}`, requestId };
      if (roll < 0.8 || known === undefined) {
        operation = {
          history: { process: client.id, key, kind: 'write', value, invokeTime, completeTime: Infinity, outcome: 'info' },
          request: { type: 'write', write: { type: 'put', key, value: textEncoder.encode(value) }, session }, deadlineMs, done: false,
        };
      } else {
        operation = {
          history: { process: client.id, key, kind: 'cas', value, expected: known.value, invokeTime, completeTime: Infinity, outcome: 'info' },
          request: { type: 'write', write: { type: 'put', key, value: textEncoder.encode(value), ifVersion: known.version }, session }, deadlineMs, done: false,
        };
      }
    }
    client.operation = operation;
    this.history.push(operation.history);
    this.sendAttempt(client);
  }

  private sendAttempt(client: Client): void {
    const operation = client.operation;
    assert(operation !== undefined, 'attempt without an operation');
    client.attempt++;
    if (client.attempt > 1) this.counters.clientRetries++;
    const target = operation.local === true ? this.random.pick(this.servers) : this.servers[client.guess] as ServerNode;
    this.send(`client:${client.id}`, target.id, { kind: 'request', attempt: client.attempt, request: operation.request });
    this.schedule(400, { type: 'attemptTimeout', client: client.id, attempt: client.attempt });
  }

  private onAttemptTimeout(client: Client, attempt: number): void {
    if (client.attempt !== attempt || client.operation === undefined) return;
    this.nextGuess(client);
    this.retryOrGiveUp(client);
  }

  private nextGuess(client: Client): void {
    client.scan = (client.scan + 1) % this.servers.length;
    client.guess = client.scan;
  }

  private retryOrGiveUp(client: Client): void {
    const operation = client.operation as ClientOperation;
    if (this.now >= operation.deadlineMs) {
      // Outcome unknown: the write may take effect at any later time (a read constrains nothing).
      operation.history.completeTime = Infinity;
      operation.history.outcome = 'info';
      this.counters.operationsUnknown++;
      this.finishOperation(client);
      return;
    }
    this.sendAttempt(client);
  }

  private onResponse(client: Client, attempt: number, response: ClientResponse): void {
    const operation = client.operation;
    if (operation === undefined || attempt !== client.attempt) return;
    const history = operation.history;
    if (response.type === 'error') {
      const error = response.error;
      if (error.code === 'PRECONDITION_FAILED' && history.kind === 'cas') {
        history.swapped = false;
        this.complete(client, 'ok');
        client.known.delete(history.key);
        return;
      }
      const answered = this.servers[client.guess]?.id;
      if (error.code === 'NOT_MAIN' && error.main !== undefined && error.main !== answered) {
        client.guess = this.servers.findIndex((node) => node.id === error.main);
      } else {
        this.nextGuess(client);
      }
      this.schedule(10, { type: 'retry', client: client.id, attempt: client.attempt });
      return;
    }
    if (response.type === 'read' && operation.local === true) {
      this.checkLocalRead(operation, response);
      this.counters.localReadsOk++;
      this.complete(client, 'ok');
      return;
    }
    if (response.type === 'read') {
      if (history.kind !== 'read') return;
      const value = response.item === undefined ? null : textDecoder.decode(response.item.value);
      history.value = value;
      client.known.set(history.key, { value, version: response.item?.version ?? 0 });
      this.counters.readsOk++;
      this.complete(client, 'ok');
      if (this.healed) this.livenessRead = true;
      return;
    }
    if (response.type === 'write') {
      const result = response.result;
      assert(result.status === 'ok', `unexpected write result ${result.status}`);
      if (history.kind === 'cas') {
        history.swapped = true;
        this.counters.casOk++;
      }
      this.counters.writesAcknowledged++;
      const previous = this.acknowledged.get(result.seq);
      if (previous !== undefined && previous.value !== history.value && this.ackQuorum > 0) {
        violated(`two writes acknowledged at seq ${result.seq}: ${previous.value} and ${history.value}`);
      }
      this.acknowledged.set(result.seq, { key: history.key, value: history.value as string, epoch: result.epoch });
      this.checkAcknowledgedAgainstCommitted(result.seq);
      client.known.set(history.key, { value: history.value, version: result.version });
      client.lastWriteSeq = Math.max(client.lastWriteSeq, result.seq);
      this.complete(client, 'ok');
      if (this.healed) this.livenessWrite = true;
    }
  }

  private complete(client: Client, outcome: 'ok' | 'fail'): void {
    const history = (client.operation as ClientOperation).history;
    history.completeTime = this.now;
    history.outcome = outcome;
    this.finishOperation(client);
  }

  private finishOperation(client: Client): void {
    client.operation = undefined;
    if (client.operationsLeft > 0) this.schedule(this.random.int(0, 50), { type: 'clientStep', client: client.id });
  }

  // ---------------------------------------------------------------- invariants

  /**
   * A local read returns the state of a committed prefix at least as new as its minSeq: the
   * value the committed log gives the key at the appliedSeq the server reports.
   */
  private checkLocalRead(operation: ClientOperation, response: ClientResponse & { type: 'read' }): void {
    if (this.ackQuorum === 0) return;
    const request = operation.request as ClientRequest & { type: 'read' };
    const minSeq = request.minSeq ?? 0;
    if (response.appliedSeq < minSeq) violated(`a local read with minSeq ${minSeq} was served at appliedSeq ${response.appliedSeq}`);
    this.extendCommittedState();
    assert(response.appliedSeq <= this.committedState.appliedSeq, 'a server applied beyond the committed log');
    const changes = this.committedChanges.get(request.key) ?? [];
    let expected: { version: number; value: string } | undefined;
    for (const change of changes) if (change.version <= response.appliedSeq) expected = change;
    const got = response.item === undefined ? undefined : { version: response.item.version, value: textDecoder.decode(response.item.value) };
    if (got?.version !== expected?.version || got?.value !== expected?.value) {
      violated(`a local read of ${request.key} at appliedSeq ${response.appliedSeq} returned ${JSON.stringify(got)}, the committed log gives ${JSON.stringify(expected)}`);
    }
  }

  /** Apply the committed log to a reference state machine, recording every key's changes. */
  private extendCommittedState(): void {
    const state = this.committedState;
    while (state.appliedSeq < this.committed.length) {
      const entry = this.committed[state.appliedSeq] as LogEntry;
      state.apply([entry]);
      if (entry.write.type !== 'put') continue;
      const stored = state.get(entry.write.key);
      if (stored?.version !== entry.seq) continue;
      const list = this.committedChanges.get(entry.write.key) ?? [];
      list.push({ version: entry.seq, value: textDecoder.decode(stored.value) });
      this.committedChanges.set(entry.write.key, list);
    }
  }

  /**
   * One main per epoch assigns each seq once, so an (epoch, seq) names one entry cluster-wide
   * (the log matching property every comparison of positions relies on). Checked on every append.
   */
  private checkEntriesUnique(node: ServerNode, entries: readonly LogEntry[]): void {
    for (const entry of entries) {
      const position = `${entry.epoch}:${entry.seq}`;
      const known = this.entryAtPosition.get(position);
      if (known === undefined) this.entryAtPosition.set(position, entry);
      else if (!sameEntry(known, entry)) violated(`${node.id} logged ${describe(entry)}, but ${describe(known)} exists at the same epoch and seq`);
    }
  }

  /** Checked whenever a server tells a client a write succeeded. */
  private checkAcknowledgedWrite(node: ServerNode, response: ClientResponse & { type: 'write' }): void {
    const core = node.core as ServerCore;
    const at = response.result.seq;
    // Acknowledged only once committed (where durability on K standbys is checked, see
    // checkCommitDurable) — possibly much earlier, for a retry answered with its recorded result.
    if (at > core.committed) violated(`${node.id} acknowledged seq ${at} above its commitSeq ${core.committed}`);
    // Compacted into the state: it was checked when it committed.
    if (at < core.firstSeq) return;
    const entry = core.entryAt(at) ?? this.committed[at - 1];
    if (entry === undefined) violated(`${node.id} acknowledged seq ${at} that it does not hold`);
    if (!this.durableOn(node, at, entry)) violated(`${node.id} acknowledged seq ${at} before it was durable on the main`);
  }

  /**
   * A record later destroyed by a detected corruption counts: it was durable when acknowledged,
   * and its server stays incomplete (out of fence quorums) until repaired.
   */
  private durableOn(node: ServerNode, at: number, entry: LogEntry): boolean {
    const durable = node.disk.entryAt(at) ?? node.disk.lostToCorruption.get(at);
    if (durable !== undefined) return sameEntry(durable, entry);
    // Below the log's start the entry is in the state (compacted, or received in a snapshot).
    return at < node.disk.logStart && node.disk.store.appliedSeq() >= at;
  }

  /** When a main commits seqs (from, to], each is durable on it and on K standbys of its map. */
  private checkCommitDurable(node: ServerNode, core: ServerCore, from: number, to: number): void {
    const map = core.currentMap;
    const quorum = map?.ackQuorum ?? 0;
    const standbys = this.servers.filter((other) => other !== node && map?.members.some((member) => member.id === other.id && member.role === 'standby'));
    for (let at = from; at <= to; at++) {
      const entry = core.entryAt(at);
      if (entry === undefined) continue;
      if (!this.durableOn(node, at, entry)) violated(`${node.id} committed seq ${at} before it was durable on the main`);
      const holders = standbys.filter((other) => this.durableOn(other, at, entry)).length;
      if (holders < quorum) {
        const where = standbys.map((other) => `${other.id}: log ${other.disk.logStart}..${other.disk.lastSeq}, state at ${other.disk.store.appliedSeq()}${other.disk.lostToCorruption.has(at) ? ', lost to corruption' : ''}`).join('; ');
        violated(`${node.id} committed seq ${at} durable on ${holders} standbys, K = ${quorum} (map version ${map?.version}; ${where})`);
      }
    }
  }

  private checkAcknowledgedAgainstCommitted(at: number): void {
    if (this.ackQuorum === 0) return;
    const acknowledged = this.acknowledged.get(at);
    const entry = this.committed[at - 1];
    if (acknowledged === undefined || entry === undefined) return;
    if (!entryWrites(entry, acknowledged.key, acknowledged.value)) {
      violated(`acknowledged write ${acknowledged.key}=${acknowledged.value} at seq ${at} was lost: the committed entry is ${describe(entry)}`);
    }
  }

  private checkInvariants(): void {
    for (const node of this.servers) {
      const core = node.core;
      const durableEpoch = node.disk.durableMeta.promisedEpoch;
      if (durableEpoch < node.durableEpochSeen) violated(`${node.id} durable promised epoch went back from ${node.durableEpochSeen} to ${durableEpoch}`);
      node.durableEpochSeen = durableEpoch;
      if (core === undefined) continue;
      const applied = core.applied;
      const commit = core.committed;
      // With K = 0 a failover may lose committed entries (SPEC.md section 3): a server then cuts
      // its commitSeq and rebuilds its state, and the committed log of the cluster may change.
      const asynchronous = this.ackQuorum === 0;
      // Only a snapshot install (the 'snapshotStarted' event) empties the state.
      if (applied < node.appliedSeen && !asynchronous) violated(`${node.id} appliedSeq went back from ${node.appliedSeen} to ${applied}`);
      node.appliedSeen = applied;
      if (commit < node.commitSeen && !asynchronous) violated(`${node.id} commitSeq went back from ${node.commitSeen} to ${commit}`);
      if (applied > commit) violated(`${node.id} appliedSeq ${applied} is above commitSeq ${commit}`);
      if (commit > node.commitSeen && this.trace !== undefined && (commit - node.commitSeen > 5 || !core.isMain)) this.log(`${node.id} commitSeq ${node.commitSeen} -> ${commit} (main: ${core.isMain}, lastSeq ${core.lastSeq})`);
      if (commit > node.commitSeen && core.isMain) {
        this.checkCommitDurable(node, core, node.commitSeen + 1, commit);
        const epochAsMain = core.epochAsMain as number;
        const committer = this.committerOfEpoch.get(epochAsMain);
        if (committer !== undefined && committer !== node.id) violated(`two mains committed in epoch ${epochAsMain}: ${committer} and ${node.id}`);
        this.committerOfEpoch.set(epochAsMain, node.id);
      }
      node.commitSeen = commit;
      if (!asynchronous) this.checkCommittedPrefix(node, core);
    }
    this.checkFailoverSafety();
  }

  /**
   * Every committed entry survives every failover the fence rule allows, checked now rather than
   * waiting for one: for each set of S − K + 1 complete standbys (the main excluded) the server the
   * manager would appoint — the highest durable (lastEpoch, lastSeq) — holds the last committed
   * entry (and so, by log matching, all before it). Raft's "figure 8" breaks this at once.
   */
  private checkFailoverSafety(): void {
    const committedLength = this.committed.length;
    if (this.ackQuorum === 0 || committedLength === 0) return;
    const durable = this.managerDurable;
    const main = durable.main ?? durable.previousMain;
    const stateKey = `${committedLength}|${main}|${durable.mapVersion}|${this.servers.map((node) => node.disk.changes).join(',')}`;
    if (stateKey === this.failoverSafetyCheckedFor) return;
    this.failoverSafetyCheckedFor = stateKey;
    const last = this.committed[committedLength - 1] as LogEntry;
    // The configurations in force: the current one, and the previous one while a change is joint.
    const configurations = [{ members: durable.members, ackQuorum: durable.ackQuorum }];
    if (durable.jointWith !== null) configurations.push(durable.jointWith);
    const memberIds = new Set(configurations.flatMap((configuration) => configuration.members.map((member) => member.id as string)));
    const repliers = this.servers.filter((node) => node.id !== main && memberIds.has(node.id) && !node.disk.durableMeta.incomplete && !node.disk.hasFlippedRecord);
    const current = new Set(durable.members.map((member) => member.id as string));
    const rules = configurations.map((configuration) => {
      const standbys = new Set(configuration.members.filter((member) => member.role === 'standby' && member.id !== main).map((member) => member.id as string));
      return { standbys, need: configuration.ackQuorum === 0 ? 1 : Math.max(1, standbys.size - configuration.ackQuorum + 1) };
    });
    const position = (node: ServerNode): [number, number] => [node.disk.lastEpoch, node.disk.lastSeq];
    const higher = (a: ServerNode, b: ServerNode): boolean => {
      const [ea, sa] = position(a);
      const [eb, sb] = position(b);
      return ea > eb || (ea === eb && sa > sb);
    };
    // Every set of fence replies the manager would accept (at most 2^6 sets of servers).
    for (let mask = 1; mask < 1 << repliers.length; mask++) {
      const subset = repliers.filter((_, i) => (mask >> i) & 1);
      if (!rules.every((rule) => subset.filter((node) => rule.standbys.has(node.id)).length >= rule.need)) continue;
      const candidates = subset.filter((node) => current.has(node.id));
      if (candidates.length === 0) continue;
      let chosen = candidates[0] as ServerNode;
      for (const node of candidates) if (higher(node, chosen)) chosen = node;
      const held = chosen.disk.entryAt(committedLength);
      if (!this.durableOn(chosen, committedLength, last)) {
        const configuration = configurations.map((c) => `K=${c.ackQuorum} ${c.members.map((member) => `${member.id}:${member.role}`).join(',')}`).join(' joint with ');
        violated(`a failover now could lose committed seq ${committedLength}: fence replies from ${subset.map((node) => node.id).join(', ')} would appoint ${chosen.id} at (${position(chosen).join(', ')}), which ${held === undefined ? `lacks it (its durable log starts at ${chosen.disk.logStart}, its state is at ${chosen.disk.store.appliedSeq()})` : `holds ${describe(held)}`} (main ${main}; ${configuration})`);
      }
    }
  }

  /** Committed prefixes of all servers agree: extend the cluster's committed log or match it. */
  private checkCommittedPrefix(node: ServerNode, core: ServerCore): void {
    const commit = core.committed;
    if (commit <= node.checkedUpTo) return;
    const from = Math.max(node.checkedUpTo + 1, core.firstSeq);
    for (let at = from; at <= commit; at++) {
      const entry = core.entryAt(at);
      if (entry === undefined) continue; // Cut by corruption on an incomplete server.
      const known = this.committed[at - 1];
      if (known === undefined) {
        assert(at === this.committed.length + 1 || this.committed[at - 2] !== undefined || at > this.committed.length, 'committed log hole');
        if (at !== this.committed.length + 1) continue;
        this.committed.push(entry);
        this.checkAcknowledgedAgainstCommitted(at);
      } else if (!sameEntry(known, entry)) {
        violated(`committed prefixes disagree at seq ${at}: ${node.id} has ${describe(entry)}, the cluster committed ${describe(known)}`);
      }
    }
    node.checkedUpTo = commit;
  }

  private finalChecks(): void {
    this.checkConvergence();
    // K = 0 gives up the rest (SPEC.md section 3): a failover may lose acknowledged writes.
    if (this.ackQuorum === 0) return;
    // Every acknowledged write is in the committed log.
    for (const [at, acknowledged] of this.acknowledged) {
      const entry = this.committed[at - 1];
      if (entry === undefined) violated(`acknowledged write ${acknowledged.key}=${acknowledged.value} at seq ${at} is not in the committed log`);
      if (!entryWrites(entry, acknowledged.key, acknowledged.value)) violated(`acknowledged write at seq ${at} lost`);
    }
    let verdict;
    try {
      verdict = checkLinearizability(this.history);
    } catch (error) {
      // The checker gave up (its search limit): an unknown verdict is a failure, never a pass.
      throw new InvariantViolation(`unknown linearizability verdict: ${(error as Error).message}`);
    }
    if (!verdict.linearizable) {
      const bad = verdict.keys.find((key) => !key.linearizable);
      violated(`history is not linearizable on key ${bad?.key}: ${bad?.explanation ?? ''}`);
    }
  }

  /** Once clients stop, every server reaches the main's log and state, within a bounded time. */
  private checkConvergence(): void {
    for (const client of this.clients) client.operationsLeft = 0;
    const boundMs = 10_000;
    const converged = (): boolean => {
      const main = this.currentMain()?.core;
      if (main === undefined || main.committed !== main.lastSeq) return false;
      const lastEpoch = main.lastEpoch;
      const members = new Set(this.managerDurable.members.map((member) => member.id as string));
      return this.servers.filter((node) => members.has(node.id)).every((node) => node.core !== undefined && node.core.lastSeq === main.lastSeq
        && node.core.lastEpoch === lastEpoch
        && node.core.committed === main.committed && node.core.applied === main.committed
        && node.disk.lastSeq === main.lastSeq);
    };
    this.loop(this.now + boundMs, () => this.clientsIdle() && converged());
    if (!converged()) {
      const state = this.servers.map((node) => `${node.id}: ${node.core === undefined ? 'down' : `main=${node.core.isMain} lastSeq=${node.core.lastSeq} commit=${node.core.committed} applied=${node.core.applied} incomplete=${node.core.isIncomplete}`}`);
      violated(`servers did not converge within ${boundMs} ms after the workload stopped: ${state.join('; ')}`);
    }
    const reference = this.currentMain() as ServerNode;
    const members = new Set(this.managerDurable.members.map((member) => member.id as string));
    for (const node of this.servers.filter((candidate) => members.has(candidate.id))) {
      for (let at = Math.max(node.disk.logStart, reference.disk.logStart); at <= reference.disk.lastSeq; at++) {
        const mine = node.disk.entryAt(at) as LogEntry;
        const theirs = reference.disk.entryAt(at) as LogEntry;
        if (!sameEntry(mine, theirs)) violated(`after convergence ${node.id} and the main ${reference.id} differ at seq ${at}`);
      }
      const mine = [...node.disk.store.data].sort(([a], [b]) => (a < b ? -1 : 1));
      const theirs = [...reference.disk.store.data].sort(([a], [b]) => (a < b ? -1 : 1));
      const text = (items: typeof mine): string => items.map(([key, stored]) => `${key}=${textDecoder.decode(stored.value)}@${stored.version}`).join(',');
      if (text(mine) !== text(theirs)) violated(`after convergence ${node.id}'s state differs from the main's: ${text(mine)} vs ${text(theirs)}`);
    }
  }
}

const writeKeys = new WeakMap<object, string>();

function writeKey(entry: LogEntry): string {
  let key = writeKeys.get(entry.write);
  if (key === undefined) {
    const write = entry.write;
    key = write.type === 'put' ? `put:${write.key}:${textDecoder.decode(write.value)}:${write.ifVersion}:${write.ifAbsent}` : JSON.stringify(write);
    key += `|${entry.session?.clientId}/${entry.session?.requestId}`;
    writeKeys.set(entry.write, key);
  }
  return key;
}

function sameEntry(a: LogEntry, b: LogEntry): boolean {
  return a === b || (a.epoch === b.epoch && a.seq === b.seq && writeKey(a) === writeKey(b));
}

function entryWrites(entry: LogEntry, key: string, value: string): boolean {
  return entry.write.type === 'put' && entry.write.key === key && textDecoder.decode(entry.write.value) === value;
}

function describeMessage(message: PeerMessage): string {
  if (message.type === 'append') {
    const { entries, ...rest } = message;
    return JSON.stringify({ ...rest, entries: entries.length === 0 ? [] : [entries[0]?.seq, entries[entries.length - 1]?.seq] });
  }
  return JSON.stringify(message);
}

function describe(entry: LogEntry): string {
  return `(epoch ${entry.epoch}, seq ${entry.seq}, ${writeKey(entry)})`;
}
