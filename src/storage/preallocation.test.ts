// Preallocated log segments across a power loss: a roll cuts the closed segment's zeros; should
// the power loss undo that cut, the next open redoes it, so a closed segment (what the log
// archive copies and a point-in-time restore checks) holds records only.

import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import type { LogEntry } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';
import { FaultFileSystem } from './fault-fs.ts';
import { openFileLog } from './file-log.ts';
import { checkArchivedSegment } from './log-archive.ts';
import { crc32, parseSegmentName, scanLog } from './log-format.ts';

const entry = (at: number): LogEntry => ({
  epoch: epoch(1), seq: seq(at), write: { type: 'put', key: `k${at}`, value: new Uint8Array(100).fill(7) }, session: { clientId: 'c', requestId: at },
});

it('closed segments hold records only after a power loss and a reopen, and pass the archive check', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'mainstay-preallocation-'));
  try {
    const options = { segmentBytesMax: 8 * 1024, preallocateBytes: 4 * 1024 };
    const faults = new FaultFileSystem(undefined, { powerLoss: true });
    const { log } = await openFileLog(directory, { ...options, fileSystem: faults });
    let durable = 0;
    log.onDurable = (operationId) => {
      durable = operationId;
    };
    let operationId = 0;
    for (let first = 1; first <= 200; first += 20) {
      log.submit(++operationId, { type: 'append', entries: Array.from({ length: 20 }, (_, i) => entry(first + i)) });
      while (durable < operationId) await new Promise((resolve) => setTimeout(resolve, 2));
    }
    await faults.simulatePowerLoss();
    await rm(join(directory, 'LOCK'));
    const reopened = await openFileLog(directory, options);
    assert.equal(reopened.recovered.entries.length, 200);
    await reopened.log.close();
    const names = (await readdir(join(directory, 'log'))).sort();
    assert.ok(names.length >= 3, 'the appends rolled segments');
    for (const name of names.slice(0, -1)) {
      const bytes = await readFile(join(directory, 'log', name));
      const firstSeq = parseSegmentName(name) as ReturnType<typeof seq>;
      const extent = scanLog([{ firstSeq, bytes }], crc32).kept[0];
      assert.ok(extent !== undefined);
      assert.equal(bytes.length, extent.validBytes, `${name} holds records only`);
      checkArchivedSegment({ path: name, firstSeq, lastSeq: extent.lastSeq }, bytes, crc32);
    }
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
});
