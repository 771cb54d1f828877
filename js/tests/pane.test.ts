// @vitest-environment jsdom
// The pane's DOM, driven through a model that records what the view sends and sets.
import type { AnyModel } from "@anywidget/types";
import { afterEach, describe, expect, it } from "vitest";

import type { ChatModel, MessageRecord } from "../src/model";
import { LiveStream } from "../src/stream";
import { TranscriptStore } from "../src/transcript";
import { EXAMPLE_PROMPTS, isSaveShortcut, pickerModels, renderChat } from "../src/view";
import { FakeModel } from "./fake-model";

const record = (over: Partial<MessageRecord>): MessageRecord => ({
  turn: 1, role: "assistant", content: "", model: "demo", finish: "stop", error: null,
  reply_id: "r1", reasoning: null, first_token_s: null, duration_s: null, tokens_per_s: null,
  ...over,
});

const cleanups: Array<() => void> = [];
afterEach(() => {
  cleanups.splice(0).forEach((cleanup) => cleanup());
  document.body.replaceChildren();
});

function pane(over: Partial<ChatModel> = {}) {
  const model = new FakeModel({
    chat_id: "c1", status: "connected", status_detail: "", error: "",
    models: ["demo", "gpt-4o"], model: "demo", active: {}, ...over,
  });
  const stream = new LiveStream();
  const transcript = new TranscriptStore();
  const el = document.createElement("div");
  document.body.appendChild(el);
  cleanups.push(renderChat(model as unknown as AnyModel<ChatModel>, el, stream, transcript));
  const $ = <T extends Element = HTMLElement>(selector: string) => el.querySelector(selector) as T;
  return { model, stream, transcript, el, $ };
}

describe("the model picker", () => {
  it("offers the model in use first when the gateway does not list it", () => {
    expect(pickerModels(["demo", "gpt-4o"], "my-model")).toEqual(["my-model", "demo", "gpt-4o"]);
    expect(pickerModels(["demo", "gpt-4o"], "gpt-4o")).toEqual(["demo", "gpt-4o"]);
    expect(pickerModels([], "my-model")).toEqual(["my-model"]);
    expect(pickerModels(["demo"], "")).toEqual(["demo"]);
  });

  it("shows the model in use, listed or not, and switches to any entry chosen", () => {
    const { model, $ } = pane({ model: "my-model" });
    const picker = $<HTMLSelectElement>(".nbchat-model");
    expect(picker.value).toBe("my-model");
    expect(Array.from(picker.options, (o) => o.value)).toEqual(["my-model", "demo", "gpt-4o"]);

    picker.value = "gpt-4o";
    picker.dispatchEvent(new Event("change"));
    expect(model.get("model")).toBe("gpt-4o");
    expect(model.saves).toBe(1);
    expect(picker.value).toBe("gpt-4o");

    model.set("model", "set-from-code"); // chat.model = "set-from-code" in a cell
    expect(picker.value).toBe("set-from-code");
    picker.value = "demo";
    picker.dispatchEvent(new Event("change"));
    expect(model.get("model")).toBe("demo");
  });

  it("shows the model in use before the gateway's list arrives", () => {
    const { $ } = pane({ models: [], model: "my-model" });
    const picker = $<HTMLSelectElement>(".nbchat-model");
    expect(picker.value).toBe("my-model");
    expect(picker.disabled).toBe(false);
  });
});

describe("the empty pane", () => {
  it("offers example prompts that send themselves, and goes once there is a message", () => {
    const { model, transcript, $, el } = pane();
    expect($(".nbchat-empty")).toBeNull(); // not before the kernel sent the transcript
    transcript.apply({ type: "transcript", from: 0, records: [] });
    const examples = Array.from(el.querySelectorAll<HTMLButtonElement>(".nbchat-example"));
    expect(examples.map((b) => b.textContent)).toEqual([...EXAMPLE_PROMPTS]);
    expect(EXAMPLE_PROMPTS.length).toBeGreaterThanOrEqual(2);
    expect($(".nbchat-empty").textContent).toContain("press Enter");

    examples[1]?.click();
    expect(model.sent).toEqual([{ type: "send", text: EXAMPLE_PROMPTS[1] }]);

    transcript.apply({ type: "transcript", from: 0, records: [record({ role: "user", content: EXAMPLE_PROMPTS[1] })] });
    expect($(".nbchat-empty")).toBeNull();
    transcript.apply({ type: "transcript", from: 0, records: [] }); // Clear
    expect($(".nbchat-empty")).not.toBeNull();
  });
});

