// While a chat's live pane is on screen, its saved copy is hidden. The kernel keeps the
// copy (the conversation as HTML, for the saved notebook, nbconvert and viewers without
// widgets) in the output after the pane; see src/nbchat/saved_copy.py. One style rule
// per chat, counted by views, so the copy shows again when the last view goes.

const SAVED_ATTRIBUTE = "data-nbchat-saved";

interface Hidden {
  views: number;
  style: HTMLStyleElement;
}

const hidden = new Map<string, Hidden>();

/** The CSS that hides the saved copy of chat `chatId` (its whole output in Lab). */
export function savedCopyRule(chatId: string): string {
  const match = `[${SAVED_ATTRIBUTE}="${chatId}"]`;
  return `${match}, .jp-OutputArea-child:has(${match}) { display: none !important; }`;
}

/** Hide chat `chatId`'s saved copy while the returned function has not been called. */
export function hideSavedCopy(chatId: string, doc: Document = document): () => void {
  // The id comes from the kernel (a uuid's hex); anything else is not put in a rule.
  if (!/^[0-9a-f]{1,64}$/.test(chatId)) return () => {};
  let entry = hidden.get(chatId);
  if (!entry) {
    const style = doc.createElement("style");
    style.dataset.nbchatHides = chatId;
    style.textContent = savedCopyRule(chatId);
    doc.head.append(style);
    entry = { views: 0, style };
    hidden.set(chatId, entry);
  }
  entry.views += 1;
  const held = entry;
  let released = false;
  return () => {
    if (released) return;
    released = true;
    held.views -= 1;
    if (held.views === 0) {
      held.style.remove();
      hidden.delete(chatId);
    }
  };
}
