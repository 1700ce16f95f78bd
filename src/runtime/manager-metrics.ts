// Prometheus metrics of the manager process (prom-client), served at GET /metrics: the cluster as
// the manager sees it (epoch, whether a main is present, K, servers reporting, standbys in contact,
// configuration changes pending, each server's position and lag behind the main), counters of the
// core's events (failovers by reason, fence quorum waits, appointments and how long they took,
// switchovers, configuration changes), the TCP transport, and the process. It observes; the
// core decides. Alert rules built on these are in docs/ops/alert-rules.yml.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { FailoverCause, ManagerCore, ManagerEvent } from '../core/manager.ts';
import { failoverCauses } from '../core/manager.ts';
import type { StatusMessage } from '../protocol/messages.ts';
import { serverId } from '../protocol/types.ts';
import type { TransportStatsSource } from './metrics.ts';
import { registerProcessMetrics, registerTransportMetrics } from './metrics.ts';

/** The `reason` label of each failover cause the core reports (Prometheus label style). */
const causeLabels: Record<FailoverCause, string> = {
  initial: 'initial', mainRestarted: 'main_restarted', mainDidNotStart: 'main_did_not_start', mainSilent: 'main_silent',
  mainConnectionClosed: 'main_connection_closed', mainIsolated: 'main_isolated', switchover: 'switchover',
};

/** Bounds of the failover duration histogram (fence to appointment), in seconds. */
export const failoverSecondsBuckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export interface ManagerMetricsOptions {
  /** A server's status older than this does not count as reporting (the manager's statusFreshMs; default 1000). */
  statusFreshMs?: number;
  /** The peer transport. */
  transport?: TransportStatsSource;
  /** prom-client's default process metrics (default true). */
  processMetrics?: boolean;
}

export class ManagerMetrics {
  private readonly registry = new Registry();
  private readonly failovers: Counter<'reason'>;
  private readonly appointments: Counter;
  private readonly failoverSeconds: Histogram;
  private readonly fenceQuorumWaits: Counter;
  private readonly switchoversRequested: Counter;
  private readonly switchoversAbandoned: Counter;
  private readonly configurationChanges: Counter;

  constructor(core: ManagerCore, options: ManagerMetricsOptions = {}) {
    const registry = this.registry;
    const statusFreshMs = options.statusFreshMs ?? 1000;

    this.failovers = new Counter({
      name: 'mainstay_manager_failovers_total', help: 'Failovers started (epoch raised, servers fenced), by cause; "initial" is a new cluster\'s first appointment',
      labelNames: ['reason'], registers: [registry],
    });
    for (const cause of failoverCauses) this.failovers.inc({ reason: causeLabels[cause] }, 0);
    this.appointments = new Counter({ name: 'mainstay_manager_appointments_total', help: 'Mains appointed at the end of a failover', registers: [registry] });
    this.failoverSeconds = new Histogram({
      name: 'mainstay_manager_failover_seconds', help: 'Time from the start of a failover to the appointment of a main',
      buckets: failoverSecondsBuckets, registers: [registry],
    });
    this.fenceQuorumWaits = new Counter({
      name: 'mainstay_manager_fence_quorum_waits_total', help: 'Times a failover could not appoint a main yet for want of fence replies (counted when the tally changes)',
      registers: [registry],
    });
    this.switchoversRequested = new Counter({ name: 'mainstay_manager_switchovers_requested_total', help: 'Planned switchovers accepted', registers: [registry] });
    this.switchoversAbandoned = new Counter({ name: 'mainstay_manager_switchovers_abandoned_total', help: 'Planned switchovers abandoned because the main did not get ready in time', registers: [registry] });
    this.configurationChanges = new Counter({ name: 'mainstay_manager_configuration_changes_total', help: 'Configuration changes announced (members added, demoted, promoted or removed; K changed; joint phases ended)', registers: [registry] });

    /** A server's status if it is fresh. */
    const fresh = (id: string): StatusMessage | undefined => {
      const seen = core.serverStatus(serverId(id));
      return seen !== undefined && seen.ageMs <= statusFreshMs ? seen.status : undefined;
    };
    /** The main's status, if a main is appointed and reports acting as main in the current epoch. */
    const actingMain = (): StatusMessage | undefined => {
      const state = core.currentState;
      if (state.phase !== 'stable' || state.main === null) return undefined;
      const status = fresh(state.main);
      return status?.role === 'main' && status.promisedEpoch === state.epoch ? status : undefined;
    };
    const standbyIds = (): string[] => {
      const state = core.currentState;
      return state.members.filter((member) => member.role === 'standby' && member.id !== state.main).map((member) => member.id);
    };
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
    };
    const perServer = (name: string, help: string, read: (id: string) => number | undefined): void => {
      new Gauge<'server'>({
        name, help, labelNames: ['server'], registers: [registry],
        collect() {
          this.reset();
          for (const member of core.currentState.members) {
            const value = read(member.id);
            if (value !== undefined) this.set({ server: member.id }, value);
          }
        },
      });
    };

