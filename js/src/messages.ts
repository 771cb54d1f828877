// The conversation in the log: a MessageView per message, keyed, so a transcript
// change costs the messages it changed, not the conversation; and, past
// VIRTUAL_THRESHOLD messages, a virtual list: only messages near the viewport are in
// the DOM, between two spacers holding the heights of the rest (measured once a
// message has been on screen, cached by key; estimated before).
//
// Keys: a message is `id:<id>`, by the id the kernel gives it. After a branch switch
// the same turn can show another message, and so another key: that message is built,
// the one it replaces goes, and the messages before it keep their DOM. Records from a
// kernel without branches have no id; then a reply is `reply:<reply_id>`, a tool call
// `tool:<reply_id>:<call id>`, any other message `<role>:<turn>`. A key already taken
// gets `#2`, `#3`... All are stable across the kernel's `transcript` messages, which
// resend a turn's records from the first one that changed.
//
// What the virtual list cannot do: find-in-page (Ctrl+F) and select-all see only the
// messages in the DOM, so past the threshold they miss those scrolled far away.
// `chat.to_markdown()` and `chat.to_dataframe()` have the whole conversation.

import { ACTION } from "./branches";
import { element } from "./dom";
import { MessageView, type MessageContext } from "./message";
import type { ActiveReply, MessageRecord } from "./model";
import type { AutoScroll } from "./scroll";
import type { TranscriptStore } from "./transcript";
import { DEFAULT_VIEWPORT_PX, estimateHeight, HeightIndex, VIRTUAL_THRESHOLD } from "./virtual";

/** A message's key before duplicates are told apart (see the module's comment). */
export function messageKey(record: MessageRecord): string {
  if (record.id) return `id:${record.id}`;
  if (record.role === "tool" && record.tool_call) return `tool:${record.reply_id ?? ""}:${record.tool_call}`;
  if (record.role === "assistant" && record.reply_id) return `reply:${record.reply_id}`;
  return `${record.role}:${record.turn}`;
}

interface Entry {
  key: string;
  base: string; // the key before duplicates are told apart
  record: MessageRecord;
}

export interface MessageListOptions {
  log: HTMLElement;
  transcript: TranscriptStore;
  scroll: AutoScroll;
  /** The state messages show besides their records, read when they render. */
  context: () => MessageContext;
  /** What the log shows for a conversation with no messages yet. */
  emptyHint: () => HTMLElement;
  /** Called after the log's content or scroll position changed. */
  moved: () => void;
}

export class MessageList {
  private readonly log: HTMLElement;
  private readonly options: MessageListOptions;
  private entries: Entry[] = [];
  private readonly counts = new Map<string, number>(); // entries per base key
  private readonly heights = new HeightIndex();
  private readonly measured = new Map<string, number>(); // by key
  private readonly views = new Map<string, MessageView>(); // those in the DOM, by key
  private start = 0; // the entries [start, end) are in the DOM
  private end = 0;
  private readonly top = element("div", "nbchat-spacer", { "aria-hidden": "true" });
  private readonly bottom = element("div", "nbchat-spacer", { "aria-hidden": "true" });
  private hint: HTMLElement | null = null;
  private active: ActiveReply;
  private virtual = false;
  private full = false; // the log's height is fixed and contained (see bound())
  private pending: number | null = null; // a scheduled layout
  private readonly observer: ResizeObserver | null = null;

  constructor(options: MessageListOptions) {
    this.options = options;
    this.log = options.log;
    this.log.append(this.top, this.bottom);
    this.active = options.context().active;
    if (typeof ResizeObserver !== "undefined") {
      // The viewport changes size (the pane is shown, resized): lay out again.
      this.observer = new ResizeObserver(() => this.schedule());
      this.observer.observe(this.log);
    }
    // A folded or opened <details> (reasoning, a tool's result) changes the content's
    // height without a message changing: see whether the log still overflows.
    this.log.addEventListener("toggle", () => this.bound(), true);
    this.onTranscript(0);
  }

