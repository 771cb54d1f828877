// One message of the conversation as the log shows it. Its DOM is built once and then
// touched only where something it shows changed: its record (compared as JSON), its
// state (the reply in flight, how a reply ended), a tool call's question, whether it is
// the last message (the last reply offers Retry), whether it is being edited, or, for
// the reply in flight, the streamed text, which MarkdownStream renders block by block.

import { ACTION, actionButton, branchActions, messageEditor, siblingArrows, type MessageEditor } from "./branches";
import { button, element, placeChildren } from "./dom";
import { MarkdownStream } from "./incremental";
import { renderMarkdown } from "./markdown";
import type { ActiveReply, Attachment, BranchCommand, MessageRecord, ReplyStatus } from "./model";
import type { LiveStream } from "./stream";

/** The state a message shows: the live status if it is the reply in flight. */
export function messageStatus(message: MessageRecord, active: ActiveReply): ReplyStatus | "" {
  if (message.role !== "assistant") return "";
  if (message.reply_id !== null && message.reply_id === active.reply) {
    return active.status ?? "streaming";
  }
  switch (message.finish) {
    case "stopped":
      return "stopped";
    case "error":
      return "error";
    case null:
      return "pending";
    default:
      return "done";
  }
}

/** The meta line of the reply in flight: paused, and whether the link is down under
 * it (the reply waits for the link to come back, or ends when it is given up). */
export function liveMetaLine(status: ReplyStatus | "", link: string): string {
  const parts: string[] = [];
  if (status === "paused") parts.push("paused");
  if (link === "reconnecting") parts.push("reconnecting…");
  return parts.join(" · ");
}

function metaLine(message: MessageRecord, status: ReplyStatus | ""): string {
  const parts: string[] = [];
  if (status === "stopped") parts.push("stopped");
  if (status === "paused") parts.push("paused");
  if (message.finish === "length") parts.push("cut at max tokens");
  if (message.duration_s !== null && status !== "streaming" && status !== "paused") {
    parts.push(`${message.duration_s.toFixed(1)} s`);
    if (message.tokens_per_s !== null) parts.push(`${message.tokens_per_s.toFixed(0)} tok/s`);
  }
  return parts.join(" · ");
}

/** Each code block in `root` (or `root` itself, a `<pre>`: MarkdownStream hands over
 * a top-level block) gets a bar above it with its language and a Copy button, so the
 * button never covers the code, however narrow the pane. */
export function addCodeBars(root: HTMLElement): void {
  const blocks = root.tagName === "PRE" ? [root] : Array.from(root.querySelectorAll("pre"));
  for (const pre of blocks) {
    const code = pre.querySelector("code");
    const bar = element("div", "nbchat-code-bar");
    const language = element("span", "nbchat-code-lang");
    language.textContent = /\blanguage-(\S+)/.exec(code?.className ?? "")?.[1] ?? "";
    const copy = button("nbchat-copy", "Copy", "Copy this code");
    copy.addEventListener("click", () => {
      void navigator.clipboard?.writeText(code?.textContent ?? "").then(
        () => (copy.textContent = "Copied"),
        () => (copy.textContent = "Copy failed"),
      );
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    });
    bar.append(language, copy);
    const block = element("div", "nbchat-code");
    pre.replaceWith(block);
    block.append(bar, pre);
  }
}

const PICTURE_URI = /^data:image\/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+={0,2}$/;

/** A chip per attachment of a user message (its name and kind); each opens a preview
 * of the text the model received, and a figure's picture. Text only: an attachment is
 * kernel data, never HTML. */
