// A simulated disk for one server: the log file, the meta file and the key-value store. Writes
// reach the "page cache" at once and become durable when their operation completes, in order; a
// crash loses what was not durable, except a random prefix of it that the OS happened to write,
// whose last record may be torn. Bit flips are planted in durable records below the tail.

import { assert } from '../lib/assert.ts';
import type { Random } from '../lib/random.ts';
import { MemoryKvStore } from '../core/kv.ts';
import type { DiskOperation } from '../core/server.ts';
import type { ServerMeta } from '../protocol/messages.ts';
import type { LogEntry } from '../protocol/types.ts';
import type { Epoch, Seq } from '../protocol/types.ts';
import { epoch, seq } from '../protocol/types.ts';

interface PendingOperation {
  operationId: number;
  operation: DiskOperation;
}

export interface CrashOutcome {
  /** Unsynced operations that reached the disk anyway. */
  survived: number;
  /** A record was cut in the middle by the crash (the recovery scan will drop it). */
  torn: boolean;
  /** Unsynced operations lost. */
  lost: number;
}

export interface Recovery {
  entries: LogEntry[];
  firstSeq: Seq;
  baseEpoch: Epoch;
  meta: ServerMeta;
  corruptionFound: boolean;
}

export class SimDisk {
  /** The log file's durable records: durableLog[i] has seq logStart + i. */
  durableLog: LogEntry[] = [];
  /** Seq of durableLog[0]; entries below were compacted or replaced by a snapshot of the state. */
  logStart: Seq = seq(1);
  /** Epoch of the entry at logStart − 1. */
  logStartEpoch: Epoch = epoch(0);
  durableMeta: ServerMeta = { promisedEpoch: epoch(0), incomplete: false };
  readonly store = new MemoryKvStore();
  private pending: PendingOperation[] = [];
  /** When the last issued operation completes; operations complete in order. */
  lastDoneAt = 0;
  /** Counts changes of the durable state, so checkers can skip work when nothing changed. */
  changes = 0;
  /** Records destroyed by a detected corruption, by seq: they were durable when acknowledged. */
  readonly lostToCorruption = new Map<number, LogEntry>();
  /** Index of a record whose checksum will fail at the next recovery scan, if any. */
  private flippedRecord: number | undefined;

  issue(operationId: number, operation: DiskOperation): void {
    this.pending.push({ operationId, operation });
  }

  /** Operation `operationId` and every one before it are durable. */
  complete(operationId: number): void {
    while (this.pending.length > 0 && (this.pending[0] as PendingOperation).operationId <= operationId) {
      this.applyDurably((this.pending.shift() as PendingOperation).operation);
    }
  }

  private applyDurably(operation: DiskOperation, entriesLimit = Infinity): void {
    this.changes++;
    switch (operation.type) {
      case 'append': {
        let written = 0;
        for (const entry of operation.entries) {
          if (written++ >= entriesLimit) break;
          assert(entry.seq === this.lastSeq + 1, `disk append at ${entry.seq} after ${this.lastSeq}`);
          this.durableLog.push(entry);
          // The seq holds a new entry now: the destroyed one is no longer this server's.
          this.lostToCorruption.delete(entry.seq);
        }
        break;
      }
      case 'truncate':
        if (operation.afterSeq < this.lastSeq) this.durableLog.length = Math.max(0, operation.afterSeq - this.logStart + 1);
        break;
      case 'resetLog':
        this.durableLog = [];
        this.logStart = operation.firstSeq;
        this.logStartEpoch = operation.baseEpoch;
        for (const at of this.lostToCorruption.keys()) if (at < this.logStart) this.lostToCorruption.delete(at);
        break;
      case 'meta':
        this.durableMeta = { ...operation.meta };
        break;
    }
  }

  get lastSeq(): number {
    return this.logStart + this.durableLog.length - 1;
  }

  /** The durable entry at a seq, if the log holds it. */
  entryAt(at: number): LogEntry | undefined {
    return this.durableLog[at - this.logStart];
  }

  /** Epoch of the last durable entry (or of the snapshot the log starts after). */
  get lastEpoch(): Epoch {
    return this.durableLog[this.durableLog.length - 1]?.epoch ?? this.logStartEpoch;
  }

  /** Remove durable entries up to `through` (the state holds them durably). */
  compact(through: number, throughEpoch: Epoch): void {
    if (through < this.logStart) return;
    const count = Math.min(this.durableLog.length, through - this.logStart + 1);
    const last = this.durableLog[count - 1];
    this.durableLog = this.durableLog.slice(count);
    this.logStart = seq(this.logStart + count);
    this.logStartEpoch = last?.epoch ?? throughEpoch;
    for (const at of this.lostToCorruption.keys()) if (at < this.logStart) this.lostToCorruption.delete(at);
    this.changes++;
  }

  /** The process died: keep what is durable plus, by chance, a prefix of what was not. */
  crash(random: Random, survivalChance: number, tornChance: number): CrashOutcome {
    const outcome: CrashOutcome = { survived: 0, torn: false, lost: 0 };
    if (this.pending.length > 0 && random.chance(survivalChance)) {
      const count = random.int(1, this.pending.length);
      for (let i = 0; i < count; i++) {
        const { operation } = this.pending[i] as PendingOperation;
        const last = i === count - 1;
        if (last && operation.type === 'append' && random.chance(tornChance)) {
          // The last record was half written: the recovery scan cuts it (and all after it).
          this.applyDurably(operation, random.int(0, operation.entries.length - 1));
          outcome.torn = true;
        } else {
          this.applyDurably(operation);
        }
        outcome.survived++;
      }
    }
    outcome.lost = this.pending.length - outcome.survived;
    this.pending = [];
    this.lastDoneAt = 0;
    return outcome;
  }

  get hasFlippedRecord(): boolean {
    return this.flippedRecord !== undefined;
  }

  /** Flip a bit in a durable record below the last one; returns false if the log is too short. */
  flipBit(random: Random): boolean {
    if (this.durableLog.length < 2) return false;
    this.flippedRecord = random.int(0, this.durableLog.length - 2);
    this.changes++;
    return true;
  }

  /** The recovery scan at start: a checksum failure below the tail cuts the log and is reported. */
  recover(): Recovery {
    assert(this.pending.length === 0, 'recover runs after a crash or at first start');
    this.changes++;
    let corruptionFound = false;
    if (this.flippedRecord !== undefined) {
      // What corruption destroyed was durable once: keep it for the checker (see lostToCorruption).
      for (let i = this.flippedRecord; i < this.durableLog.length; i++) this.lostToCorruption.set(this.logStart + i, this.durableLog[i] as LogEntry);
      // Mark the server incomplete durably before cutting, so no later start forgets it.
      this.durableMeta = { ...this.durableMeta, incomplete: true };
      this.durableLog.length = this.flippedRecord;
      this.flippedRecord = undefined;
      corruptionFound = true;
    }
    return { entries: [...this.durableLog], firstSeq: this.logStart, baseEpoch: this.logStartEpoch, meta: { ...this.durableMeta }, corruptionFound };
  }
}
