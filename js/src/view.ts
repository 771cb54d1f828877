// One view of the chat: header (link status, model picker, Clear), the conversation,
// and the composer (input, Send, Pause/Resume, Stop). Link state and the reply in
// flight come from the model's traits; the transcript from the shared TranscriptStore;
// the in-flight reply's text from the shared StreamText.

import type { AnyModel } from "@anywidget/types";

import { renderMarkdown } from "./markdown";
import type { Attachment, ChatModel, MessageRecord, PaneCommand, ReplyStatus } from "./model";
import { AutoScroll } from "./scroll";
import type { LiveStream } from "./stream";
import type { TranscriptStore } from "./transcript";

const STATUS_LABELS: Record<string, string> = {
  connecting: "connecting…",
  connected: "connected",
  reconnecting: "reconnecting",
  offline: "offline",
  closed: "closed",
};

/** "reconnecting (attempt 2, next in 0.7 s)", "connected (resumed after 1.2 s)", ... */
export function statusLabel(status: string, detail: string): string {
  const label = STATUS_LABELS[status] ?? status;
  return detail ? `${label} (${detail})` : label;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  attributes: Record<string, string> = {},
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function button(className: string, label: string, title: string): HTMLButtonElement {
  const node = element("button", `nbchat-button ${className}`, { type: "button", title });
  node.textContent = label;
  return node;
}

/** The state a message shows: the live status if it is the reply in flight. */
export function messageStatus(message: MessageRecord, active: ChatModel["active"]): ReplyStatus | "" {
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

/** Example prompts the empty pane offers; the demo model answers each with its shape
 * (a table, code, a formula), so every renderer can be seen offline. */
export const EXAMPLE_PROMPTS: readonly string[] = [
  "Show me a table comparing Python, R and Julia",
  "Write Python code that counts the words in a file",
  "What is the formula for the variance of a sample?",
];

/** The models the picker offers: the gateway's list, and the model in use first if the
 * list lacks it (set from code, or one the gateway does not list). */
export function pickerModels(models: readonly string[], current: string): string[] {
  return current && !models.includes(current) ? [current, ...models] : [...models];
}

/** Ctrl+S, or Cmd+S on macOS: the host's Save, let through from the input box. */
export function isSaveShortcut(event: KeyboardEvent): boolean {
  if (event.altKey || event.shiftKey || !(event.ctrlKey || event.metaKey)) return false;
  return event.code === "KeyS" || event.key.toLowerCase() === "s";
}

// Keys typed in the input box are the pane's, not JupyterLab's (its Shift+Enter would
// run the cell under the pane): Lumino skips shortcuts for elements with this attribute.
const SUPPRESS_SHORTCUTS = "data-lm-suppress-shortcuts";

/** Each code block gets a bar above it with its language and a Copy button, so the
 * button never covers the code, however narrow the pane. */
function addCodeBars(body: HTMLElement): void {
  for (const pre of Array.from(body.querySelectorAll("pre"))) {
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

/** A chip per attachment of a user message (its name and kind); each opens a preview
 * of the text the model received. Text only: an attachment is kernel data, never HTML. */
export function contextChips(context: readonly Attachment[]): HTMLElement {
  const list = element("div", "nbchat-context", { "aria-label": "Attached" });
  for (const item of context) {
    const chip = element("details", "nbchat-chip");
    const summary = element("summary", "");
    const name = element("span", "nbchat-chip-name");
    name.textContent = `@${item.name}`;
    const kind = element("span", "nbchat-chip-kind");
    kind.textContent = item.summary ? `${item.kind}, ${item.summary}` : item.kind;
    summary.title = "Show what the model received";
    summary.append(name, kind);
    const preview = element("pre", "nbchat-chip-preview");
    preview.textContent = item.text;
    chip.append(summary, preview);
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

export function renderChat(
  model: AnyModel<ChatModel>,
  el: HTMLElement,
  stream: LiveStream,
  transcript: TranscriptStore,
): () => void {
  const command = (message: PaneCommand) => model.send(message);

  const root = element("div", "nbchat");
  const header = element("div", "nbchat-header");
  const status = element("span", "nbchat-status", { role: "status" });
  const picker = element("select", "nbchat-model", { "aria-label": "Model" });
  const clear = button("nbchat-clear", "Clear", "Stop and start a new conversation");
  const retry = button("nbchat-retry", "Retry", "Try to reach the gateway again now");
  header.append(status, retry, picker, clear);

  const errorBox = element("div", "nbchat-error", { role: "alert" });
  const log = element("div", "nbchat-log", { role: "log", tabindex: "0", "aria-label": "Conversation" });
  const jump = button("nbchat-jump", "Jump to latest ↓", "Scroll to the newest text");

  const composer = element("div", "nbchat-composer");
  const input = element("textarea", "nbchat-input", {
    rows: "2",
    "aria-label": "Message",
    placeholder: "Message (Enter to send, Shift+Enter for a new line)",
    [SUPPRESS_SHORTCUTS]: "true",
  });
  const send = button("nbchat-send", "Send", "Send (Enter)");
  const pause = button("nbchat-pause", "Pause", "Hold the reply; nothing is lost");
  const stop = button("nbchat-stop", "Stop", "Stop the reply and keep what arrived");
  const actions = element("div", "nbchat-actions");
  actions.append(send, pause, stop);
  composer.append(input, actions);
  root.append(header, errorBox, log, jump, composer);
  el.appendChild(root);

  const scroll = new AutoScroll();
  let liveBody: HTMLElement | null = null;
  let liveMeta: HTMLElement | null = null;
  let liveState: ReplyStatus | "" = "";
  let liveReasoning: HTMLElement | null = null;
  let liveReply: string | null = null;
  let liveRendered = "";

  const followIfNeeded = () => {
    if (scroll.following) log.scrollTop = log.scrollHeight;
    jump.hidden = !scroll.showJump(log);
  };

  const renderLive = () => {
    if (liveBody === null) return;
    const record = transcript.records.find((m) => m.reply_id === liveReply);
    if (liveReasoning !== null) {
      const thought = stream.reasoning.textFor(liveReply, record?.reasoning ?? "");
      liveReasoning.textContent = thought;
      (liveReasoning.parentElement as HTMLElement).hidden = !thought;
    }
    const text = stream.text.textFor(liveReply, record?.content ?? "");
    if (text === liveRendered) return;
    liveRendered = text;
    liveBody.innerHTML = renderMarkdown(text);
    addCodeBars(liveBody);
    followIfNeeded();
  };

  const emptyHint = () => {
    const hint = element("div", "nbchat-empty");
    const text = element("p", "");
    text.textContent = "Ask anything: type below and press Enter, or try one of these.";
    const examples = element("div", "nbchat-examples");
    for (const prompt of EXAMPLE_PROMPTS) {
      const example = button("nbchat-example", prompt, "Send this message");
      example.addEventListener("click", () => {
        command({ type: "send", text: prompt });
        scroll.jump();
      });
      examples.appendChild(example);
    }
    hint.append(text, examples);
    return hint;
  };

  const renderMessages = () => {
    const active = model.get("active");
    log.replaceChildren();
    liveBody = null;
    liveMeta = null;
    liveReasoning = null;
    liveReply = null;
    liveRendered = "";
    // Not before the transcript arrives: a resumed conversation would flash it.
    if (transcript.loaded && transcript.records.length === 0) log.appendChild(emptyHint());
    for (const message of transcript.records) {
      const state = messageStatus(message, active);
      const item = element("div", `nbchat-msg nbchat-${message.role}`, {
        "data-role": message.role,
        "data-status": state,
      });
      if (message.reply_id) item.dataset.reply = message.reply_id;
      const role = element("div", "nbchat-role");
      role.textContent =
        message.role === "user" ? "You" : message.role === "tool" ? "Tool" : (message.model ?? "assistant");
      const body = element("div", "nbchat-body");
      item.append(role);
      let reasoning: HTMLElement | null = null;
      if (message.role === "assistant") {
        // Reasoning streamed apart from the answer: there, but folded away.
        const details = element("details", "nbchat-reasoning");
        const summary = element("summary", "");
        summary.textContent = "Reasoning";
        reasoning = element("div", "nbchat-reasoning-body");
        reasoning.textContent = message.reasoning ?? "";
        details.append(summary, reasoning);
        details.hidden = !message.reasoning;
        item.append(details);
        body.classList.add("nbchat-markdown");
        const live = state === "streaming" || state === "paused" || state === "pending";
        if (live) {
          body.setAttribute("aria-live", "polite");
          body.setAttribute("aria-busy", "true");
          liveBody = body;
          liveReasoning = reasoning;
          liveReply = message.reply_id;
        } else {
          body.innerHTML = renderMarkdown(message.content);
          addCodeBars(body);
        }
      } else if (message.role === "tool") {
        const asking = Boolean(message.tool_call && active.asking?.includes(message.tool_call));
        body.append(
          toolCall(message, asking, (call, run) => command({ type: "tool_answer", call, run })),
        );
      } else {
        body.textContent = message.content;
      }
      item.append(body);
      if (message.context?.length) item.append(contextChips(message.context));
      if (message.error) {
        const error = element("div", "nbchat-msg-error", { role: "alert" });
        error.textContent = message.error;
        item.appendChild(error);
      }
      const live = liveBody === body;
      const meta = live
        ? liveMetaLine(state, model.get("status"))
        : message.role === "tool"
          ? "" // its state is in its summary
          : metaLine(message, state);
      if (meta || live) {
        const line = element("div", "nbchat-meta");
        line.textContent = meta;
        item.appendChild(line);
        if (live) {
          liveMeta = line;
          liveState = state;
        }
      }
      log.appendChild(item);
    }
    renderLive();
    followIfNeeded();
  };

  const renderControls = () => {
    const active = model.get("active");
    const running = Boolean(active.reply);
    stop.disabled = !running;
    pause.disabled = !running;
    const paused = active.status === "paused";
    pause.textContent = paused ? "Resume" : "Pause";
    pause.title = paused ? "Deliver what was held, then go on" : "Hold the reply; nothing is lost";
    pause.setAttribute("aria-pressed", String(paused));
  };

  const renderStatus = () => {
    const link = model.get("status");
    status.dataset.status = link;
    status.textContent = statusLabel(link, model.get("status_detail"));
    if (liveMeta !== null) liveMeta.textContent = liveMetaLine(liveState, link);
    retry.hidden = link !== "offline" && link !== "reconnecting";
    const error = model.get("error");
    errorBox.textContent = error;
    errorBox.hidden = !error;
  };

  const renderModels = () => {
    const current = model.get("model");
    const listed = model.get("models");
    const names = pickerModels(listed, current);
    picker.replaceChildren(
      ...names.map((name) => {
        const option = element("option", "", { value: name });
        option.textContent = name;
        if (!listed.includes(name)) option.title = "In use; the gateway does not list it";
        option.selected = name === current;
        return option;
      }),
    );
    picker.disabled = names.length === 0;
  };

  const submit = () => {
    const text = input.value;
    if (!text.trim()) return;
    command({ type: "send", text });
    input.value = "";
    scroll.jump();
  };

  // Save is JupyterLab's, from the input box too: the attribute is lifted for this one
  // key press. A capture listener on window runs before JupyterLab's on document
  // (capture phase in Notebook 7, bubbling in Lab).
  const letSaveThrough = (event: KeyboardEvent) => {
    if (event.target !== input || !isSaveShortcut(event)) return;
    input.removeAttribute(SUPPRESS_SHORTCUTS);
    setTimeout(() => input.setAttribute(SUPPRESS_SHORTCUTS, "true"), 0);
  };
  window.addEventListener("keydown", letSaveThrough, true);

  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing) return;
    // Both keys are handled here: the notebook around the pane would otherwise take
    // Shift+Enter (run cell) and cancel its default of inserting a line break.
    event.preventDefault();
    event.stopPropagation();
    if (event.shiftKey) {
      input.setRangeText("\n", input.selectionStart, input.selectionEnd, "end");
    } else {
      submit();
    }
  });
  send.addEventListener("click", submit);
  stop.addEventListener("click", () => command({ type: "stop" }));
  pause.addEventListener("click", () =>
    command({ type: model.get("active").status === "paused" ? "resume" : "pause" }),
  );
  clear.addEventListener("click", () => command({ type: "clear" }));
  retry.addEventListener("click", () => command({ type: "reconnect" }));
  picker.addEventListener("change", () => {
    model.set("model", picker.value);
    model.save_changes();
  });
  log.addEventListener("scroll", () => {
    scroll.onScroll(log);
    jump.hidden = !scroll.showJump(log);
  });
  jump.addEventListener("click", () => {
    scroll.jump();
    followIfNeeded();
  });

  const onActive = () => {
    renderMessages();
    renderControls();
  };
  const handlers: Array<[string, () => void]> = [
    ["change:active", onActive],
    ["change:status", renderStatus],
    ["change:status_detail", renderStatus],
    ["change:error", renderStatus],
    ["change:models", renderModels],
    ["change:model", renderModels],
  ];
  for (const [event, handler] of handlers) model.on(event, handler);
  const unsubscribe = stream.subscribe(renderLive);
  const unsubscribeTranscript = transcript.subscribe(renderMessages);

  renderStatus();
  renderModels();
  renderMessages();
  renderControls();

  return () => {
    for (const [event, handler] of handlers) model.off(event, handler);
    unsubscribe();
    unsubscribeTranscript();
    window.removeEventListener("keydown", letSaveThrough, true);
    root.remove();
  };
}
