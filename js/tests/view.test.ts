// @vitest-environment jsdom
import { describe, expect, it } from "vitest";

import type { MessageRecord } from "../src/model";
import { contextChips, liveMetaLine, messageStatus } from "../src/message";
import { statusLabel } from "../src/view";

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

describe("contextChips", () => {
  const attachment = {
    name: "df",
    kind: "DataFrame",
    summary: "3 rows × 2 columns",
    text: "DataFrame: 3 rows × 2 columns\n| <b>x</b> | <img src=x onerror=alert(1)> |",
  };

  it("shows a chip per attachment with its name and kind, opening the text sent", () => {
    const list = contextChips([attachment, { name: "n", kind: "int", summary: "", text: "3" }]);
    const chips = list.querySelectorAll("details.nbchat-chip");
    expect(chips).toHaveLength(2);
    expect(chips[0].querySelector(".nbchat-chip-name")?.textContent).toBe("@df");
    expect(chips[0].querySelector(".nbchat-chip-kind")?.textContent).toBe(
      "DataFrame, 3 rows × 2 columns",
    );
    expect(chips[1].querySelector(".nbchat-chip-kind")?.textContent).toBe("int");
    expect((chips[0] as HTMLDetailsElement).open).toBe(false); // folded until clicked
    expect(chips[0].querySelector("pre")?.textContent).toBe(attachment.text);
  });

  it("renders the text as text, never as HTML", () => {
    const list = contextChips([attachment]);
    expect(list.querySelector("img")).toBeNull();
    expect(list.querySelector("b")).toBeNull();
    expect(list.querySelector("pre")?.innerHTML).toContain("&lt;img");
  });

  it("shows a figure's picture and what became of it, and only raster data URIs", () => {
    const png = "data:image/png;base64,iVBORw0KGgo=";
    const figure = {
      name: "fig",
      kind: "matplotlib Figure",
      summary: "1 axes",
      text: "A matplotlib figure.",
      image: png,
      picture: "picture sent to gpt-4o",
    };
    const chip = contextChips([figure]).querySelector("details.nbchat-chip");
    expect(chip?.querySelector(".nbchat-chip-kind")?.textContent).toBe(
      "matplotlib Figure, 1 axes, picture sent to gpt-4o",
    );
    expect(chip?.querySelector("img.nbchat-chip-picture")?.getAttribute("src")).toBe(png);
    for (const image of [
      "data:image/svg+xml;base64,PHN2Zz4=",
      "https://example.com/a.png",
      'data:image/png;base64,AAAA" onerror="alert(1)',
    ]) {
      expect(contextChips([{ ...figure, image }]).querySelector("img")).toBeNull();
    }
  });
});
