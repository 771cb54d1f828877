// @vitest-environment jsdom
// The compare pane: its text assembled from batches, its state lines, and its DOM driven
// through a model that records what the view sends.
import type { AnyModel } from "@anywidget/types";
import { afterEach, describe, expect, it } from "vitest";

import bundle from "../src/index";
import compareModule, {
  CompareText,
  type BatchMessage,
  type ColumnMessage,
  type ColumnState,
  type CompareCommand,
  type CompareModel,
  columnStatus,
  footerLine,
  formatCost,
  globalControls,
  isBatchMessage,
  isCompareModel,
  pickButton,
  renderCompare,
} from "../src/compare";

const column = (over: Partial<ColumnState>): ColumnState => ({
  model: "demo", reply: "r1", status: "streaming", finish: null, error: null,
  first_token_s: null, duration_s: null, tokens_per_s: null, prompt_tokens: null,
  completion_tokens: null, cost: null, ...over,
});
const chunk = (col: number, offset: number, text: string, reply = `r${col}`): ColumnMessage => ({
  type: "chunk", column: col, reply, offset, text,
});
const batch = (...messages: ColumnMessage[]): BatchMessage => ({ type: "batch", messages });

class FakeModel {
  sent: CompareCommand[] = [];
  private readonly handlers = new Map<string, Set<(message?: unknown) => void>>();
  constructor(private readonly state: CompareModel) {}
  get<K extends keyof CompareModel>(name: K): CompareModel[K] {
    return this.state[name];
  }
  set<K extends keyof CompareModel>(name: K, value: CompareModel[K]): void {
    this.state[name] = value;
    this.handlers.get(`change:${name}`)?.forEach((handler) => handler());
  }
  send(message: CompareCommand): void {
    this.sent.push(message);
  }
  emit(message: unknown): void {
    this.handlers.get("msg:custom")?.forEach((handler) => handler(message));
  }
  on(event: string, handler: (message?: unknown) => void): void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)?.add(handler);
  }
  off(event: string, handler: (message?: unknown) => void): void {
    this.handlers.get(event)?.delete(handler);
  }
}

const cleanups: Array<() => void> = [];
afterEach(() => {
  cleanups.splice(0).forEach((cleanup) => cleanup());
  document.body.replaceChildren();
});

const state = (columns: ColumnState[], id = "c1"): CompareModel => ({
  kind: "compare", compare_id: id, prompt: "explain p-values", columns, picked: "", error: "",
});

function pane(columns: ColumnState[], texts = new CompareText()) {
  const model = new FakeModel(state(columns));
  const el = document.createElement("div");
  document.body.appendChild(el);
  cleanups.push(renderCompare(model as unknown as AnyModel<CompareModel>, el, texts));
  const cols = () => Array.from(el.querySelectorAll<HTMLElement>(".nbchat-compare-col"));
  const $ = <T extends Element = HTMLElement>(selector: string) => el.querySelector(selector) as T;
  return { model, el, texts, cols, $ };
}