export function contextChips(context: readonly Attachment[]): HTMLElement {
  const list = element("div", "nbchat-context", { "aria-label": "Attached" });
  for (const item of context) {
    const chip = element("details", "nbchat-chip");
    const summary = element("summary", "");
    const name = element("span", "nbchat-chip-name");
    name.textContent = `@${item.name}`;
    const kind = element("span", "nbchat-chip-kind");
    kind.textContent = [item.kind, item.summary, item.picture].filter(Boolean).join(", ");
    summary.title = "Show what the model received";
    summary.append(name, kind);
    const preview = element("pre", "nbchat-chip-preview");
    preview.textContent = item.text;
    chip.append(summary);
    // Only a raster data URI is shown: nothing is fetched, and no SVG can run.
    if (item.image && PICTURE_URI.test(item.image)) {
      const picture = element("img", "nbchat-chip-picture", { alt: `Picture of ${item.name}` });
      picture.src = item.image;
      chip.append(picture);
    }
    chip.append(preview);
    list.appendChild(chip);
  }
  return list;
}

/** A tool call and its result, folded: the summary names the function and its
 * arguments; open, it shows the result. While the call waits for the user
 * (`confirm=True`), the question and its buttons show instead. Text only: the model
 * wrote the arguments and the function the result, neither is HTML. */
export function toolCall(
  message: MessageRecord,
  asking: boolean,
  answer: (call: string, run: boolean) => void,
): HTMLElement {
  const call = `${message.tool_name ?? "tool"}(${JSON.stringify(message.tool_arguments ?? {})})`;
  const details = element("details", "nbchat-tool");
  const summary = element("summary", "");
  const name = element("code", "nbchat-tool-call");
  name.textContent = call;
  const state = element("span", "nbchat-tool-state");
  state.textContent = toolState(message, asking);
  summary.append(name, state);
  const result = element("pre", "nbchat-tool-result");
  result.textContent = message.content;
  details.append(summary, result);
  if (!asking || !message.tool_call) return details;
  const callId = message.tool_call;
  const box = element("div", "nbchat-tool-ask", { role: "group", "aria-label": "Run this tool?" });
  const question = element("span", "nbchat-tool-question");
  question.textContent = `Run ${call} in the kernel?`;
  const run = button("nbchat-tool-run", "Run", "Run the function with these arguments");
  const skip = button("nbchat-tool-skip", "Don't run", "Tell the model you declined");
  const decide = (yes: boolean) => {
    run.disabled = true;
    skip.disabled = true;
    answer(callId, yes);
  };
  run.addEventListener("click", () => decide(true));
  skip.addEventListener("click", () => decide(false));
  box.append(question, run, skip);
  const wrap = element("div", "nbchat-tool-wrap");
  wrap.append(details, box);
  return wrap;
}

function toolState(message: MessageRecord, asking: boolean): string {
  if (asking) return "waiting for you";
  switch (message.finish) {
    case null:
      return "running…";
    case "error":
      return "failed";
    case "stopped":
      return "stopped";
    default:
      return message.duration_s !== null ? `${message.duration_s.toFixed(1)} s` : "";
  }
}

/** What a message's look depends on besides its record. */
export interface MessageContext {
  active: ActiveReply;
  /** The link's status: the reply in flight says when it waits for the link. */
  link: string;
  stream: LiveStream;
  answer: (call: string, run: boolean) => void;
  /** Send a branch command (Retry, Edit, the arrows) unless a reply is in flight (the
   * kernel refuses them then); says whether it was sent. */
  branch: (command: BranchCommand) => boolean;
}

const LIVE_STATES: ReadonlySet<string> = new Set(["streaming", "paused", "pending"]);

export class MessageView {
  readonly el: HTMLElement;
  record: MessageRecord;
  /** Whether this is a reply still arriving (its body follows the stream). */
  live = false;
  /** Whether this is the transcript's last message. */
  last: boolean;
  private json: string;
  private look: string | null = null; // state, question, link...: what the frame shows
  private context: MessageContext; // the latest, for the buttons' handlers
  private editor: MessageEditor | null = null; // while the user edits the message
  private readonly role = element("div", "nbchat-role");
  private readonly body = element("div", "nbchat-body");
  private readonly reasoning: HTMLDetailsElement | null = null;
  private readonly reasoningBody = element("div", "nbchat-reasoning-body");
  private stream: MarkdownStream | null = null;
  private shown: string | null = null; // the Markdown source the body shows

