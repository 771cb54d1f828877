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
