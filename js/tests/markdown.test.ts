// @vitest-environment jsdom
import { describe, expect, it } from "vitest";

import { escapeHtml, renderMarkdown } from "../src/markdown";

function dom(html: string): HTMLElement {
  const div = document.createElement("div");
  div.innerHTML = html;
  return div;
}

describe("renderMarkdown", () => {
  it("renders headings, lists, tables, links and code", () => {
    const root = dom(
      "# Title\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n" +
        "[docs](https://example.org) and `inline`\n\n```python\nprint('hi')\n```\n",
    );
    const html = renderMarkdown(root.textContent ?? "");
    const out = dom(html);
    expect(out.querySelector("h1")?.textContent).toBe("Title");
    expect(out.querySelectorAll("li")).toHaveLength(2);
    expect(out.querySelector("table td")?.textContent).toBe("1");
    expect(out.querySelector("code.language-python .hljs-built_in")?.textContent).toBe("print");
    expect(out.querySelector("p code")?.textContent).toBe("inline");
  });

  it("opens links in a new tab without access to this page", () => {
    const link = dom(renderMarkdown("[x](https://example.org)")).querySelector("a");
    expect(link?.getAttribute("target")).toBe("_blank");
    expect(link?.getAttribute("rel")).toBe("noopener noreferrer");
  });

  it("shows raw HTML as text and never as elements", () => {
    const source = 'Hi <img src=x onerror="window.pwned=1"> <script>window.pwned=1</script>\n\n' +
      "<div onclick=\"alert(1)\">block</div>\n";
    const out = dom(renderMarkdown(source));
    expect(out.querySelector("img, script, div")).toBeNull();
    expect(out.textContent).toContain('<img src=x onerror="window.pwned=1">');
    expect(out.textContent).toContain("<script>window.pwned=1</script>");
  });

  it("shows the text after an inline <script>, <pre> or <style> tag as text too", () => {
    // marked passes that text on as raw HTML for the browser to parse.
    const source = "a <script> <img src=x onerror=alert(1) b\n\n<pre> <svg onload=alert(1) c &amp; d";
    const out = dom(renderMarkdown(source));
    expect(out.querySelector("img, svg, script, pre")).toBeNull();
    expect(out.textContent).toContain("<script> <img src=x onerror=alert(1) b");
    expect(out.textContent).toContain("<pre> <svg onload=alert(1) c");
  });

  it("keeps HTML inside code blocks as text", () => {
    const out = dom(renderMarkdown("```html\n<script>alert(1)</script>\n```\n"));
    expect(out.querySelector("script")).toBeNull();
    expect(out.querySelector("pre")?.textContent).toContain("<script>alert(1)</script>");
  });

  it("drops javascript: links and event handlers that Markdown can produce", () => {
    const out = dom(renderMarkdown("[click](javascript:alert(1)) ![img](x.png)"));
    const link = out.querySelector("a");
    expect(link?.getAttribute("href") ?? "").not.toContain("javascript:");
    for (const node of Array.from(out.querySelectorAll("*"))) {
      for (const attribute of Array.from(node.attributes)) {
        expect(attribute.name.startsWith("on")).toBe(false);
      }
    }
  });

  it("escapes every HTML special character", () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe("&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  });
});
