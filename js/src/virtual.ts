// The arithmetic of the long conversation's virtual list: each message's height
// (measured once it has been on screen, estimated before), where each one starts, and
// which ones lie near the viewport. Pure: the DOM side is messages.ts.

import type { MessageRecord } from "./model";

/** Up to this many messages are all in the DOM (find-in-page sees them all); past
 * it only those near the viewport are. */
export const VIRTUAL_THRESHOLD = 200;
/** Messages this many pixels above and below the viewport are in the DOM too, so a
 * scroll shows rendered text before the next layout runs. */
export const MARGIN_PX = 800;
/** The log's height when it has none yet (not attached, or hidden): its CSS max. */
export const DEFAULT_VIEWPORT_PX = 480;

// Estimates, for a message never on screen: its role line, padding and meta line, and
// a line of text per ~90 characters (the pane's width at most, 900 px, holds about
// 110). Only the scrollbar's proportions and where a jump lands depend on them: a
// message's real height replaces its estimate once it has been shown.
const BASE_PX = 56;
const LINE_PX = 21;
const CHARS_PER_LINE = 90;
const TOOL_PX = 64; // folded: one summary line

/** A first guess of a message's height in pixels. */
export function estimateHeight(record: MessageRecord): number {
  if (record.role === "tool") return TOOL_PX;
  let lines = 0;
  let start = 0;
  const text = record.content;
  while (start <= text.length) {
    let end = text.indexOf("\n", start);
    if (end < 0) end = text.length;
    lines += Math.max(1, Math.ceil((end - start) / CHARS_PER_LINE));
    start = end + 1;
  }
  return BASE_PX + LINE_PX * lines + (record.context?.length ? 28 : 0);
}

/** Heights by position, with the offset of each message's top kept as prefix sums
 * that are brought up to date lazily from the first height that changed: a change at
 * the end of a long conversation (the usual one) costs only the end. */
export class HeightIndex {
  private readonly heights: number[] = [];
  private readonly tops: number[] = [0];
  private valid = 0; // tops[0..valid] are up to date

  get length(): number {
    return this.heights.length;
  }

  /** Keep only the first `n` heights. */
  truncate(n: number): void {
    if (n >= this.heights.length) return;
    this.heights.length = n;
    this.tops.length = n + 1;
    this.valid = Math.min(this.valid, n);
  }

  push(height: number): void {
    this.heights.push(height);
  }

  get(i: number): number {
    return this.heights[i] ?? 0;
  }

  set(i: number, height: number): void {
    if (this.heights[i] === height) return;
    this.heights[i] = height;
    this.valid = Math.min(this.valid, i);
  }

  /** Where message `i` starts (`i` = length: the end of the last one). */
  top(i: number): number {
    const n = Math.max(0, Math.min(i, this.heights.length));
    for (let j = this.valid; j < n; j++) this.tops[j + 1] = (this.tops[j] ?? 0) + (this.heights[j] ?? 0);
    this.valid = Math.max(this.valid, n);
    return this.tops[n] ?? 0;
  }

  get total(): number {
    return this.top(this.heights.length);
  }

  /** The message at offset `y` (clamped: the first above the top, the last below the
   * end); -1 when there are none. */
  indexAt(y: number): number {
    const n = this.heights.length;
    if (n === 0) return -1;
    this.top(n);
    let low = 0;
    let high = n - 1;
    while (low < high) {
      const mid = (low + high + 1) >> 1;
      if ((this.tops[mid] ?? 0) <= y) low = mid;
      else high = mid - 1;
    }
    return low;
  }

  /** The messages [start, end) to have in the DOM for a viewport from `y` down
   * `viewport` pixels: all of them up to the threshold, else those within the margin. */
  window(y: number, viewport: number): [number, number] {
    const n = this.heights.length;
    if (n <= VIRTUAL_THRESHOLD) return [0, n];
    const start = this.indexAt(y - MARGIN_PX);
    const end = this.indexAt(y + viewport + MARGIN_PX) + 1;
    return [start, end];
  }
}
