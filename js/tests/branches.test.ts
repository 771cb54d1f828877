// @vitest-environment jsdom
// Branches in the pane: Retry on the last reply, Edit on user messages, the siblings'
// arrows, the commands they send, and messages keyed by id (a branch switch rebuilds
// only the messages it changed).
import { afterEach, describe, expect, it } from "vitest";

import { branchActions } from "../src/branches";
import { messageKey } from "../src/messages";
import type { MessageRecord } from "../src/model";
import fixture from "../../tests/fixtures/pane.json";
import { mountPane, mutations, unmountPanes } from "./pane-harness";

/** A record of a kernel with branches: `id` is given, siblings default to none. */
const user = (turn: number, over: Partial<MessageRecord> = {}): MessageRecord => ({
  turn, role: "user", content: `question ${turn}`, model: null, finish: null, error: null,
  reply_id: null, reasoning: null, first_token_s: null, duration_s: null, tokens_per_s: null,
  id: `u${turn}`, parent: turn > 1 ? `a${turn - 1}` : null, branch: 0, sibling_index: 1,
  sibling_count: 1, cost: null, ...over,
});
const reply = (turn: number, over: Partial<MessageRecord> = {}): MessageRecord => ({
  turn, role: "assistant", content: `answer ${turn}`, model: "demo", finish: "stop", error: null,
  reply_id: `r${turn}`, reasoning: null, first_token_s: 0.1, duration_s: 1.5, tokens_per_s: 40,
  id: `a${turn}`, parent: `u${turn}`, branch: 0, sibling_index: 1, sibling_count: 1, cost: null,
  ...over,
});
const conversation = (turns: number): MessageRecord[] =>
  Array.from({ length: turns }, (_, i) => [user(i + 1), reply(i + 1)]).flat();
/** The same record as an older kernel sends it: no branch fields. */
const old = (record: MessageRecord): MessageRecord => {
  const { id, parent, branch, sibling_index, sibling_count, cost, ...rest } = record;
  void [id, parent, branch, sibling_index, sibling_count, cost];
  return rest;
};

afterEach(() => {
  unmountPanes();
});



const key = (init: KeyboardEventInit) => new KeyboardEvent("keydown", { bubbles: true, cancelable: true, ...init });

describe("branchActions", () => {
  it("offers arrows with siblings, Edit on user messages, Retry on the last reply once ended", () => {
    const idle = { last: false, live: false };
    expect(branchActions(user(1), idle)).toEqual({ siblings: null, edit: true, retry: false });
    expect(branchActions(reply(1), idle)).toEqual({ siblings: null, edit: false, retry: false });
    expect(branchActions(reply(1), { last: true, live: false }).retry).toBe(true);
    expect(branchActions(reply(1), { last: true, live: true }).retry).toBe(false);
    expect(branchActions(user(1), { last: true, live: false }).retry).toBe(false);
    expect(branchActions(reply(1, { sibling_index: 2, sibling_count: 3 }), idle).siblings).toEqual([2, 3]);
    expect(branchActions(reply(1, { sibling_index: 4, sibling_count: 3 }), idle).siblings).toBeNull();
    // A reply with tool calls: every row carries its siblings, its answer shows them.
    const tool = reply(1, { role: "tool", tool_call: "c1", sibling_index: 2, sibling_count: 3 });
    expect(branchActions(tool, { last: false, live: false })).toEqual({ siblings: null, edit: false, retry: false });
  });

  it("offers nothing for a record of a kernel without branches", () => {
    const none = { siblings: null, edit: false, retry: false };
    expect(branchActions(old(user(1)), { last: false, live: false })).toEqual(none);
    expect(branchActions(old(reply(1)), { last: true, live: false })).toEqual(none);
  });
});

describe("keys", () => {
  it("are the message's id when it has one, the old keys otherwise", () => {
    expect(messageKey(user(1))).toBe("id:u1");
    expect(messageKey(reply(1))).toBe("id:a1");
    expect(messageKey(old(user(1)))).toBe("user:1");
    expect(messageKey(old(reply(1)))).toBe("reply:r1");
  });

  it("rebuild only the message a checkout replaced, keeping the messages before it", () => {
    const { apply, items, log } = mountPane();
    apply(0, conversation(2));
    const before = items();
    // The kernel switched turn 2's reply to its other sibling: same turn, new id.
    const other = reply(2, { id: "a2b", reply_id: "r2b", content: "another answer", sibling_index: 2, sibling_count: 2 });
    const changed = mutations(log, () => apply(3, [other]));
    const after = items();
    expect(after).toHaveLength(4);
    after.slice(0, 3).forEach((node, i) => expect(node).toBe(before[i]));
    expect(after[3]).not.toBe(before[3]);
    expect(after[3]?.textContent).toContain("another answer");
    for (const change of changed) {
      const inside = (after[3] as HTMLElement).contains(change.target);
      const swaps = change.target === log;
      expect(inside || swaps).toBe(true);
    }
  });

  it("keep a message's node when only its sibling count changes", () => {
    const { apply, items } = mountPane();
    apply(0, conversation(1));
    const [question] = items();
    apply(0, [user(1, { sibling_count: 2 }), reply(1)]);
    expect(items()[0]).toBe(question);
    expect(question?.querySelector(".nbchat-sibling-pos")?.textContent).toBe("1/2");
  });
});

