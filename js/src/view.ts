// One view of the chat: header (link status, model picker, Clear), the conversation
// (with its branch actions: Retry, Edit, the siblings' arrows), and the composer
// (input, Send, Pause/Resume, Stop). Link state and the reply in flight come from the
// model's traits; the transcript from the shared TranscriptStore; the in-flight reply's
// text from the shared StreamText. The conversation itself, a keyed and (when long)
// virtual list of messages, is messages.ts's.

import type { AnyModel } from "@anywidget/types";

import { button, element, SUPPRESS_SHORTCUTS } from "./dom";
import { MessageList } from "./messages";
import type { ChatModel, PaneCommand } from "./model";
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

  const messages = new MessageList({
    log,
    transcript,
    scroll,
    context: () => ({
      active: model.get("active"),
      link: model.get("status"),
      stream,
      answer: (call, run) => command({ type: "tool_answer", call, run }),
      branch: (message) => {
        if (model.get("active").reply) return false; // the kernel would refuse it
        command(message);
        if (message.type !== "checkout") scroll.jump(); // a new reply streams at the end
        return true;
      },
    }),
    emptyHint,
    moved: () => (jump.hidden = !scroll.showJump(log)),
  });

  const renderControls = () => {
    const active = model.get("active");
    const running = Boolean(active.reply);
    // No branch actions while a reply is in flight (widget.css hides them).
    if (root.hasAttribute("data-busy") !== running) root.toggleAttribute("data-busy", running);
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

  // Save is JupyterLab's, from the text boxes too: the attribute is lifted for this one
  // key press. A capture listener on window runs before JupyterLab's on document
  // (capture phase in Notebook 7, bubbling in Lab).
  const letSaveThrough = (event: KeyboardEvent) => {
    const box = event.target;
    if (!(box instanceof HTMLElement) || !root.contains(box) || !isSaveShortcut(event)) return;
    if (!box.hasAttribute(SUPPRESS_SHORTCUTS)) return; // the input box, or a message's edit box
    box.removeAttribute(SUPPRESS_SHORTCUTS);
    setTimeout(() => box.setAttribute(SUPPRESS_SHORTCUTS, "true"), 0);
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
    messages.onScroll();
  });
  jump.addEventListener("click", () => messages.jumpToLatest());

  const onActive = () => {
    messages.onActive();
    renderControls();
  };
  const onLink = () => {
    renderStatus();
    messages.onLink();
  };
  const handlers: Array<[string, () => void]> = [
    ["change:active", onActive],
    ["change:status", onLink],
    ["change:status_detail", renderStatus],
    ["change:error", renderStatus],
    ["change:models", renderModels],
    ["change:model", renderModels],
  ];
  for (const [event, handler] of handlers) model.on(event, handler);
  const unsubscribe = stream.subscribe(() => messages.onStream());
  const unsubscribeTranscript = transcript.subscribe((from) => messages.onTranscript(from));

  renderStatus();
  renderModels();
  renderControls();

  return () => {
    for (const [event, handler] of handlers) model.off(event, handler);
    unsubscribe();
    unsubscribeTranscript();
    messages.dispose();
    window.removeEventListener("keydown", letSaveThrough, true);
    root.remove();
  };
}