describe("code blocks", () => {
  it("have their Copy button in a bar above the code, never inside it", () => {
    const { transcript, $ } = pane();
    transcript.apply({ type: "transcript", from: 0, records: [record({ content: "```python\nprint('hi')\n```" })] });
    const block = $(".nbchat-code");
    expect(block.children[0]?.className).toBe("nbchat-code-bar");
    expect(block.children[1]?.tagName).toBe("PRE");
    expect($(".nbchat-code-lang").textContent).toBe("python");
    expect($(".nbchat-code-bar .nbchat-copy")).not.toBeNull();
    expect($("pre .nbchat-copy")).toBeNull();
    expect($("pre").textContent).toBe("print('hi')");
  });
});

describe("keys in the input box", () => {
  // What JupyterLab's shortcut handler (on document) sees when a key reaches it.
  function hostSees(input: HTMLTextAreaElement, init: KeyboardEventInit, capture: boolean) {
    const seen: Array<{ suppressed: boolean }> = [];
    const listener = () => seen.push({ suppressed: input.hasAttribute("data-lm-suppress-shortcuts") });
    document.addEventListener("keydown", listener, capture);
    input.dispatchEvent(new KeyboardEvent("keydown", { bubbles: true, cancelable: true, ...init }));
    document.removeEventListener("keydown", listener, capture);
    return seen;
  }

  it("knows Ctrl+S and Cmd+S, and nothing else, as Save", () => {
    const key = (init: KeyboardEventInit) => isSaveShortcut(new KeyboardEvent("keydown", init));
    expect(key({ key: "s", code: "KeyS", ctrlKey: true })).toBe(true);
    expect(key({ key: "s", code: "KeyS", metaKey: true })).toBe(true);
    expect(key({ key: "S", code: "KeyS", ctrlKey: true })).toBe(true);
    expect(key({ key: "s", code: "KeyS" })).toBe(false);
    expect(key({ key: "S", code: "KeyS", ctrlKey: true, shiftKey: true })).toBe(false);
    expect(key({ key: "a", code: "KeyA", ctrlKey: true })).toBe(false);
  });

  it.each([true, false])("lets Save through to the host, and only Save (capture: %s)", async (capture) => {
    const { $ } = pane();
    const input = $<HTMLTextAreaElement>(".nbchat-input");
    expect(hostSees(input, { key: "s", code: "KeyS", ctrlKey: true }, capture)).toEqual([
      { suppressed: false },
    ]);
    await new Promise((resolve) => setTimeout(resolve, 0));
    expect(input.hasAttribute("data-lm-suppress-shortcuts")).toBe(true);
    expect(hostSees(input, { key: "a", code: "KeyA" }, capture)).toEqual([{ suppressed: true }]);
    expect(hostSees(input, { key: "c", code: "KeyC", ctrlKey: true, shiftKey: true }, capture)).toEqual([
      { suppressed: true },
    ]);
  });

  it("keeps Enter and Shift+Enter in the box", () => {
    const { model, $ } = pane();
    const input = $<HTMLTextAreaElement>(".nbchat-input");
    input.value = "line one";
    input.setSelectionRange(8, 8);
    expect(hostSees(input, { key: "Enter", shiftKey: true }, false)).toEqual([]);
    expect(input.value).toBe("line one\n");
    expect(hostSees(input, { key: "Enter" }, false)).toEqual([]);
    expect(model.sent).toEqual([{ type: "send", text: "line one\n" }]);
  });
});

