// `GET /v1/snapshot`: streams a consistent snapshot of this server's key-value state in the backup
// format (src/storage/backup-format.ts), for `mainstay backup`. The snapshot is one LMDB read
// transaction (LmdbKvStore.openSnapshotOfApplied), so the server goes on taking writes while it
// streams; it is opened once every batch applied when the request arrived has reached LMDB, so a
// backup holds every write this server acknowledged before it was asked (LMDB's last transaction
// alone can trail the applied state by the batches still in the store's overlay). The response
// headers say which seq and epoch it is at. It sends a chunk only when the client has
// taken the one before (backpressure) and yields to the event loop between chunks, so a large
// snapshot neither fills memory nor starves the server's protocol work. A response cut short by
// an error or a disconnect lacks the trailer, which every reader refuses as truncated.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { crc32 } from 'node:zlib';
import { BackupEncoder } from '../storage/backup-format.ts';
import type { LmdbKvStore } from '../storage/lmdb-store.ts';
import type { KvSnapshot } from '../storage/snapshot.ts';
import { snapshotChunkBytesDefault } from '../storage/snapshot.ts';

export const snapshotPath = '/v1/snapshot';
export const backupContentType = 'application/vnd.mainstay.backup';

/** Response headers naming the snapshot's position and size. */
export const snapshotHeaders = {
  seq: 'mainstay-snapshot-seq',
  epoch: 'mainstay-snapshot-epoch',
  keys: 'mainstay-snapshot-keys',
  sessions: 'mainstay-snapshot-sessions',
} as const;

export interface SnapshotRequestOptions {
  /** Bytes of keys and values per chunk (default 1 MiB). */
  chunkBytes?: number;
  /** The clock the header's createdAtMs comes from (default Date.now). */
  nowMs?: () => number;
  /** Told about a stream that failed after its headers were sent (the client sees it cut short). */
  onError?: (error: unknown) => void;
}

function sendError(response: ServerResponse, status: number, code: string, message: string, headers: Record<string, string> = {}): void {
  response.writeHead(status, { 'content-type': 'application/json', ...headers });
  response.end(`${JSON.stringify({ error: { code, message, definite: true } })}\n`);
}

/** Resolves when the response can take more, or has closed (then `response.destroyed` or `closed` says so). */
function drained(response: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      response.off('drain', done);
      response.off('close', done);
      resolve();
    };
    response.on('drain', done);
    response.on('close', done);
  });
}

/** Serves GET /v1/snapshot from `store`. Resolves once the response has ended or was abandoned. */
export async function handleSnapshotRequest(store: LmdbKvStore, request: IncomingMessage, response: ServerResponse, options: SnapshotRequestOptions = {}): Promise<void> {
  if (request.method !== 'GET') {
    sendError(response, 405, 'METHOD_NOT_ALLOWED', `Use GET on ${snapshotPath}`, { allow: 'GET' });
    return;
  }
  // The request has no body; drain whatever came so the connection can be reused.
  request.resume();
  // Listening from the start: the client may go away while the snapshot waits for LMDB.
  let closed = false;
  const onClose = (): void => {
    closed = true;
  };
  response.on('close', onClose);
  let snapshot: KvSnapshot;
  try {
    snapshot = await store.openSnapshotOfApplied();
  } catch (error) {
    response.off('close', onClose);
    if (!closed) sendError(response, 503, 'UNAVAILABLE', `Cannot take a snapshot now: ${(error as Error).message}`);
    return;
  }
  try {
    if (closed) return;
    const encoder = new BackupEncoder({
      seq: snapshot.seq, epoch: snapshot.epoch, createdAtMs: Math.floor((options.nowMs ?? Date.now)()),
      keyCount: snapshot.keyCount, sessionCount: snapshot.sessionCount,
    }, crc32);
    response.writeHead(200, {
      'content-type': backupContentType,
      'content-disposition': `attachment; filename="mainstay-${snapshot.seq}.backup"`,
      'cache-control': 'no-store',
      [snapshotHeaders.seq]: String(snapshot.seq),
      [snapshotHeaders.epoch]: String(snapshot.epoch),
      [snapshotHeaders.keys]: String(snapshot.keyCount),
      [snapshotHeaders.sessions]: String(snapshot.sessionCount),
    });
    const send = async (bytes: Uint8Array): Promise<void> => {
      if (!response.write(bytes)) await drained(response);
    };
    await send(encoder.header());
    for (const chunk of snapshot.chunks(options.chunkBytes ?? snapshotChunkBytesDefault)) {
      if (closed) return;
      await send(encoder.chunk(chunk));
      // Reading and encoding a chunk is synchronous: let the server's other work run between them.
      await nextTurn();
    }
    if (closed) return;
    response.end(encoder.trailer());
  } catch (error) {
    if (!response.headersSent) {
      sendError(response, 500, 'INTERNAL', `Cannot stream the snapshot: ${(error as Error).message}`);
    } else {
      options.onError?.(error);
      // Without its trailer the stream is refused as truncated by every reader.
      response.destroy(error as Error);
    }
  } finally {
    response.off('close', onClose);
    snapshot.close();
  }
}
