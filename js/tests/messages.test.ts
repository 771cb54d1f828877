// @vitest-environment jsdom
// The conversation's DOM: built once per message and kept (keyed), the reply in flight
// streamed through MarkdownStream, and a long conversation as a virtual list.
import { afterEach, describe, expect, it, vi } from "vitest";

import { MarkdownStream } from "../src/incremental";
import { messageKey } from "../src/messages";
import type { MessageRecord } from "../src/model";
import { mountPane, mutations, unmountPanes } from "./pane-harness";

const user = (turn: number, content = `question ${turn}`): MessageRecord => ({
  turn, role: "user", content, model: null, finish: null, error: null, reply_id: null,
  reasoning: null, first_token_s: null, duration_s: null, tokens_per_s: null,
});
const reply = (turn: number, over: Partial<MessageRecord> = {}): MessageRecord => ({
  turn, role: "assistant", content: `answer ${turn}`, model: "demo", finish: "stop", error: null,
  reply_id: `r${turn}`, reasoning: null, first_token_s: 0.1, duration_s: 1.5, tokens_per_s: 40,
  ...over,
});
/** `turns` turns: a question and its answer each (2 × turns messages). */
const conversation = (turns: number): MessageRecord[] =>
  Array.from({ length: turns }, (_, i) => [user(i + 1), reply(i + 1)]).flat();

afterEach(() => {
  unmountPanes();
  vi.restoreAllMocks();
});



describe("keyed messages", () => {
  it("keep their DOM node through later turns and changes of the reply in flight", () => {
    const { model, stream, apply, items } = mountPane();
    apply(0, conversation(2));
    const before = items();
    expect(before).toHaveLength(4);

    model.set("active", { reply: "r3", status: "pending" });
    apply(4, [user(3), reply(3, { content: "", finish: null, duration_s: null })]);
    const third = items()[5];
    stream.apply({ type: "chunk", reply: "r3", offset: 0, text: "Hello" });
    model.set("active", { reply: "r3", status: "streaming" });
    apply(5, [reply(3, { content: "Hello", finish: null, duration_s: null })]);
    apply(5, [reply(3, { content: "Hello" })]);
    model.set("active", {});

    const after = items();
    expect(after).toHaveLength(6);
    after.slice(0, 4).forEach((node, i) => expect(node).toBe(before[i]));
    expect(after[5]).toBe(third);
    expect(third?.dataset.status).toBe("done");
    expect(third?.querySelector(".nbchat-meta")?.textContent).toBe("1.5 s · 40 tok/s");
  });

  it("keep an opened chip open when its picture line changes", () => {
    const { apply, items } = mountPane();
    const figure = {
      name: "fig", kind: "matplotlib Figure", summary: "1 axes", text: "A figure.",
      image: "data:image/png;base64,iVBORw0KGgo=", picture: "picture sent to demo",
    };
    apply(0, [{ ...user(1), context: [figure] }, reply(1)]);
    const chip = () => items()[0]?.querySelector<HTMLDetailsElement>("details.nbchat-chip");
    (chip() as HTMLDetailsElement).open = true;
    apply(0, [{ ...user(1), context: [{ ...figure, picture: "picture not sent: no room left" }] }]);
    expect(chip()?.textContent).toContain("picture not sent: no room left");
    expect(chip()?.open).toBe(true);
  });

  it("touch only the new message on an append", () => {
    const { apply, log, items } = mountPane();
    apply(0, conversation(3));
    const changed = mutations(log, () => apply(6, [user(4)]));
    const added = items()[6] as HTMLElement;
    expect(added.textContent).toContain("question 4");
    for (const change of changed) {
      const inside = added.contains(change.target);
      const addsIt = change.target === log && Array.from(change.addedNodes).every((n) => n === added);
      expect(inside || addsIt).toBe(true);
    }
    expect(changed.length).toBeGreaterThan(0);
    expect(changed.some((change) => Array.from(change.removedNodes).length > 0)).toBe(false);
  });

  it("update only the replies the change of the reply in flight concerns", () => {
    const { model, apply, log, items } = mountPane();
    apply(0, [...conversation(3), user(4), reply(4, { content: "", finish: null })]);
    model.set("active", { reply: "r4", status: "streaming" });
    const live = items()[7] as HTMLElement;
    const changed = mutations(log, () => model.set("active", { reply: "r4", status: "paused" }));
    expect(changed.length).toBeGreaterThan(0);
    for (const change of changed) expect(live.contains(change.target)).toBe(true);
    expect(live.dataset.status).toBe("paused");
    expect(live.querySelector(".nbchat-meta")?.textContent).toBe("paused");
  });

  it("keep the reply in flight when a tool call is inserted before it", () => {
    const { model, apply, items } = mountPane();
    model.set("active", { reply: "r1", status: "streaming" });
    apply(0, [user(1), reply(1, { content: "", finish: null })]);
    const [question, answer] = items();
    const tool: MessageRecord = {
      ...reply(1, { role: "tool", model: null, content: "", finish: null }),
      tool_name: "f", tool_arguments: {}, tool_call: "c1",
    };
    apply(1, [tool, reply(1, { content: "", finish: null })]);
    expect(items()).toHaveLength(3);
    expect(items()[0]).toBe(question);
    expect(items()[2]).toBe(answer);
    expect(items()[1]?.dataset.role).toBe("tool");
  });

  it("tell apart messages whose keys would be the same, and go on a Clear", () => {
    const { apply, items, el } = mountPane();
    expect(messageKey(user(1))).toBe("user:1");
    expect(messageKey(reply(1))).toBe("reply:r1");
    apply(0, [user(1, "one"), user(1, "two"), user(1, "three")]); // e.g. a loaded file
    expect(items().map((node) => node.querySelector(".nbchat-body")?.textContent)).toEqual([
      "one", "two", "three",
    ]);
    apply(1, [user(1, "two, edited")]);
    expect(items().map((node) => node.querySelector(".nbchat-body")?.textContent)).toEqual([
      "one", "two, edited",
    ]);
    apply(0, []);
    expect(items()).toHaveLength(0);
    expect(el.querySelector(".nbchat-empty")).not.toBeNull();
  });
});