describe("batches of text for several columns", () => {
  it("assemble each column's text by offset, whatever repeats", () => {
    const texts = new CompareText();
    const changed: number[][] = [];
    texts.subscribe((columns) => changed.push([...columns].sort()));
    expect(texts.apply(batch(chunk(0, 0, "Hel"), chunk(2, 0, "Bon")))).toBe("applied");
    expect(texts.apply(batch(chunk(0, 3, "lo"), chunk(0, 0, "Hel")))).toBe("applied");
    expect(texts.apply(batch(chunk(0, 0, "Hello")))).toBe("stale"); // seen already
    expect([texts.text(0), texts.text(1), texts.text(2)]).toEqual(["Hello", "", "Bon"]);
    expect(changed).toEqual([[0, 2], [0]]);
  });

  it("report a gap (then the pane asks for snapshots) but apply the rest of the batch", () => {
    const texts = new CompareText();
    texts.apply(batch(chunk(0, 0, "ab")));
    expect(texts.apply(batch(chunk(0, 5, "zz"), chunk(1, 0, "x")))).toBe("gap");
    expect(texts.text(1)).toBe("x");
    const snapshot: ColumnMessage = { type: "snapshot", column: 0, reply: "r0", text: "abcdezz" };
    expect(texts.apply(batch(snapshot))).toBe("applied");
    expect(texts.apply(batch(chunk(0, 2, "cde")))).toBe("stale"); // a late batch
    expect(texts.text(0)).toBe("abcdezz");
  });

  it("are told apart from anything else the kernel may send", () => {
    expect(isBatchMessage(batch(chunk(0, 0, "a")))).toBe(true);
    expect(isBatchMessage({ type: "batch", messages: [] })).toBe(true);
    expect(isBatchMessage({ type: "chunk", reply: "r", offset: 0, text: "a" })).toBe(false);
    expect(isBatchMessage({ type: "batch", messages: [{ type: "chunk", reply: "r", offset: 0, text: "a" }] })).toBe(false);
    expect(isBatchMessage({ type: "batch", messages: [chunk(-1, 0, "a")] })).toBe(false);
    expect(isBatchMessage({ type: "batch", messages: [chunk(0, -1, "a")] })).toBe(false);
    expect(isBatchMessage(null)).toBe(false);
  });
});

describe("the state lines", () => {
  it("offer a pick on an ended answer until one column is picked", () => {
    const done = column({ model: "gpt", status: "done", finish: "stop" });
    expect(pickButton(column({ status: "streaming" }), "")).toMatchObject({ hidden: true });
    expect(pickButton(column({ status: "error" }), "")).toMatchObject({ hidden: true });
    expect(pickButton(column({ status: "stopped" }), "")).toEqual({ hidden: false, disabled: false, label: "Continue with this" });
    expect(pickButton(done, "")).toEqual({ hidden: false, disabled: false, label: "Continue with this" });
    expect(pickButton(done, "gpt")).toEqual({ hidden: false, disabled: true, label: "Picked ✓" });
    expect(pickButton(done, "demo")).toMatchObject({ hidden: true, disabled: true });
  });

  it("say how each column ended, and its timing, tokens and cost when it has", () => {
    expect(columnStatus(column({ status: "pending" }))).toBe("waiting…");
    expect(columnStatus(column({ status: "done", finish: "length" }))).toBe("cut at max tokens");
    expect(columnStatus(column({ status: "done", finish: "stop" }))).toBe("done");
    expect(footerLine(column({ status: "streaming", first_token_s: 0.2 }))).toBe("");
    expect(
      footerLine(column({
        status: "done", first_token_s: 0.4213, duration_s: 12.34, prompt_tokens: 96,
        completion_tokens: 95, tokens_per_s: 201.7, cost: 0.000123,
      })),
    ).toBe("first token 0.42 s · total 12.3 s · 96 in, 95 out tokens · 202 tok/s · $0.00012");
    expect(footerLine(column({ status: "error", duration_s: 0.01 }))).toBe("total 0.01 s");
    expect([formatCost(0), formatCost(0.5), formatCost(0.0042)]).toEqual(["$0", "$0.50", "$0.0042"]);
  });

  it("make Pause all read Resume all once every running column is paused", () => {
    const done = column({ status: "done" });
    expect(globalControls([done, done])).toEqual({ running: false, allPaused: false });
    expect(globalControls([column({ status: "paused" }), done])).toEqual({ running: true, allPaused: true });
    expect(globalControls([column({ status: "paused" }), column({})])).toEqual({ running: true, allPaused: false });
  });
});