    gauge('mainstay_manager_epoch', 'The epoch the manager is in (raised at the start of every failover)', () => core.currentState.epoch);
    gauge('mainstay_manager_map_version', 'Version of the cluster map last persisted', () => core.currentState.mapVersion);
    gauge('mainstay_manager_main_present', '1 if a main is appointed and reports acting as main in the current epoch', () => (actingMain() === undefined ? 0 : 1));
    gauge('mainstay_manager_failover_in_progress', '1 while a failover is fencing servers and no main is appointed', () => (core.currentState.phase === 'fencing' ? 1 : 0));
    gauge('mainstay_manager_ack_quorum', 'K: standbys that must hold a write before it is acknowledged', () => core.currentState.ackQuorum);
    gauge('mainstay_manager_standbys', 'Standby-role members besides the main (S)', () => standbyIds().length);
    gauge('mainstay_manager_learners', 'Learner members (receive the log, count toward nothing)', () => core.currentState.members.filter((member) => member.role === 'learner').length);
    gauge('mainstay_manager_servers_reporting', 'Members whose status is fresh', () => core.currentState.members.filter((member) => fresh(member.id) !== undefined).length);
    gauge('mainstay_manager_standbys_reporting_complete', 'Standbys besides the main that report fresh status with a complete log (those that can answer a fence)', () =>
      standbyIds().filter((id) => fresh(id)?.incomplete === false).length);
    gauge('mainstay_manager_standbys_in_contact', 'Standbys the main reports in contact (acknowledging recently); 0 when no main reports. Fewer than K means writes cannot commit', () =>
      actingMain()?.standbysInContact ?? 0);
    gauge('mainstay_manager_configuration_change_pending', '1 while a configuration change (removal, raising K) awaits the main\'s confirmation', () => {
      const state = core.currentState;
      return state.jointWith !== null || state.pendingRemoval !== null ? 1 : 0;
    });

    perServer('mainstay_manager_server_up', '1 if the server\'s status is fresh', (id) => (fresh(id) === undefined ? 0 : 1));
    perServer('mainstay_manager_server_is_main', '1 for the appointed main', (id) => (core.currentState.main === id ? 1 : 0));
    perServer('mainstay_manager_server_status_age_seconds', 'Age of the server\'s last status report', (id) => {
      const seen = core.serverStatus(serverId(id));
      return seen === undefined ? undefined : seen.ageMs / 1000;
    });
    const lastStatus = (id: string): StatusMessage | undefined => core.serverStatus(serverId(id))?.status;
    perServer('mainstay_manager_server_epoch', 'Epoch the server last reported promising', (id) => lastStatus(id)?.promisedEpoch);
    perServer('mainstay_manager_server_last_seq', 'Durable last seq the server last reported', (id) => lastStatus(id)?.lastSeq);
    perServer('mainstay_manager_server_commit_seq', 'commitSeq the server last reported', (id) => lastStatus(id)?.commitSeq);
    perServer('mainstay_manager_server_applied_seq', 'appliedSeq the server last reported', (id) => lastStatus(id)?.appliedSeq);
    perServer('mainstay_manager_server_incomplete', '1 if the server last reported an incomplete log (it cannot answer a fence or become main until repaired)', (id) => {
      const status = lastStatus(id);
      return status === undefined ? undefined : status.incomplete ? 1 : 0;
    });
    perServer('mainstay_manager_server_lag_entries', 'Entries of the main\'s durable log a server does not hold, from the last reports of both (so approximate); absent for the main, for a server not reporting, and while no main reports', (id) => {
      const main = actingMain();
      const status = fresh(id);
      if (main === undefined || status === undefined || id === core.currentState.main) return undefined;
      return Math.max(0, main.lastSeq - status.lastSeq);
    });

    registerTransportMetrics(registry, () => options.transport);
    if (options.processMetrics ?? true) registerProcessMetrics(registry);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** An event effect of the core (the shell also logs it). */
  onEvent(event: ManagerEvent | undefined): void {
    switch (event?.type) {
      case 'failoverStarted':
        this.failovers.inc({ reason: causeLabels[event.cause] });
        break;
      case 'appointed':
        this.appointments.inc();
        this.failoverSeconds.observe(event.tookMs / 1000);
        break;
      case 'fenceQuorumWait':
        this.fenceQuorumWaits.inc();
        break;
      case 'switchoverRequested':
        this.switchoversRequested.inc();
        break;
      case 'switchoverAbandoned':
        this.switchoversAbandoned.inc();
        break;
      case 'configurationChanged':
        this.configurationChanges.inc();
        break;
      case undefined:
        break;
    }
  }

  /** Serves GET /metrics; returns false for any other path, which the caller serves. */
  serve(request: IncomingMessage, response: ServerResponse): boolean {
    if (new URL(request.url ?? '/', 'http://manager').pathname !== '/metrics') return false;
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { 'content-type': 'application/json', 'allow': 'GET, HEAD' });
      response.end(`${JSON.stringify({ error: { code: 'METHOD_NOT_ALLOWED', message: 'Use GET on /metrics', definite: true } })}\n`);
      return true;
    }
    this.render().then((text) => {
      response.writeHead(200, { 'content-type': this.contentType });
      response.end(request.method === 'HEAD' ? undefined : text);
    }, (error: unknown) => {
      response.writeHead(500, { 'content-type': 'application/json' });
      response.end(`${JSON.stringify({ error: { code: 'INTERNAL', message: `Cannot render the metrics: ${(error as Error).message}`, definite: true } })}\n`);
    });
    return true;
  }
}
