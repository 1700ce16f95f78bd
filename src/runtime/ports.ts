// Free TCP ports for local clusters (the chaos harness, tests, benchmarks): all of them reserved
// at once and held until released. Ports taken one at a time and freed at once can come back
// twice, and a listener started while they are held cannot take one of them either.

import { createServer, type Server } from 'node:net';

export async function reservePorts(count: number, host = '127.0.0.1'): Promise<{ ports: number[]; release: () => Promise<void> }> {
  const servers = await Promise.all(Array.from({ length: count }, () => new Promise<Server>((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => resolve(server));
  })));
  return {
    ports: servers.map((server) => (server.address() as { port: number }).port),
    release: async () => {
      await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
    },
  };
}

/** `count` distinct ports that were free a moment ago. */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const reserved = await reservePorts(count, host);
  await reserved.release();
  return reserved.ports;
}