describe("Retry", () => {
  it("is on the last reply only, once it ended, and moves to the new last reply", () => {
    const { model, apply, items, within } = mountPane();
    apply(0, conversation(2));
    const retries = () => items().map((node) => within(node, ".nbchat-reply-retry").length);
    expect(retries()).toEqual([0, 0, 0, 1]);

    model.set("active", { reply: "r3", status: "streaming" });
    apply(4, [user(3), reply(3, { content: "", finish: null, duration_s: null })]);
    expect(retries()).toEqual([0, 0, 0, 0, 0, 0]); // in flight: no Retry anywhere
    apply(5, [reply(3)]);
    model.set("active", {});
    expect(retries()).toEqual([0, 0, 0, 0, 0, 1]);
  });

  it("is on a reply that failed or was stopped too", () => {
    const { apply, items, within } = mountPane();
    apply(0, [user(1), reply(1, { finish: "error", error: "boom" })]);
    expect(within(items()[1], ".nbchat-reply-retry")).toHaveLength(1);
    apply(1, [reply(1, { finish: "stopped" })]);
    expect(within(items()[1], ".nbchat-reply-retry")).toHaveLength(1);
  });

  it("sends retry, and nothing while a reply is in flight", () => {
    const { model, apply, items, within, root } = mountPane();
    apply(0, conversation(1));
    const retry = within(items()[1], ".nbchat-reply-retry")[0] as HTMLButtonElement;
    expect(retry.textContent).toBe("Retry");
    expect(retry.title).toMatch(/another reply/);
    retry.click();
    expect(model.sent).toEqual([{ type: "retry" }]);

    model.set("active", { reply: "r9", status: "pending" }); // e.g. chat.send() in a cell
    expect(root.hasAttribute("data-busy")).toBe(true); // widget.css hides the actions
    retry.click();
    expect(model.sent).toHaveLength(1);
    model.set("active", {});
    expect(root.hasAttribute("data-busy")).toBe(false);
  });

  it("goes and comes back with a reply in flight without touching any message", () => {
    const { model, apply, log, root } = mountPane();
    apply(0, [user(1, { sibling_count: 2 }), reply(1, { sibling_count: 2 })]);
    const changed = mutations(log, () => {
      model.set("active", { reply: "r9", status: "pending" }); // chat.send() in a cell
      model.set("active", {});
    });
    expect(changed).toEqual([]); // the root's data-busy hides the actions: one attribute
    expect(root.hasAttribute("data-busy")).toBe(false);
  });

  it("is not offered by a kernel without branches", () => {
    const { apply, root } = mountPane();
    apply(0, [...conversation(1), user(2, { sibling_count: 2 }), reply(2)].map(old));
    expect(root.querySelectorAll(".nbchat-reply-retry, .nbchat-edit, .nbchat-siblings")).toHaveLength(0);
  });
});