  /** The transcript's records from `from` on changed (see TranscriptStore). */
  onTranscript(from: number): void {
    const focus = this.focusedAction();
    const records = this.options.transcript.records;
    this.measure(); // heights by key, before positions shift
    const removed = new Map<string, MessageRecord>();
    for (let i = this.entries.length - 1; i >= from; i--) {
      const { key, base, record } = this.entries[i] as Entry;
      removed.set(key, record);
      const count = (this.counts.get(base) ?? 1) - 1;
      if (count > 0) this.counts.set(base, count);
      else this.counts.delete(base);
    }
    this.entries.length = Math.min(from, this.entries.length);
    this.heights.truncate(this.entries.length);
    for (let i = this.entries.length; i < records.length; i++) {
      const record = records[i] as MessageRecord;
      const base = messageKey(record);
      const seen = this.counts.get(base) ?? 0;
      this.counts.set(base, seen + 1);
      const key = seen ? `${base}#${seen + 1}` : base;
      const before = removed.get(key);
      removed.delete(key);
      // A height measured for what this key showed before holds only if it is unchanged.
      if (before !== record && (before === undefined || JSON.stringify(before) !== JSON.stringify(record))) {
        this.measured.delete(key);
      }
      this.entries.push({ key, base, record });
      this.heights.push(this.measured.get(key) ?? estimateHeight(record));
    }
    for (const key of removed.keys()) this.measured.delete(key);
    this.layout();
    if (focus !== null) this.restoreFocus(focus);
  }

  /** The reply in flight (or its state) changed: only its messages, and those of the
   * reply it replaces, are brought up to date. */
  onActive(): void {
    const context = this.options.context();
    const before = this.active.reply;
    const now = context.active.reply;
    this.active = context.active;
    for (const view of this.views.values()) {
      const reply = view.record.reply_id;
      if (reply !== null && (reply === before || reply === now)) view.update(view.record, context);
    }
    this.follow();
  }

  /** The link's status changed: the reply in flight says whether it waits for it. */
  onLink(): void {
    const context = this.options.context();
    for (const view of this.views.values()) if (view.live) view.update(view.record, context);
    this.follow();
  }

  /** More of the reply in flight arrived. */
  onStream(): void {
    const context = this.options.context();
    for (const view of this.views.values()) if (view.live) view.streamed(context);
    this.follow();
  }

  /** The reader (or we) scrolled. */
  onScroll(): void {
    if (this.virtual) this.schedule();
  }

  /** Show the newest text, and follow it from now on. */
  jumpToLatest(): void {
    this.options.scroll.jump();
    this.layout();
  }

  /** The action button with the focus (see branches.ACTION) and its message's index. */
  private focusedAction(): { index: number; action: string } | null {
    const focused = document.activeElement;
    const action = focused?.getAttribute(ACTION);
    if (!focused || !action || !this.log.contains(focused)) return null;
    for (let i = this.start; i < Math.min(this.end, this.entries.length); i++) {
      if (this.views.get((this.entries[i] as Entry).key)?.el.contains(focused)) return { index: i, action };
    }
    return null;
  }

  /** A branch switch replaced the message whose button had the focus: the message in
   * its place takes it (the same button, or its other arrow), else the log does, so a
   * keyboard user stays where they were. */
  private restoreFocus({ index, action }: { index: number; action: string }): void {
    if (this.log.contains(document.activeElement)) return;
    const entry = this.entries[index];
    const view = entry && this.views.get(entry.key);
    if (!view?.focusAction(action)) this.log.focus({ preventScroll: true });
  }

  dispose(): void {
    if (this.pending !== null) cancelFrame(this.pending);
    this.pending = null;
    this.observer?.disconnect();
  }

  private schedule(): void {
    if (this.pending === null) {
      this.pending = requestFrame(() => {
        this.pending = null;
        this.layout();
      });
    }
  }

  private follow(): void {
    if (this.options.scroll.following) scrollToEnd(this.log);
    this.bound();
    this.options.moved();
  }

  /** While the messages overflow the log, fix its height at its maximum and contain it
   * (widget.css `[data-full]`): the layout of a growing reply then stops at the log
   * instead of going through the notebook's, at every update. When they fit again
   * (messages went, a detail was folded, the pane got wider) the log is freed to
   * shrink. Either way the log overflows exactly when its content is taller than its
   * maximum, so one check serves both. Called after the log was laid out (scrollToEnd
   * just read it), so reading its size costs nothing more. */
  private bound(): void {
    const overflows = this.log.scrollHeight > this.log.clientHeight + 1;
    if (overflows === this.full) return;
    this.full = overflows;
    this.log.toggleAttribute("data-full", overflows);
  }

