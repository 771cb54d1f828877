// @vitest-environment jsdom
import { describe, expect, it } from "vitest";

import { renderMarkdown } from "../src/markdown";

function dom(source: string): HTMLElement {
  const div = document.createElement("div");
  div.innerHTML = renderMarkdown(source);
  return div;
}

/** The TeX sources of the formulas rendered, from KaTeX's MathML annotation. */
function formulas(root: HTMLElement): string[] {
  return Array.from(root.querySelectorAll("annotation")).map((a) => a.textContent ?? "");
}

describe("math", () => {
  it.each([
    ["$x^2$", "x^2", false],
    ["$$x^2$$", "x^2", true],
    ["\\(x^2\\)", "x^2", false],
    ["\\[x^2\\]", "x^2", true],
    ["Area: $\\pi r^2$, inline.", "\\pi r^2", false],
    ["Before\n\n$$\n\\frac{1}{n} \\sum_{i=1}^{n} x_i\n$$\n\nafter", "\\frac{1}{n} \\sum_{i=1}^{n} x_i", true],
    ["Before\n\n\\[\n\\int_0^1 x \\, dx\n\\]\n\nafter", "\\int_0^1 x \\, dx", true],
    ["see \\[a + b\\] here", "a + b", true],
  ])("renders %j with KaTeX", (source, tex, display) => {
    const root = dom(source);
    expect(root.querySelectorAll(".katex")).toHaveLength(1);
    expect(root.querySelectorAll(".katex-display")).toHaveLength(display ? 1 : 0);
    expect(formulas(root)).toEqual([tex]);
  });

  it("keeps Markdown around display math", () => {
    const root = dom("# Mean\n\n$$\n\\bar{x} = \\frac{1}{n}\\sum x_i\n$$\n\n- one\n- two\n");
    expect(root.querySelector("h1")?.textContent).toBe("Mean");
    expect(root.querySelectorAll("li")).toHaveLength(2);
    expect(root.querySelector(".nbchat-math .katex-display")).not.toBeNull();
  });

  it("leaves currency and lone dollars as text", () => {
    for (const source of [
      "It costs $5 and $10.",
      "between $5-$10 a day",
      "a $ sign and another $ sign",
      "Prices: $3.50, $4.25",
      "Escaped: \\$x\\$",
    ]) {
      const root = dom(source);
      expect(root.querySelector(".katex"), source).toBeNull();
      expect(root.textContent).toContain("$");
    }
    expect(dom("Escaped: \\$x\\$").textContent?.trim()).toBe("Escaped: $x$");
  });

  it("does not touch code", () => {
    const root = dom("`$x$` and\n\n```\n$$y$$ \\(z\\)\n```\n");
    expect(root.querySelector(".katex")).toBeNull();
    expect(root.querySelector("p code")?.textContent).toBe("$x$");
    expect(root.querySelector("pre")?.textContent?.trim()).toBe("$$y$$ \\(z\\)");
  });

  it("keeps Markdown escapes out of a formula", () => {
    // \\ is a line break to TeX, not an escaped backslash.
    const root = dom("$$\n\\begin{matrix} a & b \\\\ c & d \\end{matrix}\n$$");
    expect(formulas(root)).toEqual(["\\begin{matrix} a & b \\\\ c & d \\end{matrix}"]);
    expect(root.querySelector(".katex-error")).toBeNull();
  });

  it("shows a bad formula as its source, not an exception", () => {
    const root = dom("$\\frac{1}{$ and $x$");
    expect(root.textContent).toContain("\\frac{1}{");
    expect(root.querySelectorAll(".katex")).toHaveLength(1);
  });
});

describe("math while it streams", () => {
  // Every prefix of a reply is rendered as the batches arrive.
  const whole =
    "The mean is $\\bar{x} = 4.2$ and\n\n$$\n\\int_{-\\infty}^{\\infty} e^{-x^2} \\, dx = \\sqrt{\\pi}\n$$\n\nend";

  it("shows half a formula as text until it closes", () => {
    const open = whole.indexOf("$\\bar") + 5; // "$\bar" arrived, not its closing $
    const half = dom(whole.slice(0, open));
    expect(half.querySelector(".katex")).toBeNull();
    expect(half.textContent).toContain("$\\bar");

    const inDisplay = dom(whole.slice(0, whole.indexOf("dx")));
    expect(inDisplay.querySelectorAll(".katex")).toHaveLength(1); // the inline one only
    expect(inDisplay.textContent).toContain("$$");
    expect(inDisplay.textContent).toContain("\\int_");

    const oneDollarShort = dom(whole.slice(0, whole.lastIndexOf("$")));
    expect(oneDollarShort.querySelectorAll(".katex-display")).toHaveLength(0);
  });

  it("renders a formula split across two batches the same as whole", { timeout: 20_000 }, () => {
    const expected = renderMarkdown(whole);
    // Cuts inside each formula and on each delimiter.
    for (let cut = 1; cut < whole.length; cut += 2) {
      const first = whole.slice(0, cut);
      renderMarkdown(first); // the pane renders the first batch, then both
      expect(renderMarkdown(first + whole.slice(cut)), `cut at ${cut}`).toBe(expected);
    }
    expect(dom(whole).querySelectorAll(".katex")).toHaveLength(2);
  });
});

describe("math is safe", () => {
  const payloads = [
    "$\\href{javascript:window.__pwned=1}{click}$",
    "$\\url{javascript:window.__pwned=1}$",
    "$\\htmlData{onclick=window.__pwned=1}{x}$",
    "$\\htmlId{x\" onmouseover=\"window.__pwned=1}{x}$",
    "$\\htmlClass{x}{y}$ $\\htmlStyle{background:url(javascript:1)}{y}$",
    "$\\includegraphics{https://example.org/x.png}$",
    "$<img src=x onerror=window.__pwned=1>$",
    "$$\\text{<script>window.__pwned=1</script>}$$",
    "\\(\\href{javascript:alert(1)}{x}\\)",
  ];

  it.each(payloads)("%s does nothing", (source) => {
    const root = dom(source);
    expect(root.querySelector("a, img, script, iframe, object, embed, foreignObject")).toBeNull();
    for (const node of Array.from(root.querySelectorAll("*"))) {
      for (const attribute of Array.from(node.attributes)) {
        expect(attribute.name.startsWith("on"), `${node.tagName} ${attribute.name}`).toBe(false);
        expect(attribute.name.startsWith("data-"), `${node.tagName} ${attribute.name}`).toBe(false);
        expect(attribute.name).not.toBe("id");
        expect(attribute.value.toLowerCase()).not.toContain("javascript:");
      }
    }
  });
});