  constructor(record: MessageRecord, context: MessageContext, last = false) {
    this.record = record;
    this.last = last;
    this.context = context;
    this.json = JSON.stringify(record);
    this.el = element("div", `nbchat-msg nbchat-${record.role}`, { "data-role": record.role });
    if (record.role === "assistant") {
      // Reasoning streamed apart from the answer: there, but folded away.
      this.reasoning = element("details", "nbchat-reasoning");
      const summary = element("summary", "");
      summary.textContent = "Reasoning";
      this.reasoning.append(summary, this.reasoningBody);
      this.body.classList.add("nbchat-markdown");
    }
    this.render(context);
  }

  /** Bring the DOM to `record` as `context` shows it, the last message if `last`.
   * Nothing is touched when neither the record (compared as JSON) nor its state
   * changed, but a live reply's text. */
  update(record: MessageRecord, context: MessageContext, last = this.last): void {
    this.last = last;
    if (record !== this.record) {
      this.record = record;
      const json = JSON.stringify(record);
      if (json !== this.json) {
        this.json = json;
        this.look = null;
      }
    }
    this.render(context);
  }

  /** The stream brought more of this reply's text (or reasoning). */
  streamed(context: MessageContext): void {
    if (this.record.role === "assistant") this.renderReply(context);
  }

  /** Give focus to this message's button for `action` (see branches.ACTION), or, if
   * that one is disabled, to another of its arrows; says whether one took it. */
  focusAction(action: string): boolean {
    const buttons = Array.from(this.el.querySelectorAll<HTMLButtonElement>(`button[${ACTION}]`));
    const same = buttons.find((node) => node.getAttribute(ACTION) === action && !node.disabled);
    const arrow = buttons.find((node) => node.classList.contains("nbchat-sibling") && !node.disabled);
    const target = same ?? (action === "prev" || action === "next" ? arrow : undefined);
    target?.focus();
    return target !== undefined && document.activeElement === target;
  }

  private render(context: MessageContext): void {
    this.context = context;
    const record = this.record;
    const state = messageStatus(record, context.active);
    const live = record.role === "assistant" && LIVE_STATES.has(state);
    const asking =
      record.role === "tool" && Boolean(record.tool_call && context.active.asking?.includes(record.tool_call));
    const retry = branchActions(record, { last: this.last, live }).retry;
    const look = `${state}|${asking}|${live ? context.link : ""}|${retry}|${this.editor !== null}`;
    this.live = live;
    if (look !== this.look) {
      this.look = look;
      this.frame(state, asking, context);
    }
    if (record.role === "assistant") this.renderReply(context);
  }

