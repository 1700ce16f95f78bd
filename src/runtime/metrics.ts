// Prometheus metrics of a server process (prom-client): request counts and latency by kind and
// outcome, the log positions, and counters of the core's notable events.

import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ServerCore, ServerEventCode } from '../core/server.ts';
import type { ClientRequest, ClientResponse } from '../protocol/types.ts';

export class ServerMetrics {
  private readonly registry = new Registry();
  private readonly requests: Counter<'kind' | 'outcome'>;
  private readonly latency: Histogram<'kind'>;
  private readonly events: Counter<'code'>;

  constructor(core: ServerCore) {
    const registry = this.registry;
    this.requests = new Counter({ name: 'mainstay_requests_total', help: 'Client requests by kind and outcome (ok or error code)', labelNames: ['kind', 'outcome'], registers: [registry] });
    this.latency = new Histogram({
      name: 'mainstay_request_seconds', help: 'Client request latency', labelNames: ['kind'], registers: [registry],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    });
    this.events = new Counter({ name: 'mainstay_server_events_total', help: 'Notable server events (role changes, truncations, repairs, duplicates absorbed)', labelNames: ['code'], registers: [registry] });
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({ name, help, registers: [registry], collect() { this.set(read()); } });
    };
    gauge('mainstay_epoch', 'Promised epoch', () => core.promised);
    gauge('mainstay_is_main', '1 if this server acts as the main', () => (core.isMain ? 1 : 0));
    gauge('mainstay_last_seq', 'Last seq in the log', () => core.lastSeq);
    gauge('mainstay_commit_seq', 'Highest seq known committed', () => core.committed);
    gauge('mainstay_applied_seq', 'Highest seq applied to the state', () => core.applied);
    gauge('mainstay_incomplete', '1 if the log is incomplete (awaiting repair)', () => (core.isIncomplete ? 1 : 0));
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }

  observeRequest(request: ClientRequest, response: ClientResponse, elapsedMs: number): void {
    const outcome = response.type === 'error' ? response.error.code : 'ok';
    this.requests.inc({ kind: request.type, outcome });
    this.latency.observe({ kind: request.type }, elapsedMs / 1000);
  }

  onEvent(code: ServerEventCode): void {
    this.events.inc({ code });
  }
}
