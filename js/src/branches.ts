// Branches in the log: a message's siblings (its other versions, from Retry and Edit)
// as arrows, ◀ 2/3 ▶; Retry on the last reply; and the box that edits a user message.
// The kernel keeps the tree (nbchat.transcript) and sends the branch it shows; the pane
// asks for another with a BranchCommand. Records from a kernel without branches carry
// no id, and then a message offers none of these.

import { button, element, SUPPRESS_SHORTCUTS } from "./dom";
import type { BranchCommand, MessageRecord, Role } from "./model";

/** What a message offers besides its text. */
export interface BranchActions {
  /** Its place among its siblings, `[index, count]` (1-based), when it has any (a
   * reply's: on its answer, not on its tool rows). */
  siblings: [number, number] | null;
  /** Edit: a user message. */
  edit: boolean;
  /** Retry: the last message, a reply that has ended. */
  retry: boolean;
}

/** The actions of `record`, the transcript's last if `last`, arriving still if `live`. */
export function branchActions(
  record: MessageRecord,
  { last, live }: { last: boolean; live: boolean },
): BranchActions {
  if (!record.id) return { siblings: null, edit: false, retry: false };
  const count = record.sibling_count ?? 1;
  const index = record.sibling_index ?? 1;
  return {
    // A reply's tool rows carry its siblings too; its answer, after them, shows them.
    siblings: count > 1 && index >= 1 && index <= count && record.role !== "tool" ? [index, count] : null,
    edit: record.role === "user",
    retry: last && record.role === "assistant" && !live,
  };
}

/** The attribute naming a message's action button: after a branch switch replaces the
 * message, the list gives focus to the same action of the one in its place. */
export const ACTION = "data-action";

/** ◀ 2/3 ▶ under message `id`: an arrow asks the kernel to show the sibling before or
 * after this one (`checkout` with the sibling's index); at either end it is disabled. */
export function siblingArrows(
  id: string,
  role: Role,
  [index, count]: [number, number],
  act: (command: BranchCommand) => boolean,
): HTMLElement {
  const noun = role === "assistant" ? "reply" : "version";
  const group = element("span", "nbchat-siblings", {
    role: "group",
    "aria-label": `${noun[0]?.toUpperCase()}${noun.slice(1)} ${index} of ${count}`,
  });
  const arrow = (action: string, glyph: string, target: number) => {
    const label = `Show ${noun} ${target} of ${count}`;
    const node = button("nbchat-action nbchat-sibling", glyph, label);
    node.setAttribute("aria-label", label);
    node.setAttribute(ACTION, action);
    node.disabled = target < 1 || target > count;
    node.addEventListener("click", () => act({ type: "checkout", id, sibling: target }));
    return node;
  };
  const position = element("span", "nbchat-sibling-pos", { "aria-hidden": "true" });
  position.textContent = `${index}/${count}`;
  group.append(arrow("prev", "◀", index - 1), position, arrow("next", "▶", index + 1));
  return group;
}

/** The Edit button of a user message, or the Retry button of the last reply. */
export function actionButton(action: "edit" | "retry", onClick: () => void): HTMLButtonElement {
  const node =
    action === "edit"
      ? button("nbchat-action nbchat-edit", "Edit", "Edit this message and send it again (the original stays, ◀ ▶ switch)")
      : button("nbchat-action nbchat-reply-retry", "Retry", "Ask for another reply (this one stays, ◀ ▶ switch)");
  node.setAttribute(ACTION, action);
  node.addEventListener("click", onClick);
  return node;
}

export interface MessageEditor {
  el: HTMLElement;
  input: HTMLTextAreaElement;
}

/** The box a user message turns into while edited: a text box holding `text`; Enter or
 * Save calls `save` with the new text (not if blank), Shift+Enter breaks the line,
 * Escape or Cancel calls `cancel`. The caller shows the message again after either. */
export function messageEditor(
  text: string,
  { save, cancel }: { save: (text: string) => void; cancel: () => void },
): MessageEditor {
  const el = element("div", "nbchat-editor", { role: "group", "aria-label": "Edit message" });
  const input = element("textarea", "nbchat-edit-input", {
    "aria-label": "Edited message",
    rows: String(Math.min(10, Math.max(2, text.split("\n").length))),
    [SUPPRESS_SHORTCUTS]: "true",
  });
  input.value = text;
  const submit = () => {
    if (input.value.trim()) save(input.value);
  };
  const saveButton = button("nbchat-edit-save", "Save", "Send this version (Enter)");
  const cancelButton = button("nbchat-edit-cancel", "Cancel", "Keep the message as it was (Escape)");
  saveButton.addEventListener("click", submit);
  cancelButton.addEventListener("click", cancel);
  input.addEventListener("keydown", (event) => {
    if (event.isComposing) return;
    if (event.key === "Escape") {
      // Not JupyterLab's too (its Escape leaves the cell editor).
      event.preventDefault();
      event.stopPropagation();
      cancel();
    } else if (event.key === "Enter") {
      event.preventDefault();
      event.stopPropagation();
      if (event.shiftKey) input.setRangeText("\n", input.selectionStart, input.selectionEnd, "end");
      else submit();
    }
  });
  const actions = element("div", "nbchat-edit-actions");
  actions.append(saveButton, cancelButton);
  el.append(input, actions);
  return { el, input };
}