describe("the siblings' arrows", () => {
  it("show ◀ i/n ▶ only on messages with siblings", () => {
    const { apply, items, within } = mountPane();
    apply(0, [user(1, { sibling_index: 2, sibling_count: 2 }), reply(1, { sibling_index: 2, sibling_count: 3 }), user(2), reply(2)]);
    const positions = items().map((node) => node.querySelector(".nbchat-sibling-pos")?.textContent ?? null);
    expect(positions).toEqual(["2/2", "2/3", null, null]);
    const [prev, next] = within(items()[1], ".nbchat-sibling");
    expect(prev?.textContent).toBe("◀");
    expect(next?.textContent).toBe("▶");
    expect(prev?.getAttribute("aria-label")).toBe("Show reply 1 of 3");
    expect(next?.getAttribute("aria-label")).toBe("Show reply 3 of 3");
    expect(items()[1]?.querySelector(".nbchat-siblings")?.getAttribute("aria-label")).toBe("Reply 2 of 3");
    expect(within(items()[0], ".nbchat-sibling")[0]?.getAttribute("aria-label")).toBe("Show version 1 of 2");
  });

  it("send checkout with the sibling's index, and are disabled at either end", () => {
    const { model, apply, items, within } = mountPane();
    apply(0, [user(1), reply(1, { sibling_index: 2, sibling_count: 3 })]);
    const [prev, next] = within(items()[1], ".nbchat-sibling") as [HTMLButtonElement, HTMLButtonElement];
    prev.click();
    next.click();
    expect(model.sent).toEqual([
      { type: "checkout", id: "a1", sibling: 1 },
      { type: "checkout", id: "a1", sibling: 3 },
    ]);
    apply(1, [reply(1, { id: "a1c", sibling_index: 3, sibling_count: 3 })]);
    const [first, last] = within(items()[1], ".nbchat-sibling");
    expect([first?.disabled, last?.disabled]).toEqual([false, true]);
    apply(1, [reply(1, { id: "a1a", sibling_index: 1, sibling_count: 3 })]);
    const [start, end] = within(items()[1], ".nbchat-sibling");
    expect([start?.disabled, end?.disabled]).toEqual([true, false]);
  });

  it("send nothing while a reply is in flight", () => {
    const { model, apply, items, within } = mountPane();
    apply(0, [user(1), reply(1, { sibling_index: 2, sibling_count: 2 })]);
    model.set("active", { reply: "r2", status: "streaming" });
    within(items()[1], ".nbchat-sibling")[0]?.click();
    expect(model.sent).toEqual([]);
  });

  it("keep the keyboard's focus on the arrows of the message the switch brought", () => {
    const { apply, items, within, log } = mountPane();
    apply(0, [user(1), reply(1, { sibling_index: 2, sibling_count: 2 })]);
    const prev = within(items()[1], ".nbchat-sibling")[0] as HTMLButtonElement;
    prev.focus();
    expect(document.activeElement).toBe(prev);
    apply(1, [reply(1, { id: "a1a", sibling_index: 1, sibling_count: 2, content: "first answer" })]);
    // ◀ is disabled on 1/2: the focus goes to ▶ of the message now shown.
    const [start, end] = within(items()[1], ".nbchat-sibling");
    expect(start?.disabled).toBe(true);
    expect(document.activeElement).toBe(end);

    // A switch that leaves no button to take it: the log has the focus.
    apply(1, [reply(1, { id: "a1b", sibling_count: 1 })]);
    expect(document.activeElement).toBe(log);
  });
});

