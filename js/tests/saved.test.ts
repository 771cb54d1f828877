// @vitest-environment jsdom
import { describe, expect, it } from "vitest";

import { hideSavedCopy } from "../src/saved";

function savedCopy(chatId: string): HTMLElement {
  const output = document.createElement("div");
  output.className = "jp-OutputArea-child";
  const copy = document.createElement("div");
  copy.setAttribute("data-nbchat-saved", chatId);
  copy.textContent = "Saved copy";
  output.append(copy);
  document.body.append(output);
  return copy;
}

const shown = (node: HTMLElement) => getComputedStyle(node).display !== "none";

describe("hideSavedCopy", () => {
  it("hides the chat's own copy while a view lives, and only that chat's", () => {
    const mine = savedCopy("abc123");
    const other = savedCopy("def456");
    const first = hideSavedCopy("abc123");
    const second = hideSavedCopy("abc123");
    expect(shown(mine)).toBe(false);
    expect(shown(other)).toBe(true);
    first();
    first(); // a second call of the same cleanup changes nothing
    expect(shown(mine)).toBe(false); // the second view still lives
    second();
    expect(shown(mine)).toBe(true);
    expect(document.head.querySelectorAll("style[data-nbchat-hides]")).toHaveLength(0);
  });

  it("puts no id that is not hex into a style rule", () => {
    const release = hideSavedCopy('x"] body {display:none} [a="');
    expect(document.head.querySelectorAll("style[data-nbchat-hides]")).toHaveLength(0);
    release();
  });
});
