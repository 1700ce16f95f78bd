// The floor under any durable, replicated write on this machine, measured in the same run: this
// disk's fsync latency (4 KiB appended to a file, then fdatasync — what a log does; also 128 bytes
// appended, and 4 KiB overwritten in a preallocated file) and the loopback round trip (1 byte to a TCP echo server in another
// process and back). For context it also times a minimal HTTP round trip to a Node.js server in
// another process (the cost of the HTTP stack alone, with nothing behind it).

import { closeSync, fdatasyncSync, fsyncSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { connect as connectTcp } from 'node:net';
import { join } from 'node:path';
import { Client as UndiciClient } from 'undici';
import { launch, latencyHistogram, percentileMs, removeDirectory, stopProcess, temporaryDirectory, waitFor } from './common.ts';

export interface Floor {
  /** 4 KiB appended, then fdatasync: p50 and p99, ms. */
  fsyncAppendP50Ms: number;
  fsyncAppendP99Ms: number;
  /** 128 bytes appended (about one small log entry), then fdatasync. */
  fsyncSmallAppendP50Ms: number;
  /** 4 KiB overwritten in a preallocated file, then fdatasync. */
  fsyncOverwriteP50Ms: number;
  tcpRoundTripP50Ms: number;
  tcpRoundTripP99Ms: number;
  /** PUT of 100 bytes to a Node.js HTTP server that answers at once, over keep-alive (undici). */
  httpRoundTripP50Ms: number;
  /** fsyncAppendP50Ms + tcpRoundTripP50Ms. */
  floorMs: number;
}

const blockBytes = 4096;
const smallBytes = 128;

interface Bounds {
  count: number;
  milliseconds: number;
}

function fsyncLatencies(path: string, mode: 'append' | 'overwrite', bytes: number, bounds: Bounds): { p50: number; p99: number } {
  const histogram = latencyHistogram();
  const block = Buffer.alloc(bytes, 0x61);
  const fd = openSync(path, 'w');
  try {
    const slots = 256;
    if (mode === 'overwrite') {
      for (let slot = 0; slot < slots; slot++) writeSync(fd, block, 0, bytes, slot * bytes);
      fsyncSync(fd);
    }
    const deadline = performance.now() + bounds.milliseconds;
    for (let i = 0; i < bounds.count && performance.now() < deadline; i++) {
      const begin = performance.now();
      writeSync(fd, block, 0, bytes, mode === 'append' ? i * bytes : (i % slots) * bytes);
      fdatasyncSync(fd);
      histogram.recordValue(Math.max(1, Math.round((performance.now() - begin) * 1000)));
    }
  } finally {
    closeSync(fd);
    unlinkSync(path);
  }
  return { p50: percentileMs(histogram, 50), p99: percentileMs(histogram, 99) };
}

/** A server in another process: a TCP echo on one port, an HTTP server answering 200 on another. */
const echoServerSource = `
const net = require('node:net'); const http = require('node:http');
const echo = net.createServer((socket) => { socket.setNoDelay(true); socket.pipe(socket); });
const web = http.createServer({ keepAlive: true }, (request, response) => {
  request.resume(); request.on('end', () => { response.writeHead(200, { 'content-type': 'application/json' }); response.end('{"seq":1}'); });
});
echo.listen(0, '127.0.0.1', () => web.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ echo: echo.address().port, http: web.address().port }))));
`;

async function roundTrips(bounds: Bounds): Promise<{ tcpP50: number; tcpP99: number; httpP50: number }> {
  const server = launch('echo', process.execPath, ['-e', echoServerSource]);
  try {
    const ports = await waitFor('the echo server', 10_000, async () => {
      const line = server.output.join('').split('\n')[0];
      return line !== undefined && line.startsWith('{') ? JSON.parse(line) as { echo: number; http: number } : undefined;
    }, 20, [server]);
    // TCP: one byte there and back, strictly one at a time.
    const socket = connectTcp({ host: '127.0.0.1', port: ports.echo, noDelay: true });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const tcp = latencyHistogram();
    try {
      const deadline = performance.now() + bounds.milliseconds;
      const byte = Buffer.from([1]);
      for (let i = 0; i < bounds.count && performance.now() < deadline; i++) {
        const begin = performance.now();
        await new Promise<void>((resolve, reject) => {
          socket.once('data', () => resolve());
          socket.write(byte, (error) => { if (error) reject(error); });
        });
        tcp.recordValue(Math.max(1, Math.round((performance.now() - begin) * 1000)));
      }
    } finally {
      socket.destroy();
    }
    // HTTP: the same client the bench uses for Mainstay, against a server that does nothing.
    const client = new UndiciClient(`http://127.0.0.1:${ports.http}`, { pipelining: 1 });
    const http = latencyHistogram();
    try {
      const body = Buffer.alloc(100, 0x61);
      const deadline = performance.now() + bounds.milliseconds;
      for (let i = 0; i < bounds.count && performance.now() < deadline; i++) {
        const begin = performance.now();
        const response = await client.request({ path: '/v1/kv/key0000000001', method: 'PUT', body });
        await response.body.text();
        http.recordValue(Math.max(1, Math.round((performance.now() - begin) * 1000)));
      }
    } finally {
      await client.destroy();
    }
    return { tcpP50: percentileMs(tcp, 50), tcpP99: percentileMs(tcp, 99), httpP50: percentileMs(http, 50) };
  } finally {
    await stopProcess(server);
  }
}

export async function measureFloor(): Promise<Floor> {
  // In the folder the clusters' data goes to, so on the same disk.
  const directory = await temporaryDirectory('mainstay-bench-floor-');
  try {
    const bounds = { count: 2000, milliseconds: 5000 };
    const append = fsyncLatencies(join(directory, 'append'), 'append', blockBytes, bounds);
    const smallAppend = fsyncLatencies(join(directory, 'small'), 'append', smallBytes, bounds);
    const overwrite = fsyncLatencies(join(directory, 'overwrite'), 'overwrite', blockBytes, bounds);
    const trips = await roundTrips({ count: 5000, milliseconds: 3000 });
    return {
      fsyncAppendP50Ms: append.p50,
      fsyncAppendP99Ms: append.p99,
      fsyncSmallAppendP50Ms: smallAppend.p50,
      fsyncOverwriteP50Ms: overwrite.p50,
      tcpRoundTripP50Ms: trips.tcpP50,
      tcpRoundTripP99Ms: trips.tcpP99,
      httpRoundTripP50Ms: trips.httpP50,
      floorMs: append.p50 + trips.tcpP50,
    };
  } finally {
    await removeDirectory(directory);
  }
}
