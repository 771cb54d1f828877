// The compare pane (nbchat.compare.Compare): one prompt, one column per model, each
// streaming its reply. Part of the chat's bundle: index.ts hands it the models whose
// `kind` is "compare" (see isCompareModel). `initialize` keeps each column's text, assembled from the kernel's `batch` messages (offset chunks for several
// columns at once, or snapshots), so every view of one comparison shows the same text;
// `render` builds one view. Column state (status, timing, usage) comes from the
// `columns` trait, written by the kernel at most once per flush tick. Replies are
// rendered as the chat pane renders them: sanitized Markdown, block by block. A
// finished column's "Continue with this" picks it (the chat goes on with that answer);
// a refusal comes back in the `error` trait, shown under the header.

import type { AnyModel, Initialize, Render } from "@anywidget/types";

import { button, element } from "./dom";
import { MarkdownStream } from "./incremental";
import { addCodeBars } from "./message";
import type { ChunkMessage, Finish, ReplyStatus, SnapshotMessage } from "./model";
import { StreamText, type ApplyResult } from "./stream";

/** One column's state (mirrors nbchat.compare's `columns` trait). */
export interface ColumnState {
  model: string;
  reply: string | null;
  status: ReplyStatus;
  finish: Finish | null;
  error: string | null;
  first_token_s: number | null;
  duration_s: number | null;
  tokens_per_s: number | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  cost: number | null;
}

/** The synced traits of nbchat.Compare. */
export interface CompareModel {
  kind: "compare";
  compare_id: string;
  prompt: string;
  columns: ColumnState[];
  picked: string;
  error: string;
}

/** Whether a model of the bundle is a comparison (else it is a chat). */
export function isCompareModel(model: AnyModel<object>): boolean {
  return (model as AnyModel<{ kind?: string }>).get("kind") === "compare";
}

/** A chunk or snapshot of one column's reply. */
export type ColumnMessage = (ChunkMessage | SnapshotMessage) & { column: number };
/** kernel -> pane: new text of several columns at once, or their snapshots. */
export interface BatchMessage {
  type: "batch";
  messages: ColumnMessage[];
}
/** pane -> kernel: act on one column (by index) or, without one, on all. */
export type CompareCommand =
  | { type: "stop" | "pause" | "resume"; column?: number }
  | { type: "pick"; column: number }
  | { type: "sync" };

function isColumnMessage(value: unknown): value is ColumnMessage {
  if (typeof value !== "object" || value === null) return false;
  const m = value as Record<string, unknown>;
  if (typeof m.column !== "number" || !Number.isInteger(m.column) || m.column < 0) return false;
  if (typeof m.reply !== "string" || typeof m.text !== "string") return false;
  if (m.type === "snapshot") return true;
  return m.type === "chunk" && typeof m.offset === "number" && m.offset >= 0;
}

export function isBatchMessage(value: unknown): value is BatchMessage {
  if (typeof value !== "object" || value === null) return false;
  const m = value as Record<string, unknown>;
  return m.type === "batch" && Array.isArray(m.messages) && m.messages.every(isColumnMessage);
}

/** Every column's text, shared by the views of one comparison, telling them which
 * columns changed. */
export class CompareText {
  private readonly texts: StreamText[] = [];
  private readonly listeners = new Set<(columns: ReadonlySet<number>) => void>();

  text(column: number): string {
    return this.texts[column]?.text ?? "";
  }

