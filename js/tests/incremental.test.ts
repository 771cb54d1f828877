// @vitest-environment jsdom
// The stream's contract: however a reply is cut into batches, update() over the batches
// then finish() leaves the container exactly as rendering the whole reply at once
// (blocks are not wrapped, so the two innerHTMLs compare as they are); after each batch
// it shows what rendering that prefix at once would, and finished blocks keep their nodes.
import fc from "fast-check";
import { describe, expect, it, vi } from "vitest";

import { MarkdownStream } from "../src/incremental";
import { lexBlocks, renderMarkdown } from "../src/markdown";

// Property runs per test: enough for every CI run; NBCHAT_PROPERTY_RUNS=10 (times as
// many) for a deep search. (jsdom's parser is what makes each run cost.)
// jsdom tracks each NodeIterator (DOMPurify makes one per call) with a WeakRef, which
// keeps it and its whole document alive until the current task ends: long loops yield
// to the event loop now and then (`tick`), or the heap grows by gigabytes.
const env = (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env;
const DEPTH = Number(env?.NBCHAT_PROPERTY_RUNS ?? "1");
const runs = (base: number): number => Math.max(1, Math.round(base * DEPTH));

// The same lexBlocks, recorded: to see how much text an update lexes.
vi.mock("../src/markdown", async (importOriginal) => {
  const original = await importOriginal<typeof import("../src/markdown")>();
  return { ...original, lexBlocks: vi.fn(original.lexBlocks) };
});

const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** The whole reply, rendered by renderMarkdown, as a container's innerHTML. */
function reference(text: string): string {
  const div = document.createElement("div");
  div.innerHTML = renderMarkdown(text);
  return div.innerHTML;
}

/** What one update with the text so far shows (no batches before it). */
function atOnce(text: string, finished = false): string {
  const div = document.createElement("div");
  const stream = new MarkdownStream(div);
  stream.update(text);
  if (finished) stream.finish();
  return div.innerHTML;
}

function cut(text: string, cuts: number[]): string[] {
  const points = [...new Set(cuts.filter((c) => c > 0 && c < text.length))].sort((a, b) => a - b);
  return [...points, text.length].map((end) => text.slice(0, end));
}

/** Streams `prefixes` then finishes, checking each step against rendering that prefix
 * at once; returns the container's final innerHTML. */
async function streamed(prefixes: string[]): Promise<string> {
  const div = document.createElement("div");
  const stream = new MarkdownStream(div);
  for (const [i, prefix] of prefixes.entries()) {
    if (i % 50 === 49) await tick();
    stream.update(prefix);
    expect(div.innerHTML, `after ${JSON.stringify(prefix)}`).toBe(atOnce(prefix));
  }
  stream.finish();
  return div.innerHTML;
}

const CORPUS: Record<string, string> = {
  lists:
    "Intro with *emphasis* and **strong** text.\n\n- one\n- two\n  - nested a\n  - nested b\n" +
    "- three\n\n1. first\n\n2. second, loose\n\n   more of the second item\n\n3. third\n" +
    "4) other delimiter\n\n* star\n+ plus\n\n- a\n\n  b\n\nc\n- d\n\n   - e\n",
  ordered: "1. a\n\n2\n\n2. b\n3. c\n\n10. d\n11. e\n\nafter\n",
  tasks: "- [ ] todo\n- [x] done\n\n***\n\n- item\n\n---\n",
  table:
    "| Name | Value |\n|:-----|------:|\n| a | 1 |\n| b | 2 |\n| c | `x\\|y` |\n\nAfter the table.\n",
  tableAfterParagraph:
    "Lead-in text\n| a | b |\n|---|---|\n| 1 | 2 |\nlazy row\n\n| x |\n|---|---|\nnot a table\n",
  fences:
    "````markdown\n```python\nprint(\"hi\")\n```\n````\n\n~~~js\nconst x = 1;\n~~~\n\n" +
    "```python\ndef f():\n    return 1\n``` not closing\n```\n\ntext\n```\nnever closed\n\n# not a heading\n",
  indented: "para\n\n    indented code\n    more\n\nafter\n    lazy\n",
  html:
    "Some <b>bold</b> and <img src=x onerror=alert(1)> text.\n\n<div onclick=\"alert(1)\">\nblock\n</div>\n\n" +
    "<script>\nalert(1)\n\n</script>\n\n<!-- a comment\n\nspanning -->\n<a href=\"javascript:alert(1)\">x</a>\n",
  links:
    "See [docs](https://example.org \"title\"), <https://example.com>, www.example.net and " +
    "mail@example.org.\n\nA [reference link][ref], a [collapsed][] one and [shortcut].\n\n" +
    "- [ref] in a list\n\n> [ref] in a quote\n\n[ref]: https://example.org/ref \"Ref\"\n" +
    "[collapsed]: https://example.org/c\n[shortcut]: <https://example.org/s>\n[ref]: https://late.example\n\n" +
    "[x](javascript:alert(1)) ![img](x.png)\n",
  definitionTitle: "[a] and [b]\n\n[a]: /url\n\"title\"\n[b]:\n/b 'bt'\n\nend [a]\n",
  headings:
    "# ATX heading\n\nSetext one\n==========\n\nSetext two\n---\n\nParagraph\ncontinued line\n---\n" +
    "#not heading\n## closed ##\n\n- item\n---\n",
  quotes: "> quote line\nlazy continuation\n> > nested\n\n> second\n> - list in quote\n> ```\n> code\n> ```\n\nout\n",
  math:
    "Inline $x^2$ and $\\alpha + \\beta$, currency $5 and $10.\n\n$$\n\\int_0^1 x\\,dx\n$$\n\n" +
    "Paragraph then\n$$y = mx + b$$\nand \\(a\\) \\[b\\]\n\n\\[\n\\frac{1}{2}\n\\]\n$$bad$$x\n",
  emphasis: "This is *emph* and **strong** and ***both*** and ~~del~~ and `code`.\n_under_ __score__ *a\n\nb* end\n",
  reply:
    "## Plan\n\nHere is the code:\n\n```python\nimport pandas as pd\n\ndf = pd.read_csv(\"x.csv\")\n" +
    "print(df.head())\n```\n\nSteps:\n\n1. Load the data.\n2. Clean it:\n   ```bash\n   pip install x\n   ```\n" +
    "3. Plot.\n\n| step | time |\n|---|---|\n| load | 1s |\n| plot | 2s |\n\nDone.",
  crlf: "a\r\nb\r\n\r\n- c\r\n- d\r\n\r\n```\r\ncode\r\n```\r\n",
  // Marked looks past the line it parses: "10. " and "--" split the paragraph before
  // them (a table's first two lines?) until "--" becomes "---a".
  lookahead: "a\n10. \n---a\n\nb\n",
  // Display math takes in a heading when its closing $$ comes.
  mathOverBlocks: "a\n$$\nb\n# h\nx\n- y\nc$$\n\nafter\n",
  // A definition's title in quotes runs over blank lines until it closes.
  openTitle:
    "See [a] and [b].\n\n[a]: /x\n\"a title\n\nover\n\nblank lines\"\n\n[b]: /y (another\n\nlong\n\none)\n\nend\n",
};

describe("MarkdownStream", () => {
  it.each(Object.entries(CORPUS))("renders %s like the whole reply", (_name, text) => {
    expect(atOnce(text, true)).toBe(reference(text));
  });

  it.each(Object.entries(CORPUS))("renders %s arriving one character at a time", async (_name, text) => {
    expect(await streamed(Array.from(text, (_c, i) => text.slice(0, i + 1)))).toBe(reference(text));
  });

  it("renders every document cut into any batches like the whole document", { timeout: 600_000 }, async () => {
    const property = fc.asyncProperty(
      fc.constantFrom(...Object.values(CORPUS)),
      fc.array(fc.nat(), { maxLength: 40 }),
      async (text, cuts) => {
        await tick();
        expect(await streamed(cut(text, cuts.map((c) => c % text.length)))).toBe(reference(text));
      },
    );
    await fc.assert(property, { numRuns: runs(300) });
  });

  // Random documents made of Markdown's building blocks find the lexer's corner cases.
  const PIECES = [
    "a", "b c", " ", "   ", "    ", "\n", "\n", "\n\n", "- ", "* ", "+ ", "1. ", "2) ", "# ", "## ",
    "> ", "|", "| a | b |", "|---|---|", "---", "===", "***", "```", "~~~", "`", "*", "_", "~~",
    "[a]", "[a]: /x", "[b][a]", "(", ")", "$", "$$", "\\[", "\\]", "<div>", "</div>", "<", ">",
    "https://x.y", "\t", "\\", ":", "!", "[ ] ", "<!--", "-->", "x\"", "'t'", "10. ", "\r\n",
    "[a]: /x \"", "(t)", "<script>", "<pre>", "<![CDATA[", "$$x$$", "  - ", "\n\n",
  ];

  it("renders random Markdown cut into random batches like the whole document", { timeout: 600_000 }, async () => {
    const property = fc.asyncProperty(
      fc.array(fc.constantFrom(...PIECES), { minLength: 1, maxLength: 80 }).map((p) => p.join("")),
      fc.array(fc.nat(), { maxLength: 30 }),
      async (text, cuts) => {
        await tick();
        expect(await streamed(cut(text, cuts.map((c) => c % text.length)))).toBe(reference(text));
      },
    );
    await fc.assert(property, { numRuns: runs(600) });
  });
});

/** A reply of `count` blocks of every kind, each ending in a blank line. */
function longReply(count: number): string[] {
  const kinds = [
    (i: number) => `Paragraph ${i} with *emphasis*, \`code\` and [a link](https://example.org/${i}).`,
    (i: number) => `## Heading ${i}`,
    (i: number) => `- item ${i}\n- another item\n  - nested`,
    (i: number) => "```python\n" + `x = ${i}\nprint(x)\n` + "```",
    (i: number) => `| n | square |\n|---|---|\n| ${i} | ${i * i} |`,
    (i: number) => `> quoted ${i}\n> more`,
    (i: number) => `$$\nx_{${i}} = ${i}\n$$`,
  ];
  return Array.from({ length: count }, (_v, i) => `${kinds[i % kinds.length]?.(i) ?? ""}\n\n`);
}

/** `text` in batches of about `size` characters, as the pane gets them. */
function batches(text: string, size: number): string[] {
  const prefixes: string[] = [];
  for (let end = size; end < text.length + size; end += size) prefixes.push(text.slice(0, end));
  return prefixes;
}

describe("MarkdownStream's cost", () => {
  const blocks = longReply(200);
  const text = blocks.join("");

  it("touches at most two blocks per update, however long the reply", () => {
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    const touched = batches(text, 7).map((prefix) => stream.update(prefix));
    touched.push(stream.finish());
    expect(Math.max(...touched)).toBeLessThanOrEqual(2);
    expect(div.innerHTML).toBe(reference(text));
    // Every block was created (as it grew), none more than needed.
    expect(touched.reduce((a, b) => a + b, 0)).toBeLessThan(text.length / 7 + 200);
  });

  it("appending a block to a 200-block reply renders only that block", () => {
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    stream.update(text);
    const more = "One more paragraph, arriving in pieces.\n\n";
    const touched = batches(more, 5).map((prefix) => stream.update(text + prefix));
    expect(touched.every((n) => n <= 1)).toBe(true);
    expect(div.children.length).toBeGreaterThan(200);
  });

  it("lexes only the tail of the reply, not the reply so far", () => {
    const lexed = vi.mocked(lexBlocks);
    const stream = new MarkdownStream(document.createElement("div"));
    let longest = 0;
    for (const prefix of batches(text, 11)) {
      lexed.mockClear();
      stream.update(prefix);
      for (const [source] of lexed.mock.calls) longest = Math.max(longest, source.length);
    }
    // At most the growing block, the block before it and the new text.
    const largestBlock = Math.max(...blocks.map((block) => block.length));
    expect(longest).toBeLessThanOrEqual(2 * largestBlock + 11);
  });

  it("keeps the DOM nodes of finished blocks", () => {
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    const half = blocks.slice(0, 100).join("");
    stream.update(half);
    const before = Array.from(div.childNodes);
    for (const prefix of batches(text.slice(half.length), 13)) stream.update(half + prefix);
    stream.finish();
    // Every node stays where it was, the same object: the rest of the reply came after.
    const after = Array.from(div.childNodes);
    expect(before.length).toBe(200); // each block, and the newline after it
    for (const [i, node] of before.entries()) expect(after[i]).toBe(node);
    expect(after.length).toBeGreaterThan(2 * before.length - 10);
  });

});

describe("MarkdownStream, code blocks", () => {
  const hljsSpans = (div: HTMLElement) => div.querySelectorAll("pre code span").length;

  it("highlights a code block when its closing fence arrives", () => {
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    stream.update("Code:\n\n```python\ndef f(x):\n    return x\n");
    expect(div.querySelector("pre code.language-python")?.textContent).toBe("def f(x):\n    return x");
    expect(hljsSpans(div)).toBe(0);
    stream.update("Code:\n\n```python\ndef f(x):\n    return x\n```");
    expect(hljsSpans(div)).toBeGreaterThan(0);
    const pre = div.querySelector("pre");
    stream.update("Code:\n\n```python\ndef f(x):\n    return x\n```\n\nAfter.");
    expect(div.querySelector("pre")).toBe(pre);
  });

  it("highlights a code block that never closed at finish()", () => {
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    const text = "```python\nimport os\nprint(os.getcwd())\n";
    stream.update(text);
    expect(hljsSpans(div)).toBe(0);
    expect(stream.finish()).toBe(1);
    expect(hljsSpans(div)).toBeGreaterThan(0);
    expect(div.innerHTML).toBe(reference(text));
  });

  it("shows HTML in an open code block as text", () => {
    const div = document.createElement("div");
    new MarkdownStream(div).update("```html\n<script>alert(1)</script><img src=x onerror=alert(1)>\n");
    expect(div.querySelector("script, img")).toBeNull();
    expect(div.querySelector("pre")?.textContent).toContain("<script>alert(1)</script>");
  });

  it("hands each new block to decorate once, which may wrap it", () => {
    const seen: string[] = [];
    const decorate = (block: HTMLElement) => {
      seen.push(block.tagName);
      for (const pre of block.matches("pre") ? [block] : Array.from(block.querySelectorAll("pre"))) {
        const bar = document.createElement("div");
        bar.className = "bar";
        pre.replaceWith(bar);
        bar.append(pre);
      }
    };
    const div = document.createElement("div");
    const stream = new MarkdownStream(div, decorate);
    const text = "# T\n\n```js\nlet a;\n```\n\n- x\n\n  ```\n  y\n  ```\n\nend";
    for (const prefix of batches(text, 4)) stream.update(prefix);
    stream.finish();
    expect(div.querySelectorAll(".bar > pre")).toHaveLength(2);
    expect(div.children[1]?.className).toBe("bar");
    const bar = div.children[1];
    stream.update(text + " and more");
    expect(div.children[1]).toBe(bar);
    expect(seen.filter((tag) => tag === "H1")).toHaveLength(1);
  });
});

describe("MarkdownStream, references and restarts", () => {
  it("renders a reference again when its definition arrives later", () => {
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    stream.update("See [the docs].\n\nMore text.\n\nAnd more.\n\n");
    expect(div.querySelector("a")).toBeNull();
    const touched = stream.update("See [the docs].\n\nMore text.\n\nAnd more.\n\n[the docs]: https://example.org\n");
    expect(touched).toBe(1);
    expect(div.querySelector("a")?.getAttribute("href")).toBe("https://example.org");
  });

  it("starts again when the text does not extend the previous one", () => {
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    stream.update("# One\n\nfirst reply\n\n");
    const heading = div.querySelector("h1");
    stream.update("# Two\n\nsecond");
    expect(div.querySelector("h1")).not.toBe(heading);
    expect(div.innerHTML).toBe(atOnce("# Two\n\nsecond"));
    stream.update("");
    expect(div.innerHTML).toBe("");
  });

  it("does nothing when the text has not changed", () => {
    const stream = new MarkdownStream(document.createElement("div"));
    stream.update("some *text*");
    expect(stream.update("some *text*")).toBe(0);
  });
});

describe("MarkdownStream is safe", () => {
  /** No element or attribute that could run code, after every batch. */
  function assertInert(div: HTMLElement, context: string): void {
    expect(div.querySelector("script, img, iframe, object, embed, style, form"), context).toBeNull();
    for (const node of Array.from(div.querySelectorAll("*"))) {
      for (const attribute of Array.from(node.attributes)) {
        expect(attribute.name.startsWith("on"), `${context}: ${attribute.name}`).toBe(false);
        expect(attribute.value.toLowerCase(), context).not.toContain("javascript:");
      }
    }
  }

  const payloads = [
    "Look: <img src=x onerror=alert(1)> here\n\nand <img\nsrc=x onerror=alert(1)>",
    "[x](javascript:alert(1)) and [y][z]\n\n[z]: javascript:alert(2)\n",
    "<script>\nalert(1)\n\n</script>\n\n<script>alert(2)</script>",
    "<div onclick=alert(1)>\n\n*x*\n\n</div>\n<svg onload=alert(1)><a href=javascript:alert(1)>x</a></svg>",
    "<iframe src=javascript:alert(1)></iframe> <object data=x></object>\n\n<style>*{}</style><form>",
    "$\\href{javascript:alert(1)}{x}$ and $$\\htmlData{onclick=alert(1)}{x}$$",
    "<a href=\"javascript:alert(1)\">a</a>\n\n<https://x.org/\"onmouseover=\"alert(1)>",
    "<pre> then <img src=x onerror=alert(1) and <script> <svg onload=alert(1)",
  ];

  it.each(payloads)("keeps %j inert however it is cut", { timeout: 600_000 }, async (text) => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.nat({ max: text.length }), { maxLength: 12 }), async (cuts) => {
        await tick();
        const div = document.createElement("div");
        const stream = new MarkdownStream(div);
        for (const prefix of cut(text, cuts)) {
          stream.update(prefix);
          assertInert(div, JSON.stringify(prefix));
        }
        stream.finish();
        assertInert(div, "finished");
        expect(div.innerHTML).toBe(reference(text));
      }),
      { numRuns: runs(40) },
    );
  });

  it("keeps a payload inert one character at a time", { timeout: 600_000 }, async () => {
    const text = payloads.join("\n\n");
    const div = document.createElement("div");
    const stream = new MarkdownStream(div);
    for (let end = 1; end <= text.length; end++) {
      if (end % 50 === 0) await tick();
      stream.update(text.slice(0, end));
      assertInert(div, JSON.stringify(text.slice(0, end)));
    }
  });
});