describe("Edit", () => {
  function editing() {
    const p = mountPane();
    p.apply(0, conversation(2));
    const question = p.items()[2] as HTMLElement;
    const edit = p.within(question, ".nbchat-edit")[0] as HTMLButtonElement;
    edit.click();
    const box = question.querySelector<HTMLTextAreaElement>("textarea.nbchat-edit-input") as HTMLTextAreaElement;
    return { ...p, question, box };
  }

  it("is on user messages only", () => {
    const { apply, items, within } = mountPane();
    apply(0, conversation(2));
    expect(items().map((node) => within(node, ".nbchat-edit").length)).toEqual([1, 0, 1, 0]);
  });

  it("turns the message into a box with its text, focused, without Edit", () => {
    const { question, box, within } = editing();
    expect(box.value).toBe("question 2");
    expect(document.activeElement).toBe(box);
    expect(box.hasAttribute("data-lm-suppress-shortcuts")).toBe(true);
    expect(question.querySelector(".nbchat-body")).toBeNull();
    expect(within(question, ".nbchat-edit")).toHaveLength(0);
    expect(within(question, ".nbchat-edit-save")).toHaveLength(1);
    expect(within(question, ".nbchat-edit-cancel")).toHaveLength(1);
  });

  it("sends edit with the message's id and the new text on Enter, and closes", () => {
    const { model, question, box } = editing();
    box.value = "question 2, better";
    box.dispatchEvent(key({ key: "Enter" }));
    expect(model.sent).toEqual([{ type: "edit", id: "u2", text: "question 2, better" }]);
    expect(question.querySelector("textarea")).toBeNull();
    // Until the kernel's new branch arrives, the message shows what its record says.
    expect(question.querySelector(".nbchat-body")?.textContent).toBe("question 2");
  });

  it("sends on Save, breaks the line on Shift+Enter, and sends nothing blank", () => {
    const { model, box, question } = editing();
    box.value = "line one";
    box.setSelectionRange(box.value.length, box.value.length);
    const shifted = key({ key: "Enter", shiftKey: true });
    box.dispatchEvent(shifted);
    expect(shifted.defaultPrevented).toBe(true);
    expect(box.value).toBe("line one\n");
    const save = question.querySelector(".nbchat-edit-save") as HTMLButtonElement;
    box.value = "   ";
    save.click();
    box.dispatchEvent(key({ key: "Enter" }));
    expect(model.sent).toEqual([]);
    box.value = "line one\nline two";
    save.click();
    expect(model.sent).toEqual([{ type: "edit", id: "u2", text: "line one\nline two" }]);
  });

  it("restores the message on Escape or Cancel, sending nothing, the focus back on Edit", () => {
    const { model, question, box, within } = editing();
    box.value = "changed my mind";
    const escape = key({ key: "Escape" });
    box.dispatchEvent(escape);
    expect(escape.defaultPrevented).toBe(true);
    expect(question.querySelector("textarea")).toBeNull();
    expect(question.querySelector(".nbchat-body")?.textContent).toBe("question 2");
    const edit = within(question, ".nbchat-edit")[0] as HTMLButtonElement;
    expect(document.activeElement).toBe(edit);

    edit.click();
    (question.querySelector(".nbchat-edit-cancel") as HTMLButtonElement).click();
    expect(question.querySelector(".nbchat-body")?.textContent).toBe("question 2");
    expect(model.sent).toEqual([]);
  });

  it("keeps the box, its text and its focus through a change of the message's record", () => {
    const { apply, question, box, items } = editing();
    box.value = "half typed";
    apply(2, [user(2, { sibling_count: 2 }), reply(2)]); // someone ran chat.edit() in a cell
    expect(items()[2]).toBe(question);
    expect(question.querySelector("textarea")).toBe(box);
    expect(box.value).toBe("half typed");
    expect(document.activeElement).toBe(box);
  });

  it("lets Ctrl+S through to JupyterLab from the box, as from the input box", () => {
    const { box } = editing();
    box.dispatchEvent(key({ key: "s", code: "KeyS", ctrlKey: true }));
    expect(box.hasAttribute("data-lm-suppress-shortcuts")).toBe(false); // for this key press
    return new Promise<void>((resolve) =>
      setTimeout(() => {
        expect(box.hasAttribute("data-lm-suppress-shortcuts")).toBe(true);
        resolve();
      }, 0),
    );
  });

  it("does not send while a reply is in flight: the box stays open", () => {
    const { model, box, question } = editing();
    model.set("active", { reply: "r9", status: "streaming" });
    box.dispatchEvent(key({ key: "Enter" }));
    expect(model.sent).toEqual([]);
    expect(question.querySelector("textarea")).toBe(box);
  });

  it("shows the new branch the kernel sends: the edited message with its arrows", () => {
    const { model, apply, items, box } = editing();
    const before = items();
    box.value = "question 2, better";
    box.dispatchEvent(key({ key: "Enter" }));
    model.set("active", { reply: "r2b", status: "pending" });
    apply(2, [
      user(2, { id: "u2b", content: "question 2, better", sibling_index: 2, sibling_count: 2 }),
      reply(2, { id: "a2b", reply_id: "r2b", content: "", finish: null }),
    ]);
    const after = items();
    expect(after[0]).toBe(before[0]);
    expect(after[1]).toBe(before[1]);
    expect(after[2]?.querySelector(".nbchat-body")?.textContent).toBe("question 2, better");
    expect(after[2]?.querySelector(".nbchat-sibling-pos")?.textContent).toBe("2/2");
  });
});

describe("the commands", () => {
  it("are shaped as the golden frames the kernel's parser is tested with", () => {
    const { model, apply, items, within } = mountPane();
    apply(0, [user(1), reply(1, { sibling_index: 2, sibling_count: 2 })]);
    within(items()[1], ".nbchat-reply-retry")[0]?.click();
    within(items()[1], ".nbchat-sibling")[0]?.click();
    within(items()[0], ".nbchat-edit")[0]?.click();
    const box = items()[0]?.querySelector("textarea") as HTMLTextAreaElement;
    box.value = "Shorter, please";
    box.dispatchEvent(key({ key: "Enter" }));
    const shape = (command: object) => JSON.stringify(Object.keys(command).sort());
    const golden = new Set(fixture.commands.map((command) => `${command.type} ${shape(command)}`));
    expect(model.sent.map((command) => command.type)).toEqual(["retry", "checkout", "edit"]);
    for (const command of model.sent) expect(golden).toContain(`${command.type} ${shape(command)}`);
  });
});
