/**
 * The server's worker threads run below the priority of the thread that answers HTTP: on a machine with few cores a
 * forward or a large parse must not take the CPU from the thread that reads requests and answers /health. Linux
 * keeps a nice value per thread (and threads a thread creates, such as onnxruntime's pool, inherit it); elsewhere
 * nothing changes.
 */
import fs from 'node:fs';
import os from 'node:os';

/** Raises the calling thread's nice value to `nice` (lower priority); false where that is not possible. */
export function lowerThisThreadPriority(nice: number): boolean {
  try {
    const tid = Number(/task\/(\d+)$/.exec(fs.readlinkSync('/proc/thread-self'))?.[1]);
    if (!(tid > 0)) return false;
    os.setPriority(tid, nice);
    return true;
  } catch {
    return false; // not Linux, or not allowed: the thread runs at the usual priority
  }
}