describe("the reply in flight", () => {
  it("streams through MarkdownStream and keeps its DOM when the finished record matches", () => {
    const update = vi.spyOn(MarkdownStream.prototype, "update");
    const finish = vi.spyOn(MarkdownStream.prototype, "finish");
    const { model, stream, apply } = mountPane();
    model.set("active", { reply: "r1", status: "pending" });
    apply(0, [user(1), reply(1, { content: "", finish: null })]);
    const first = "A first paragraph.\n\n";
    stream.apply({ type: "chunk", reply: "r1", offset: 0, text: first });
    const node = document.querySelector('.nbchat-msg[data-reply="r1"] .nbchat-body') as HTMLElement;
    const paragraph = node.firstElementChild;
    expect(paragraph?.textContent).toBe("A first paragraph.");
    model.set("active", { reply: "r1", status: "streaming" });
    stream.apply({ type: "chunk", reply: "r1", offset: first.length, text: "And **more**" });
    expect(update.mock.calls.map(([text]) => text).filter(Boolean)).toEqual([first, `${first}And **more**`]);
    expect(node.firstElementChild).toBe(paragraph); // the first block was not rendered again
    expect(node.querySelector("strong")?.textContent).toBe("more");

    const whole = `${first}And **more**`;
    apply(1, [reply(1, { content: whole })]);
    model.set("active", {});
    expect(finish).toHaveBeenCalledTimes(1);
    expect(node.firstElementChild).toBe(paragraph); // finished, not rebuilt
    expect(node.getAttribute("aria-busy")).toBeNull();
  });

  it("gives a streamed code block its bar with the Copy button", () => {
    const { model, stream, apply } = mountPane();
    model.set("active", { reply: "r1", status: "streaming" });
    apply(0, [user(1), reply(1, { content: "", finish: null })]);
    const text = "Code:\n\n```python\nprint('hi')\n";
    stream.apply({ type: "chunk", reply: "r1", offset: 0, text });
    const body = document.querySelector('.nbchat-msg[data-reply="r1"] .nbchat-body') as HTMLElement;
    expect(body.querySelector(".nbchat-code > .nbchat-code-bar .nbchat-copy")).not.toBeNull();
    expect(body.querySelector(".nbchat-code-lang")?.textContent).toBe("python");
    stream.apply({ type: "chunk", reply: "r1", offset: text.length, text: "```\n\nDone." });
    expect(body.querySelectorAll(".nbchat-code")).toHaveLength(1);
    expect(body.querySelector("pre .nbchat-copy")).toBeNull();
  });

  it("takes the text the stream had not carried from the finished record, without a rebuild", () => {
    // The kernel sends a finished reply's last text with its record, not as a chunk.
    const finish = vi.spyOn(MarkdownStream.prototype, "finish");
    const { model, stream, apply } = mountPane();
    model.set("active", { reply: "r1", status: "streaming" });
    apply(0, [user(1), reply(1, { content: "", finish: null })]);
    const first = "A first paragraph.\n\n";
    stream.apply({ type: "chunk", reply: "r1", offset: 0, text: `${first}And` });
    const node = document.querySelector('.nbchat-msg[data-reply="r1"] .nbchat-body') as HTMLElement;
    const paragraph = node.firstElementChild;
    apply(1, [reply(1, { content: `${first}And **more**` })]);
    model.set("active", {});
    expect(finish).toHaveBeenCalledTimes(1);
    expect(node.firstElementChild).toBe(paragraph);
    expect(node.querySelector("strong")?.textContent).toBe("more");
    expect(node.textContent?.replace(/\s+/g, " ").trim()).toBe("A first paragraph. And more");
  });

  it("keeps its body in place when the frame around it changes: status, meta line, buttons", () => {
    // Taking the body out and back in costs a long reply's whole style and layout.
    const { model, stream, apply } = mountPane();
    model.set("active", { reply: "r1", status: "pending" });
    apply(0, [user(1), reply(1, { content: "", finish: null })]);
    const item = document.querySelector('.nbchat-msg[data-reply="r1"]') as HTMLElement;
    const body = item.querySelector(".nbchat-body") as HTMLElement;
    const changes = mutations(item, () => {
      stream.apply({ type: "chunk", reply: "r1", offset: 0, text: "Some text" });
      model.set("active", { reply: "r1", status: "streaming" });
      model.set("active", { reply: "r1", status: "paused" });
      apply(1, [reply(1, { content: "Some text and the rest" })]);
      model.set("active", {});
    });
    const moves = changes
      .filter((r) => r.target === item)
      .flatMap((r) => [...Array.from(r.removedNodes), ...Array.from(r.addedNodes)]);
    expect(item.dataset.status).toBe("done");
    expect(item.querySelector(".nbchat-meta")?.textContent).toBe("1.5 s · 40 tok/s");
    expect(moves.length).toBeGreaterThan(0); // the meta line and the buttons changed...
    expect(moves).not.toContain(body); // ...around a body that stayed where it was
    expect(item.querySelectorAll(".nbchat-foot")).toHaveLength(1);
    expect(item.querySelectorAll(".nbchat-body")).toHaveLength(1);
  });

  it("is rendered whole when the finished record says more than the stream showed", () => {
    const { model, stream, apply } = mountPane();
    model.set("active", { reply: "r1", status: "streaming" });
    apply(0, [user(1), reply(1, { content: "", finish: null })]);
    stream.apply({ type: "chunk", reply: "r1", offset: 0, text: "Partial" });
    apply(1, [reply(1, { content: "Partial and the rest", finish: "stopped" })]);
    model.set("active", {});
    const node = document.querySelector('.nbchat-msg[data-reply="r1"]') as HTMLElement;
    expect(node.querySelector(".nbchat-body")?.textContent?.trim()).toBe("Partial and the rest");
    expect(node.dataset.status).toBe("stopped");
  });
});