describe("math in the reply in flight", () => {
  it("shows half a formula as text, then the formula once its end arrives", () => {
    const { stream, transcript, model, $ } = pane();
    model.set("active", { reply: "r1", status: "streaming" });
    transcript.apply({ type: "transcript", from: 0, records: [record({ finish: null, content: "" })] });
    const body = () => $('.nbchat-msg[data-role="assistant"] .nbchat-body');
    const whole = "Euler: $e^{i\\pi} + 1 = 0$ and\n\n$$\n\\sum_{n=1}^{\\infty} \\frac{1}{n^2} = \\frac{\\pi^2}{6}\n$$\n";
    const cut = whole.indexOf("\\frac{1}");
    stream.apply({ type: "chunk", reply: "r1", offset: 0, text: whole.slice(0, cut) });
    expect(body().querySelectorAll(".katex")).toHaveLength(1);
    expect(body().textContent).toContain("$$");
    stream.apply({ type: "chunk", reply: "r1", offset: cut, text: whole.slice(cut) });
    const streamed = body().innerHTML;
    expect(body().querySelectorAll(".katex")).toHaveLength(2);
    expect(body().querySelector(".katex-display")).not.toBeNull();

    // The same as the whole text rendered at once, as the finished message.
    model.set("active", {});
    transcript.apply({ type: "transcript", from: 0, records: [record({ content: whole })] });
    expect(body().innerHTML).toBe(streamed);
  });
});

describe("tool calls", () => {
  const toolRow = (over: Partial<MessageRecord> = {}) =>
    record({
      role: "tool", content: "| Acme | 900 |", model: null, finish: "stop", duration_s: 0.42,
      tool_name: "top_customers", tool_arguments: { n: 3 }, tool_call: "call_1", ...over,
    });

  it("show folded: the call in the summary, the result inside, as text", () => {
    const { transcript, $ } = pane();
    const row = toolRow({ content: "<img src=x onerror=alert(1)>" });
    transcript.apply({ type: "transcript", from: 0, records: [record({ role: "user", content: "who?" }), row] });
    const details = $<HTMLDetailsElement>(".nbchat-tool");
    expect(details.hasAttribute("open")).toBe(false); // folded
    expect($(".nbchat-tool-call").textContent).toBe('top_customers({"n":3})');
    expect($(".nbchat-tool-state").textContent).toBe("0.4 s");
    expect($(".nbchat-tool-result").textContent).toBe("<img src=x onerror=alert(1)>");
    expect($(".nbchat-tool-result img")).toBeNull();
    expect($('[data-role="tool"] .nbchat-role').textContent).toBe("Tool");
    expect($(".nbchat-tool-ask")).toBeNull();
  });

  it("ask before running when the kernel waits for an answer, and send it", () => {
    const { model, transcript, $ } = pane({ active: { reply: "r1", status: "streaming", asking: ["call_1"] } });
    transcript.apply({ type: "transcript", from: 0, records: [toolRow({ content: "", finish: null })] });
    expect($(".nbchat-tool-question").textContent).toBe('Run top_customers({"n":3}) in the kernel?');
    expect($(".nbchat-tool-state").textContent).toBe("waiting for you");
    $<HTMLButtonElement>(".nbchat-tool-run").click();
    expect(model.sent).toEqual([{ type: "tool_answer", call: "call_1", run: true }]);
    expect($<HTMLButtonElement>(".nbchat-tool-skip").disabled).toBe(true); // one answer

    model.set("active", { reply: "r1", status: "streaming" }); // answered: the question goes
    expect($(".nbchat-tool-ask")).toBeNull();
    expect($(".nbchat-tool-state").textContent).toBe("running…");
  });

  it("send a refusal from Don't run", () => {
    const { model, transcript, $ } = pane({ active: { reply: "r1", status: "streaming", asking: ["call_1"] } });
    transcript.apply({ type: "transcript", from: 0, records: [toolRow({ content: "", finish: null })] });
    $<HTMLButtonElement>(".nbchat-tool-skip").click();
    expect(model.sent).toEqual([{ type: "tool_answer", call: "call_1", run: false }]);
  });
});