describe("the pane", () => {
  it("shows a column per model, each streaming its own Markdown", () => {
    const { cols, texts, $ } = pane([column({ model: "gpt" }), column({ model: "claude" }), column({ model: "demo" })]);
    expect(cols().map((c) => c.querySelector(".nbchat-compare-model")?.textContent)).toEqual(["gpt", "claude", "demo"]);
    expect($(".nbchat-compare-prompt").textContent).toBe("explain p-values");
    texts.apply(batch(chunk(0, 0, "**bold** start"), chunk(2, 0, "# Title\n\nbody <img src=x onerror=alert(1)>")));
    const body = (i: number) => cols()[i]?.querySelector(".nbchat-compare-text") as HTMLElement;
    expect(body(0).querySelector("strong")?.textContent).toBe("bold");
    expect(body(1).textContent).toBe("");
    expect(body(2).querySelector("h1")?.textContent).toBe("Title");
    expect(body(2).querySelector("img")).toBeNull(); // model output is untrusted
    texts.apply(batch(chunk(1, 0, "```python\nx = 1\n```\n")));
    expect(body(1).querySelector(".nbchat-code-bar")).not.toBeNull(); // as the chat's code blocks
  });

  it("sends stop, pause and resume for one column, or for all", () => {
    const { model, cols, $ } = pane([column({ model: "gpt" }), column({ model: "demo" })]);
    const head = (i: number, selector: string) => cols()[i]?.querySelector(selector) as HTMLButtonElement;
    head(1, ".nbchat-compare-stop").click();
    head(0, ".nbchat-compare-pause").click();
    model.set("columns", [column({ model: "gpt", status: "paused" }), column({ model: "demo" })]);
    expect(head(0, ".nbchat-compare-pause").textContent).toBe("Resume");
    expect(cols()[0]?.dataset.status).toBe("paused");
    head(0, ".nbchat-compare-pause").click();
    $<HTMLButtonElement>(".nbchat-compare-pause-all").click();
    $<HTMLButtonElement>(".nbchat-compare-stop-all").click();
    expect(model.sent).toEqual([
      { type: "stop", column: 1 },
      { type: "pause", column: 0 },
      { type: "resume", column: 0 },
      { type: "pause" },
      { type: "stop" },
    ]);
  });

  it("disables a finished column's buttons and shows its footer or its error", () => {
    const { model, cols, $ } = pane([column({ model: "gpt" }), column({ model: "nope" })]);
    model.set("columns", [
      column({ model: "gpt", status: "stopped", finish: "stopped", first_token_s: 0.1, duration_s: 0.5 }),
      column({ model: "nope", status: "error", finish: "error", error: "unknown model 'nope'" }),
    ]);
    const [gpt, nope] = cols();
    expect(gpt?.querySelector(".nbchat-compare-status")?.textContent).toBe("stopped");
    expect((gpt?.querySelector(".nbchat-compare-stop") as HTMLButtonElement).disabled).toBe(true);
    expect(gpt?.querySelector(".nbchat-compare-footer")?.textContent).toBe("first token 0.10 s · total 0.50 s");
    expect((nope?.querySelector(".nbchat-compare-error") as HTMLElement).hidden).toBe(false);
    expect(nope?.querySelector(".nbchat-compare-error")?.textContent).toBe("unknown model 'nope'");
    expect($<HTMLButtonElement>(".nbchat-compare-stop-all").disabled).toBe(true);
  });

  it("offers Continue with this on a finished answer, sends a pick, and shows a refusal", () => {
    const { model, cols, $ } = pane([column({ model: "gpt" }), column({ model: "nope" })]);
    const pick = (i: number) => cols()[i]?.querySelector(".nbchat-compare-pick") as HTMLButtonElement;
    const bar = (i: number) => cols()[i]?.querySelector(".nbchat-compare-pickbar") as HTMLElement;
    expect([bar(0).hidden, bar(1).hidden]).toEqual([true, true]); // still streaming
    model.set("columns", [
      column({ model: "gpt", status: "done", finish: "stop" }),
      column({ model: "nope", status: "error", finish: "error", error: "unknown model" }),
    ]);
    expect([bar(0).hidden, bar(1).hidden]).toEqual([false, true]); // an error is no answer
    pick(0).click();
    expect(model.sent).toEqual([{ type: "pick", column: 0 }]);
    const refusal = $(".nbchat-compare-refusal");
    expect(refusal.hidden).toBe(true);
    model.set("error", "the chat has a reply running; wait for it or stop it, then pick");
    expect(refusal.hidden).toBe(false);
    expect(refusal.textContent).toContain("the chat has a reply running");
    model.set("error", "");
    model.set("picked", "gpt");
    expect(refusal.hidden).toBe(true);
    expect([pick(0).textContent, pick(0).disabled]).toEqual(["Picked ✓", true]);
  });

  it("shows a late view the text so far, and a finished column's last block as final", () => {
    const texts = new CompareText();
    texts.apply(batch(chunk(0, 0, "```python\nx = 1")));
    const { model, cols } = pane([column({ model: "demo" })], texts);
    const code = () => cols()[0]?.querySelector("code") as HTMLElement;
    expect(code().textContent).toBe("x = 1");
    expect(code().querySelector("span")).toBeNull(); // an open fence: plain until it ends
    model.set("columns", [column({ model: "demo", status: "done", finish: "stop" })]);
    expect(code().querySelector("span")).not.toBeNull(); // highlighted once the reply ended
  });
});