/** A stand-in for the browser's layout: every message is `item` px high, the log shows
 * `viewport` px, and its scrollTop is clamped as a browser clamps it. */
function fakeLayout(log: HTMLElement, item = 50, viewport = 480) {
  const height = (node: Element) =>
    node.classList.contains("nbchat-spacer")
      ? parseFloat((node as HTMLElement).style.height) || 0
      : node.classList.contains("nbchat-msg")
        ? item
        : 0;
  const content = () => Array.from(log.children).reduce((sum, node) => sum + height(node), 0);
  let wanted = 0;
  const clamp = (value: number) => Math.max(0, Math.min(value, log.scrollHeight - viewport));
  Object.defineProperty(log, "clientHeight", { configurable: true, get: () => viewport });
  Object.defineProperty(log, "scrollHeight", { configurable: true, get: () => Math.max(viewport, content()) });
  Object.defineProperty(log, "scrollTop", {
    configurable: true,
    get: () => (wanted = clamp(wanted)),
    set: (value: number) => {
      wanted = clamp(value);
    },
  });
  vi.spyOn(HTMLElement.prototype, "offsetHeight", "get").mockImplementation(function (this: HTMLElement) {
    return this.classList.contains("nbchat-msg") && this.isConnected ? item : 0;
  });
  /** The node at the top of the viewport and how far the viewport starts into it. */
  const atTop = () => {
    const top = log.scrollTop;
    let y = 0;
    for (const node of Array.from(log.children)) {
      const h = height(node);
      if (y + h > top) return { node, offset: top - y };
      y += h;
    }
    return null;
  };
  return { atTop };
}

async function scrollTo(log: HTMLElement, y: number): Promise<void> {
  log.scrollTop = y;
  log.dispatchEvent(new Event("scroll"));
  await new Promise((resolve) => requestAnimationFrame(resolve));
}

