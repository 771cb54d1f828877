import { describe, expect, it } from "vitest";

import type { MessageRecord } from "../src/model";
import { estimateHeight, HeightIndex, MARGIN_PX, VIRTUAL_THRESHOLD } from "../src/virtual";

const record = (over: Partial<MessageRecord>): MessageRecord => ({
  turn: 1, role: "assistant", content: "", model: "demo", finish: "stop", error: null,
  reply_id: "r1", reasoning: null, first_token_s: null, duration_s: null, tokens_per_s: null,
  ...over,
});

function index(heights: number[]): HeightIndex {
  const out = new HeightIndex();
  heights.forEach((h) => out.push(h));
  return out;
}

describe("HeightIndex", () => {
  it("knows where each message starts, and which one is at an offset", () => {
    const h = index([10, 20, 30]);
    expect([0, 1, 2, 3].map((i) => h.top(i))).toEqual([0, 10, 30, 60]);
    expect(h.total).toBe(60);
    expect([-5, 0, 9, 10, 29, 30, 59, 60, 1000].map((y) => h.indexAt(y))).toEqual([
      0, 0, 0, 1, 1, 2, 2, 2, 2,
    ]);
    expect(new HeightIndex().indexAt(0)).toBe(-1);
  });

  it("moves what follows a height that changed, and forgets a truncated end", () => {
    const h = index([10, 20, 30]);
    expect(h.total).toBe(60);
    h.set(0, 15);
    expect(h.top(2)).toBe(35);
    h.truncate(1);
    expect(h.total).toBe(15);
    h.push(5);
    expect(h.total).toBe(20);
    expect(h.length).toBe(2);
  });

  it("has every message in the window up to the threshold, past it only those near the viewport", () => {
    const short = index(Array(VIRTUAL_THRESHOLD).fill(100));
    expect(short.window(5000, 400)).toEqual([0, VIRTUAL_THRESHOLD]);

    const long = index(Array(1000).fill(100));
    const [start, end] = long.window(50_000, 400);
    expect(start).toBe((50_000 - MARGIN_PX) / 100);
    expect(end).toBe((50_000 + 400 + MARGIN_PX) / 100 + 1);
    expect(long.window(0, 400)[0]).toBe(0);
    expect(long.window(99_600, 400)[1]).toBe(1000);
  });
});

describe("estimateHeight", () => {
  it("grows with the lines of text, and keeps a folded tool call small", () => {
    const one = estimateHeight(record({ content: "hi" }));
    const five = estimateHeight(record({ content: "a\nb\nc\nd\ne" }));
    const long = estimateHeight(record({ content: "x".repeat(900) }));
    expect(five).toBeGreaterThan(one);
    expect(long).toBeGreaterThan(five);
    expect(estimateHeight(record({ role: "tool", content: "x".repeat(9000) }))).toBeLessThan(one + 20);
  });
});