describe("the module", () => {
  it("asks for snapshots when initialized and again after a gap; views share the text", () => {
    const model = new FakeModel(state([column({})], "shared-1"));
    const anyModel = model as unknown as AnyModel<CompareModel>;
    const { initialize, render } = compareModule as unknown as {
      initialize: (props: { model: AnyModel<CompareModel> }) => () => void;
      render: (props: { model: AnyModel<CompareModel>; el: HTMLElement }) => () => void;
    };
    const stopInit = initialize({ model: anyModel });
    expect(model.sent).toEqual([{ type: "sync" }]);
    model.emit(batch(chunk(0, 0, "one ")));
    const el = document.createElement("div");
    const stopRender = render({ model: anyModel, el });
    expect(el.querySelector(".nbchat-compare-text")?.textContent?.trim()).toBe("one");
    model.emit(batch(chunk(0, 9, "gap")));
    expect(model.sent).toEqual([{ type: "sync" }, { type: "sync" }]);
    model.emit({ type: "batch", messages: [{ type: "snapshot", column: 0, reply: "r0", text: "one two three" }] });
    expect(el.querySelector(".nbchat-compare-text")?.textContent?.trim()).toBe("one two three");
    stopRender();
    stopInit();
  });
});

describe("the bundle", () => {
  it("draws the compare pane for a comparison's model, and tells it from a chat's", () => {
    const model = new FakeModel(state([column({ model: "gpt" })], "bundle-1"));
    const anyModel = model as unknown as AnyModel<CompareModel>;
    expect(isCompareModel(anyModel)).toBe(true);
    expect(isCompareModel(new FakeModel({ chat_id: "x" } as unknown as CompareModel) as unknown as AnyModel<CompareModel>)).toBe(false);
    const { initialize, render } = bundle as unknown as {
      initialize: (props: { model: AnyModel<CompareModel> }) => () => void;
      render: (props: { model: AnyModel<CompareModel>; el: HTMLElement }) => () => void;
    };
    const stopInit = initialize({ model: anyModel });
    expect(model.sent).toEqual([{ type: "sync" }]);
    model.emit(batch(chunk(0, 0, "from the bundle")));
    const el = document.createElement("div");
    const stopRender = render({ model: anyModel, el });
    expect(el.querySelector(".nbchat-compare .nbchat-compare-text")?.textContent?.trim()).toBe("from the bundle");
    expect(el.querySelector(".nbchat-log")).toBeNull(); // not the chat pane
    stopRender();
    stopInit();
  });
});
