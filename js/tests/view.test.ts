// @vitest-environment jsdom
import { describe, expect, it } from "vitest";

import type { MessageRecord } from "../src/model";
import { liveMetaLine, messageStatus, statusLabel } from "../src/view";

const reply = (over: Partial<MessageRecord>): MessageRecord => ({
  turn: 1, role: "assistant", content: "", model: "demo", finish: null, error: null,
  reply_id: "r1", reasoning: null, first_token_s: null, duration_s: null, tokens_per_s: null,
  ...over,
});

describe("statusLabel", () => {
  it("says the attempt and the delay while reconnecting", () => {
    expect(statusLabel("reconnecting", "attempt 2, next in 0.7 s")).toBe(
      "reconnecting (attempt 2, next in 0.7 s)",
    );
    expect(statusLabel("connected", "resumed after 1.2 s")).toBe("connected (resumed after 1.2 s)");
    expect(statusLabel("offline", "")).toBe("offline");
  });
});

describe("messageStatus", () => {
  it("shows the live status of the reply in flight, else how it ended", () => {
    expect(messageStatus(reply({}), { reply: "r1", status: "paused" })).toBe("paused");
    expect(messageStatus(reply({ finish: "stopped" }), {})).toBe("stopped");
    expect(messageStatus(reply({ finish: "length" }), {})).toBe("done");
    expect(messageStatus(reply({ finish: "error" }), {})).toBe("error");
    expect(messageStatus(reply({ role: "user" }), {})).toBe("");
  });
});

describe("liveMetaLine", () => {
  it("says the reply in flight waits for the link while it is reconnecting", () => {
    expect(liveMetaLine("streaming", "reconnecting")).toBe("reconnecting…");
    expect(liveMetaLine("paused", "reconnecting")).toBe("paused · reconnecting…");
    expect(liveMetaLine("streaming", "connected")).toBe("");
    expect(liveMetaLine("paused", "connected")).toBe("paused");
  });
});