  subscribe(listener: (columns: ReadonlySet<number>) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** "gap" if any message started past a column's text (ask for snapshots), else
   * "applied" if any extended one, else "stale". The rest of a batch applies anyway. */
  apply(batch: BatchMessage): ApplyResult {
    const changed = new Set<number>();
    let gap = false;
    for (const message of batch.messages) {
      const text = (this.texts[message.column] ??= new StreamText());
      const result = text.apply(message);
      if (result === "applied") changed.add(message.column);
      if (result === "gap") gap = true;
    }
    if (changed.size > 0) this.listeners.forEach((listener) => listener(changed));
    return gap ? "gap" : changed.size > 0 ? "applied" : "stale";
  }
}

export function isRunning(status: ReplyStatus): boolean {
  return status === "pending" || status === "streaming" || status === "paused";
}

/** What a column's header says of its reply. */
export function columnStatus(column: ColumnState): string {
  switch (column.status) {
    case "pending":
      return "waiting…";
    case "streaming":
      return "streaming";
    case "paused":
      return "paused";
    case "stopped":
      return "stopped";
    case "error":
      return "error";
    default:
      return column.finish === "length" ? "cut at max tokens" : "done";
  }
}

function seconds(value: number): string {
  return value < 10 ? `${value.toFixed(2)} s` : `${value.toFixed(1)} s`;
}

/** US dollars, with enough digits to tell cheap replies apart. */
export function formatCost(cost: number): string {
  if (cost === 0) return "$0";
  if (cost >= 0.01) return `$${cost.toFixed(2)}`;
  return `$${cost.toPrecision(2)}`;
}

/** A finished column's footer: time to first token, in all, tokens, speed, cost. */
export function footerLine(column: ColumnState): string {
  if (isRunning(column.status)) return "";
  const parts: string[] = [];
  if (column.first_token_s !== null) parts.push(`first token ${seconds(column.first_token_s)}`);
  if (column.duration_s !== null) parts.push(`total ${seconds(column.duration_s)}`);
  if (column.completion_tokens !== null) {
    const prompt = column.prompt_tokens !== null ? `${column.prompt_tokens} in, ` : "";
    parts.push(`${prompt}${column.completion_tokens} out tokens`);
  }
  if (column.tokens_per_s !== null) parts.push(`${column.tokens_per_s.toFixed(0)} tok/s`);
  if (column.cost !== null) parts.push(formatCost(column.cost));
  return parts.join(" · ");
}

/** A column's "Continue with this": offered once its reply has ended with an answer,
 * until one column is picked; the picked one says so. */
export function pickButton(
  column: ColumnState,
  picked: string,
): { hidden: boolean; disabled: boolean; label: string } {
  const answered = !isRunning(column.status) && column.status !== "error";
  if (picked !== "") {
    const chosen = picked === column.model;
    return { hidden: !chosen, disabled: true, label: chosen ? "Picked ✓" : "Continue with this" };
  }
  return { hidden: !answered, disabled: false, label: "Continue with this" };
}

/** What the global buttons do: Pause all pauses the columns streaming; once every
 * running column is paused it reads Resume all. */
export function globalControls(columns: readonly ColumnState[]): {
  running: boolean;
  allPaused: boolean;
} {
  const running = columns.filter((c) => isRunning(c.status));
  return {
    running: running.length > 0,
    allPaused: running.length > 0 && running.every((c) => c.status === "paused"),
  };
}

// How near the bottom of a column's text counts as following it.
const FOLLOW_SLACK_PX = 24;

interface ColumnView {
  root: HTMLElement;
  status: HTMLElement;
  pause: HTMLButtonElement;
  stop: HTMLButtonElement;
  pick: HTMLButtonElement;
  pickBar: HTMLElement;
  text: HTMLElement;
  markdown: MarkdownStream;
  error: HTMLElement;
  footer: HTMLElement;
  finished: boolean;
}

export function renderCompare(model: AnyModel<CompareModel>, el: HTMLElement, texts: CompareText): () => void {
  const command = (message: CompareCommand) => model.send(message);

  const root = element("div", "nbchat nbchat-compare");
  const header = element("div", "nbchat-header nbchat-compare-header");
  const prompt = element("div", "nbchat-compare-prompt", { title: "The prompt every model answers" });
  const pauseAll = button("nbchat-compare-pause-all", "Pause all", "Hold every reply; nothing is lost");
  const stopAll = button("nbchat-compare-stop-all", "Stop all", "Stop every reply and keep what arrived");
  header.append(prompt, pauseAll, stopAll);
  // Why a pick was refused (the kernel's words).
  const errorBox = element("div", "nbchat-error nbchat-compare-refusal", { role: "alert" });
  const grid = element("div", "nbchat-compare-grid");
  root.append(header, errorBox, grid);
  el.appendChild(root);

  let views: ColumnView[] = [];

  const build = (columns: readonly ColumnState[]) => {
    grid.replaceChildren();
    views = columns.map((state, index) => {
      const col = element("section", "nbchat-compare-col", { "aria-label": state.model });
      const head = element("div", "nbchat-compare-head");
      const name = element("span", "nbchat-compare-model");
      name.textContent = state.model;
      name.title = state.model;
      const status = element("span", "nbchat-compare-status", { role: "status" });
      const pause = button("nbchat-compare-pause", "Pause", "Hold this reply; nothing is lost");
      const stop = button("nbchat-compare-stop", "Stop", "Stop this reply and keep what arrived");
      pause.addEventListener("click", () => {
        const current = model.get("columns")[index];
        command({ type: current?.status === "paused" ? "resume" : "pause", column: index });
      });
      stop.addEventListener("click", () => command({ type: "stop", column: index }));
      const actions = element("span", "nbchat-compare-actions");
      actions.append(pause, stop);
      head.append(name, status, actions);
      const text = element("div", "nbchat-compare-text nbchat-markdown");
      const error = element("div", "nbchat-compare-error", { role: "alert" });
      const footer = element("div", "nbchat-compare-footer");
      const pick = button(
        "nbchat-compare-pick",
        "Continue with this",
        "Continue the chat with this answer, on this model",
      );
      pick.addEventListener("click", () => command({ type: "pick", column: index }));
      const pickBar = element("div", "nbchat-compare-pickbar");
      pickBar.appendChild(pick);
      col.append(head, text, error, footer, pickBar);
      grid.appendChild(col);
      const view: ColumnView = {
        root: col,
        status,
        pause,
        stop,
        pick,
        pickBar,
        text,
        markdown: new MarkdownStream(text, addCodeBars),
        error,
        footer,
        finished: false,
      };
      view.markdown.update(texts.text(index));
      return view;
    });
  };

  const renderColumns = () => {
    const columns = model.get("columns");
    if (columns.length !== views.length) build(columns);
    columns.forEach((state, index) => {
      const view = views[index];
      if (view === undefined) return;
      const running = isRunning(state.status);
      view.root.dataset.status = state.status;
      view.status.textContent = columnStatus(state);
      view.status.dataset.status = state.status;
      view.stop.disabled = !running;
      view.pause.disabled = !running || state.status === "pending";
      const paused = state.status === "paused";
      view.pause.textContent = paused ? "Resume" : "Pause";
      view.pause.title = paused ? "Deliver what was held, then go on" : "Hold this reply; nothing is lost";
      view.pause.setAttribute("aria-pressed", String(paused));
      view.error.textContent = state.error ?? "";
      view.error.hidden = !state.error;
      view.footer.textContent = footerLine(state);
      view.footer.hidden = view.footer.textContent === "";
      const pick = pickButton(state, model.get("picked") ?? "");
      view.pickBar.hidden = pick.hidden;
      view.pick.disabled = pick.disabled;
      view.pick.textContent = pick.label;
      if (!running && !view.finished) {
        // The kernel sends a column's last text before its end: render it as final.
        view.finished = true;
        view.markdown.update(texts.text(index));
        view.markdown.finish();
      }
    });
    const { running, allPaused } = globalControls(columns);
    stopAll.disabled = !running;
    pauseAll.disabled = !running;
    pauseAll.textContent = allPaused ? "Resume all" : "Pause all";
    pauseAll.setAttribute("aria-pressed", String(allPaused));
  };

  const renderPrompt = () => {
    prompt.textContent = model.get("prompt");
  };
  const renderError = () => {
    const error = model.get("error") ?? "";
    errorBox.textContent = error;
    errorBox.hidden = error === "";
  };

  pauseAll.addEventListener("click", () =>
    command({ type: globalControls(model.get("columns")).allPaused ? "resume" : "pause" }),
  );
  stopAll.addEventListener("click", () => command({ type: "stop" }));

  const onText = (changed: ReadonlySet<number>) => {
    for (const index of changed) {
      const view = views[index];
      if (view === undefined) continue;
      // A reader at the bottom follows the text; one who scrolled up keeps the place.
      const box = view.text;
      const following = box.scrollHeight - box.scrollTop - box.clientHeight <= FOLLOW_SLACK_PX;
      view.markdown.update(texts.text(index));
      if (following) box.scrollTop = box.scrollHeight;
      if (view.finished) view.markdown.finish(); // a snapshot after the end
    }
  };
  const unsubscribe = texts.subscribe(onText);
  model.on("change:columns", renderColumns);
  model.on("change:picked", renderColumns);
  model.on("change:prompt", renderPrompt);
  model.on("change:error", renderError);
  renderPrompt();
  renderError();
  renderColumns();

  return () => {
    unsubscribe();
    model.off("change:columns", renderColumns);
    model.off("change:picked", renderColumns);
    model.off("change:prompt", renderPrompt);
    model.off("change:error", renderError);
    root.remove();
  };
}

// Keyed by the comparison's id: anywidget gives initialize and each render a different
// proxy of the same model.
const shared = new Map<string, CompareText>();

function textsFor(model: AnyModel<CompareModel>): CompareText {
  const id = model.get("compare_id");
  let texts = shared.get(id);
  if (texts === undefined) {
    texts = new CompareText();
    shared.set(id, texts);
  }
  return texts;
}

const initialize: Initialize<CompareModel> = ({ model }) => {
  const texts = textsFor(model);
  const onMessage = (message: unknown) => {
    if (isBatchMessage(message) && texts.apply(message) === "gap") model.send({ type: "sync" });
  };
  model.on("msg:custom", onMessage);
  // A view of a comparison under way (or over: a page reload) gets the text so far.
  model.send({ type: "sync" });
  return () => {
    model.off("msg:custom", onMessage);
    shared.delete(model.get("compare_id"));
  };
};

const render: Render<CompareModel> = ({ model, el }) => renderCompare(model, el, textsFor(model));

export default { initialize, render };