describe("the log's height", () => {
  it("is fixed and contained once the messages overflow it, and free again when they go", () => {
    const { model, stream, apply, log } = mountPane();
    fakeLayout(log); // 50 px a message, 480 px of log
    apply(0, conversation(2));
    expect(log.hasAttribute("data-full")).toBe(false); // 200 px: the log is as tall as they are
    model.set("active", { reply: "r3", status: "streaming" });
    apply(4, [user(3), reply(3, { content: "", finish: null })]);
    expect(log.hasAttribute("data-full")).toBe(false); // 300 px
    apply(6, conversation(6).slice(6)); // 600 px
    expect(log.hasAttribute("data-full")).toBe(true);
    stream.apply({ type: "chunk", reply: "r3", offset: 0, text: "More" });
    expect(log.hasAttribute("data-full")).toBe(true);
    expect(log.scrollTop).toBe(log.scrollHeight - log.clientHeight); // still following
    apply(0, []); // Clear
    expect(log.hasAttribute("data-full")).toBe(false);
  });

  it("is freed when the content shrinks with no message gone: a fold, a wider pane", () => {
    const { model, stream, apply, log } = mountPane();
    fakeLayout(log); // 50 px a message
    model.set("active", { reply: "r7", status: "streaming" });
    apply(0, [...conversation(6), user(7), reply(7, { content: "", finish: null })]);
    expect(log.hasAttribute("data-full")).toBe(true); // 700 px in 480
    fakeLayout(log, 30); // the same messages, now 420 px
    stream.apply({ type: "chunk", reply: "r7", offset: 0, text: "More" });
    expect(log.hasAttribute("data-full")).toBe(false);
    fakeLayout(log, 50);
    log.querySelector(".nbchat-msg")?.dispatchEvent(new Event("toggle")); // a <details> opened
    expect(log.hasAttribute("data-full")).toBe(true);
  });
});

describe("a long conversation", () => {
  it("has only the messages near the viewport in the DOM, and the newest at the bottom", () => {
    const { apply, items, log } = mountPane();
    fakeLayout(log);
    apply(0, conversation(500)); // 1,000 messages
    expect(log.hasAttribute("data-virtual")).toBe(true);
    expect(items().length).toBeLessThan(60);
    expect(items()[items().length - 1]?.textContent).toContain("answer 500");
    expect(log.scrollTop).toBe(log.scrollHeight - log.clientHeight); // at the bottom
  });

  it("renders the messages scrolled to, keeps the reader's place, and jumps back", async () => {
    const { apply, items, item, log, el } = mountPane();
    const layout = fakeLayout(log);
    apply(0, conversation(500));
    const jump = el.querySelector(".nbchat-jump") as HTMLButtonElement;

    await scrollTo(log, 0);
    expect(item("question 1")).toBeDefined();
    expect(item("answer 500")).toBeUndefined();
    expect(items().length).toBeLessThan(60);
    expect(jump.hidden).toBe(false);
    expect(log.firstElementChild?.getAttribute("style")).toBe("height: 0px;"); // nothing above

    // Somewhere in the middle, in what was a spacer: the messages there are rendered,
    // and a small scroll from there moves by what it scrolled, not by estimates.
    await scrollTo(log, Math.round(log.scrollHeight / 2));
    const here = layout.atTop();
    expect(here?.node.classList.contains("nbchat-msg")).toBe(true);
    await scrollTo(log, log.scrollTop + 10);
    expect(layout.atTop()?.node).toBe(here?.node);
    expect(layout.atTop()?.offset).toBe((here?.offset ?? 0) + 10);

    // A new turn arrives below: the reader stays where they are.
    const before = layout.atTop();
    apply(1000, [user(501), reply(501)]);
    expect(layout.atTop()).toEqual(before);
    expect(item("question 501")).toBeUndefined();
    expect(item("answer 500")).toBeUndefined();

    jump.click();
    expect(item("answer 501")).toBeDefined();
    expect(log.scrollTop).toBe(log.scrollHeight - log.clientHeight);
    expect(items().length).toBeLessThan(60);
  });

  it("streams a new reply at the bottom", () => {
    const { model, stream, apply, log } = mountPane();
    fakeLayout(log);
    apply(0, conversation(500));
    model.set("active", { reply: "r501", status: "streaming" });
    apply(1000, [user(501), reply(501, { content: "", finish: null })]);
    stream.apply({ type: "chunk", reply: "r501", offset: 0, text: "Streaming **now**" });
    const node = log.querySelector('.nbchat-msg[data-reply="r501"] strong');
    expect(node?.textContent).toBe("now");
    expect(log.scrollTop).toBe(log.scrollHeight - log.clientHeight);
  });
});
