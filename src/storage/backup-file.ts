// Backup files on disk: reading one as a stream of verified snapshot chunks (for restore), and
// checking one whole. The format and its checks are backup-format.ts; this module only reads.

import { createReadStream } from 'node:fs';
import { crc32 } from 'node:zlib';
import type { BackupHeader, BackupSummary } from './backup-format.ts';
import { BackupDecoder, BackupFormatError } from './backup-format.ts';
import type { SnapshotChunk } from '../core/kv.ts';

/** Bytes read from the file at a time. */
const readBytes = 1024 * 1024;

export interface BackupProgress {
  header: BackupHeader | undefined;
  keysRead: number;
  bytesRead: number;
}

/**
 * The chunks of a backup file, each returned only once verified; the header comes first through
 * `onHeader`, before any chunk. Throws a BackupFormatError (naming the file) when the file is not
 * a whole, intact backup, at the point where that shows — so a consumer must treat what it got
 * before as unusable. Returns the summary when the file ended with a valid trailer.
 */
export async function* readBackupChunks(path: string, handlers: { onHeader?: (header: BackupHeader) => void; onProgress?: (progress: BackupProgress) => void } = {}): AsyncGenerator<SnapshotChunk, BackupSummary> {
  // zlib's CRC-32: the same values as the format's pure one, faster.
  const decoder = new BackupDecoder(crc32);
  try {
    for await (const piece of createReadStream(path, { highWaterMark: readBytes })) {
      for (const item of decoder.push(piece as Buffer)) {
        if (item.kind === 'header') handlers.onHeader?.(item.header);
        else if (item.kind === 'chunk') yield item.chunk;
      }
      handlers.onProgress?.({ header: decoder.header, keysRead: decoder.keysRead, bytesRead: decoder.bytesRead });
    }
    return decoder.end();
  } catch (error) {
    if (error instanceof BackupFormatError) throw new BackupFormatError(error.code, `${path}: ${error.message}`, error.offset);
    throw error;
  }
}

/** Reads a whole backup file and checks everything; resolves with its summary or throws a BackupFormatError. */
export async function verifyBackupFile(path: string, onProgress?: (progress: BackupProgress) => void): Promise<BackupSummary> {
  const chunks = readBackupChunks(path, onProgress === undefined ? {} : { onProgress });
  for (;;) {
    const next = await chunks.next();
    if (next.done === true) return next.value;
  }
}
