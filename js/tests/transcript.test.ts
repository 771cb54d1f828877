import { describe, expect, it } from "vitest";

import type { MessageRecord } from "../src/model";
import { TranscriptStore } from "../src/transcript";

function record(turn: number, role: "user" | "assistant", content: string): MessageRecord {
  return {
    turn,
    role,
    content,
    model: null,
    finish: role === "assistant" ? "stop" : null,
    error: null,
    reply_id: role === "assistant" ? `r${turn}` : null,
    reasoning: null,
    first_token_s: null,
    duration_s: null,
    tokens_per_s: null,
  };
}

describe("TranscriptStore", () => {
  it("replaces from the given index, so a turn sends only what changed", () => {
    const store = new TranscriptStore();
    const changes: number[] = [];
    store.subscribe((from) => changes.push(from)); // told where the change starts
    store.apply({ type: "transcript", from: 0, records: [record(1, "user", "hi"), record(1, "assistant", "")] });
    store.apply({ type: "transcript", from: 1, records: [record(1, "assistant", "hello")] });
    store.apply({ type: "transcript", from: 2, records: [record(2, "user", "more")] });
    expect(store.records.map((r) => r.content)).toEqual(["hi", "hello", "more"]);
    expect(changes).toEqual([0, 1, 2]);
  });

  it("empties on a clear and reports a gap past its end", () => {
    const store = new TranscriptStore();
    store.apply({ type: "transcript", from: 0, records: [record(1, "user", "hi")] });
    expect(store.apply({ type: "transcript", from: 0, records: [] })).toBe("applied");
    expect(store.records).toEqual([]);
    expect(store.apply({ type: "transcript", from: 3, records: [record(2, "user", "x")] })).toBe("gap");
    expect(store.records).toEqual([]);
  });
});