  /** Bring the DOM to the entries: which are in it (all, or those near the viewport),
   * the spacers, and where the log is scrolled to. While the reader follows the
   * newest text the log ends at the bottom; otherwise the message at the top of the
   * viewport stays where it was, whatever was measured or changed above it. */
  private layout(): void {
    if (this.pending !== null) cancelFrame(this.pending);
    this.pending = null;
    const n = this.entries.length;
    this.showHint(this.options.transcript.loaded && n === 0);
    const virtual = n > VIRTUAL_THRESHOLD;
    if (virtual !== this.virtual) {
      this.virtual = virtual;
      // Ours keeps the reader's place; the browser's own would fight it over the spacers.
      this.log.toggleAttribute("data-virtual", virtual);
    }
    if (!virtual) {
      this.render(0, n);
      this.follow();
      return;
    }
    this.measure();
    const log = this.log;
    const pad = parseFloat(getComputedStyle(log).paddingTop) || 0;
    const viewport = log.clientHeight || DEFAULT_VIEWPORT_PX;
    let anchor: { index: number; offset: number } | null = null;
    if (!this.options.scroll.following) {
      const y = log.scrollTop - pad;
      const index = this.heights.indexAt(y);
      anchor = { index, offset: y - this.heights.top(index) };
    }
    // Measuring what came into view can move the viewport onto messages not rendered
    // yet: a second pass renders those (a third is a safety net).
    for (let pass = 0; pass < 3; pass++) {
      const y = anchor
        ? this.heights.top(anchor.index) + anchor.offset
        : this.heights.total - viewport;
      const [start, end] = this.heights.window(y, viewport);
      if (pass > 0 && start === this.start && end === this.end) break;
      this.render(start, end);
      this.measure();
      if (anchor === null) scrollToEnd(log);
      else {
        const target = pad + this.heights.top(anchor.index) + anchor.offset;
        if (Math.abs(log.scrollTop - target) >= 1) log.scrollTop = target;
      }
    }
    this.bound();
    this.options.moved();
  }

  /** Have the entries [start, end) in the DOM, in order, between the spacers: views
   * kept by key (updated if their record changed), made for new ones, dropped for
   * those out of range. */
  private render(start: number, end: number): void {
    const wanted = new Set<string>();
    for (let i = start; i < end; i++) wanted.add((this.entries[i] as Entry).key);
    for (const [key, view] of this.views) {
      if (!wanted.has(key)) {
        view.el.remove();
        this.views.delete(key);
      }
    }
    const context = this.options.context();
    let cursor = this.top.nextSibling;
    const lastIndex = this.entries.length - 1;
    for (let i = start; i < end; i++) {
      const { key, record } = this.entries[i] as Entry;
      const last = i === lastIndex;
      let view = this.views.get(key);
      if (view === undefined) {
        view = new MessageView(record, context, last);
        this.views.set(key, view);
      } else if (view.record !== record || view.last !== last) {
        view.update(record, context, last);
      }
      if (view.el === cursor) cursor = cursor.nextSibling;
      else this.log.insertBefore(view.el, cursor);
    }
    this.start = start;
    this.end = end;
    setHeight(this.top, this.heights.top(start));
    setHeight(this.bottom, this.heights.total - this.heights.top(end));
  }

  /** Record the heights of the messages in the DOM (none while the log is hidden:
   * a zero height is no measurement). */
  private measure(): void {
    for (const [key, view] of this.views) {
      const height = view.el.offsetHeight;
      if (height > 0) this.measured.set(key, height);
    }
    for (let i = this.start; i < Math.min(this.end, this.entries.length); i++) {
      const height = this.measured.get((this.entries[i] as Entry).key);
      if (height !== undefined) this.heights.set(i, height);
    }
  }

  private showHint(show: boolean): void {
    if (show && this.hint === null) {
      this.hint = this.options.emptyHint();
      this.log.insertBefore(this.hint, this.top);
    } else if (!show && this.hint !== null) {
      this.hint.remove();
      this.hint = null;
    }
  }
}

function setHeight(spacer: HTMLElement, height: number): void {
  const value = `${Math.max(0, Math.round(height))}px`;
  if (spacer.style.height !== value) spacer.style.height = value;
}

function scrollToEnd(log: HTMLElement): void {
  if (log.scrollTop < log.scrollHeight - log.clientHeight) log.scrollTop = log.scrollHeight;
}

const requestFrame = (callback: () => void): number =>
  typeof requestAnimationFrame === "function"
    ? requestAnimationFrame(callback)
    : (setTimeout(callback, 16) as unknown as number);

const cancelFrame = (handle: number): void =>
  typeof cancelAnimationFrame === "function" ? cancelAnimationFrame(handle) : clearTimeout(handle);