  /** Turn the message into a box editing its text (a user message). */
  private startEdit(): void {
    const id = this.record.id;
    if (this.editor !== null || !id) return;
    this.editor = messageEditor(this.record.content, {
      save: (text) => {
        if (this.context.branch({ type: "edit", id, text })) this.stopEdit();
      },
      cancel: () => this.stopEdit(),
    });
    this.render(this.context);
    const input = this.editor.input;
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  /** Show the message as its record says again. After a Save, the kernel's new branch
   * replaces it once it arrives. */
  private stopEdit(): void {
    this.editor = null;
    this.render(this.context);
    this.focusAction("edit");
  }

  /** Everything but a reply's body and reasoning, which keep their nodes. */
  private frame(state: ReplyStatus | "", asking: boolean, context: MessageContext): void {
    const message = this.record;
    const item = this.el;
    // Moving the edit box in the DOM takes its focus: the user is typing there.
    const focused = document.activeElement;
    const typing = focused instanceof HTMLElement && this.editor?.el.contains(focused) ? focused : null;
    item.dataset.status = state;
    if (message.reply_id) item.dataset.reply = message.reply_id;
    else delete item.dataset.reply;
    this.role.textContent =
      message.role === "user" ? "You" : message.role === "tool" ? "Tool" : (message.model ?? "assistant");
    const parts: HTMLElement[] = [this.role];
    if (this.reasoning !== null) parts.push(this.reasoning);
    if (message.role === "tool") {
      const open = this.body.querySelector<HTMLDetailsElement>("details.nbchat-tool")?.open ?? false;
      this.body.replaceChildren(toolCall(message, asking, context.answer));
      if (open) (this.body.querySelector("details.nbchat-tool") as HTMLDetailsElement).open = true;
    } else if (message.role !== "assistant" && this.body.textContent !== message.content) {
      this.body.textContent = message.content;
    }
    if (this.live) {
      this.body.setAttribute("aria-live", "polite");
      this.body.setAttribute("aria-busy", "true");
    } else {
      this.body.removeAttribute("aria-live");
      this.body.removeAttribute("aria-busy");
    }
    parts.push(this.editor?.el ?? this.body);
    if (message.context?.length) {
      // A chip the reader opened stays open when its line changes (a picture's fate).
      const opened = Array.from(this.el.querySelectorAll<HTMLDetailsElement>("details.nbchat-chip"), (c) => c.open);
      const chips = contextChips(message.context);
      chips.querySelectorAll<HTMLDetailsElement>("details.nbchat-chip").forEach((chip, i) => {
        chip.open = opened[i] ?? false;
      });
      parts.push(chips);
    }
    if (message.error) {
      const error = element("div", "nbchat-msg-error", { role: "alert" });
      error.textContent = message.error;
      parts.push(error);
    }
    const meta = this.live
      ? liveMetaLine(state, context.link)
      : message.role === "tool"
        ? "" // its state is in its summary
        : metaLine(message, state);
    // Under the message: its siblings' arrows, the meta line, Edit or Retry.
    const foot: HTMLElement[] = [];
    const actions = branchActions(message, { last: this.last, live: this.live });
    if (actions.siblings && message.id) {
      foot.push(siblingArrows(message.id, message.role, actions.siblings, (c) => this.context.branch(c)));
    }
    if (meta || this.live) {
      const line = element("div", "nbchat-meta");
      line.textContent = meta;
      foot.push(line);
    }
    if (actions.edit && this.editor === null) foot.push(actionButton("edit", () => this.startEdit()));
    if (actions.retry) foot.push(actionButton("retry", () => this.context.branch({ type: "retry" })));
    if (foot.length) {
      const row = element("div", "nbchat-foot");
      row.append(...foot);
      parts.push(row);
    }
    placeChildren(item, parts);
    typing?.focus();
  }

  /** A reply's reasoning and text: streamed through MarkdownStream while it arrives
   * (only the growing tail is rendered again), rendered whole otherwise. The stream's
   * DOM is kept when the finished record says what it already shows. */
  private renderReply(context: MessageContext): void {
    const record = this.record;
    const reply = record.reply_id;
    const thought = this.live
      ? context.stream.reasoning.textFor(reply, record.reasoning ?? "")
      : (record.reasoning ?? "");
    if (this.reasoningBody.textContent !== thought) this.reasoningBody.textContent = thought;
    if (this.reasoning !== null && this.reasoning.hidden !== !thought) this.reasoning.hidden = !thought;

    if (this.live) {
      const text = context.stream.text.textFor(reply, record.content);
      if (this.stream === null) {
        this.stream = new MarkdownStream(this.body, addCodeBars); // it empties the body
        this.shown = null;
      }
      if (text !== this.shown) {
        this.stream.update(text);
        this.shown = text;
      }
      return;
    }
    if (this.stream !== null) {
      const stream = this.stream;
      this.stream = null;
      if (this.shown === record.content) {
        stream.finish();
        return;
      }
    }
    if (this.shown !== record.content) {
      this.body.innerHTML = renderMarkdown(record.content);
      addCodeBars(this.body);
      this.shown = record.content;
    }
  }
}
