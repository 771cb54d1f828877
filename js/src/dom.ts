// The DOM helpers every part of the pane builds with.

/** On a text box: keys typed there are the pane's, not JupyterLab's (its Shift+Enter
 * would run the cell under the pane): Lumino skips shortcuts for such elements. */
export const SUPPRESS_SHORTCUTS = "data-lm-suppress-shortcuts";

export function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  attributes: Record<string, string> = {},
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

export function button(className: string, label: string, title: string): HTMLButtonElement {
  const node = element("button", `nbchat-button ${className}`, { type: "button", title });
  node.textContent = label;
  return node;
}

/** Make `parts` the children of `parent`, in order, without moving those already in
 * place: taking a node out and putting it back makes the browser recompute its whole
 * subtree's style and layout, which for a long reply's body is a task of 100 ms. */
export function placeChildren(parent: Element, parts: readonly Element[]): void {
  parts.forEach((part, i) => {
    const current = parent.children[i];
    if (current !== part) parent.insertBefore(part, current ?? null);
  });
  while (parent.children.length > parts.length) parent.lastElementChild?.remove();
}
