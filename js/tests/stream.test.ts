import { describe, expect, it } from "vitest";

import fixture from "../../tests/fixtures/pane.json";
import { isKernelMessage, type KernelMessage } from "../src/model";
import { LiveStream, StreamText } from "../src/stream";

describe("StreamText, on the golden deliveries shared with pytest", () => {
  for (const delivery of fixture.deliveries) {
    it(delivery.name, () => {
      const stream = new StreamText();
      let gaps = 0;
      for (const message of delivery.messages) {
        expect(isKernelMessage(message)).toBe(true);
        if (stream.apply(message as KernelMessage) === "gap") gaps += 1;
      }
      expect(stream.text).toBe(delivery.text);
      expect(gaps).toBe(delivery.gaps);
    });
  }
});

describe("StreamText", () => {
  it("shows the streamed text only for its own reply", () => {
    const stream = new StreamText();
    stream.apply({ type: "chunk", reply: "r1", offset: 0, text: "live text" });
    expect(stream.textFor("r1", "")).toBe("live text");
    expect(stream.textFor("r2", "stored")).toBe("stored");
    // The final transcript text wins once it is longer than what streamed.
    expect(stream.textFor("r1", "live text, complete")).toBe("live text, complete");
  });

  it("assembles a long reply from batches of any size exactly once", () => {
    const text = Array.from({ length: 500 }, (_, i) => `token${i} `).join("");
    const stream = new StreamText();
    let offset = 0;
    for (const size of [1, 7, 300, 13, 2000, 5000]) {
      const piece = text.slice(offset, offset + size);
      stream.apply({ type: "chunk", reply: "r", offset, text: piece });
      stream.apply({ type: "chunk", reply: "r", offset, text: piece }); // resent
      offset += piece.length;
    }
    expect(stream.text).toBe(text);
  });
});

describe("LiveStream", () => {
  it("tells subscribers only about changes", () => {
    const live = new LiveStream();
    let calls = 0;
    const unsubscribe = live.subscribe(() => (calls += 1));
    live.apply({ type: "chunk", reply: "r", offset: 0, text: "a" });
    live.apply({ type: "chunk", reply: "r", offset: 0, text: "a" });
    expect(calls).toBe(1);
    unsubscribe();
    live.apply({ type: "chunk", reply: "r", offset: 1, text: "b" });
    expect(calls).toBe(1);
  });
});

describe("isKernelMessage", () => {
  it("refuses malformed messages", () => {
    expect(isKernelMessage(null)).toBe(false);
    expect(isKernelMessage({ type: "chunk", reply: "r", text: "x" })).toBe(false);
    expect(isKernelMessage({ type: "chunk", reply: "r", offset: -1, text: "x" })).toBe(false);
    expect(isKernelMessage({ type: "other", reply: "r", text: "x" })).toBe(false);
  });
});

describe("LiveStream with reasoning", () => {
  it("keeps reasoning apart from the answer", () => {
    const live = new LiveStream();
    live.apply({ type: "chunk", reply: "r", offset: 0, text: "thinking", kind: "reasoning" });
    live.apply({ type: "chunk", reply: "r", offset: 0, text: "answer" });
    live.apply({ type: "snapshot", reply: "r", text: "thinking more", kind: "reasoning" });
    expect(live.reasoning.text).toBe("thinking more");
    expect(live.text.text).toBe("answer");
  });
});
