// Model output is untrusted: Markdown is rendered by marked, raw HTML in it is shown as
// text, and the result is sanitized by DOMPurify before it touches the DOM. Links open
// in a new tab without access to this page. Math is typeset by KaTeX (see math.ts).

import DOMPurify from "dompurify";
import { Lexer, Marked, type Links, type Token, type Tokens } from "marked";
import hljs from "highlight.js/lib/core";
import bash from "highlight.js/lib/languages/bash";
import css from "highlight.js/lib/languages/css";
import javascript from "highlight.js/lib/languages/javascript";
import json from "highlight.js/lib/languages/json";
import markdown from "highlight.js/lib/languages/markdown";
import python from "highlight.js/lib/languages/python";
import r from "highlight.js/lib/languages/r";
import rust from "highlight.js/lib/languages/rust";
import sql from "highlight.js/lib/languages/sql";
import typescript from "highlight.js/lib/languages/typescript";
import xml from "highlight.js/lib/languages/xml";
import yaml from "highlight.js/lib/languages/yaml";

import { mathExtension } from "./math";

const LANGUAGES = { bash, css, javascript, json, markdown, python, r, rust, sql, typescript, xml, yaml };
for (const [name, language] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, language);

export function escapeHtml(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

function highlight(code: string, lang: string | undefined): string {
  const name = (lang ?? "").trim().split(/\s+/)[0]?.toLowerCase() ?? "";
  if (name && hljs.getLanguage(name)) {
    return hljs.highlight(code, { language: name, ignoreIllegals: true }).value;
  }
  return escapeHtml(code);
}

// Code blocks whose closing fence has not arrived yet (see incremental.ts): shown as
// plain text, since highlighting half a block would only be redone on the next batch.
const unclosed = new WeakSet<Tokens.Code>();

const marked = new Marked(mathExtension, {
  gfm: true,
  breaks: false,
  renderer: {
    // Raw HTML in a reply is shown as the text it is, never parsed.
    html({ text }) {
      return escapeHtml(text);
    },
    // After an inline <script>, <pre> or <style> tag marked passes the text that follows
    // as raw HTML ("escaped"), for the browser to parse: here that tag is shown as text,
    // so the text after it is too (else "<script> <img src=x onerror=..." became an img).
    text(token) {
      if (token.type === "text" && token.escaped === true && !token.tokens) return escapeHtml(token.text);
      return false;
    },
    code(token) {
      const { text, lang } = token;
      const language = escapeHtml((lang ?? "").split(/\s+/)[0] ?? "");
      const cls = language ? ` class="hljs language-${language}"` : ` class="hljs"`;
      const body = unclosed.has(token) ? escapeHtml(text) : highlight(text, lang);
      return `<pre><code${cls}>${body}</code></pre>\n`;
    },
  },
});

let hooked = false;
function purifier(): typeof DOMPurify {
  if (!hooked) {
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    hooked = true;
  }
  return DOMPurify;
}

/** Markdown to sanitized HTML, safe to assign to innerHTML. */
export function renderMarkdown(source: string): string {
  return sanitize(marked.parse(source, { async: false }));
}

/** The top-level blocks of `source` (their `raw` texts, end to end, are `source` with
 * line endings made \n). `links` holds the reference definitions found earlier in the
 * reply, so references here resolve as they would in the whole reply; the definitions
 * `source` adds are added to it. Render the blocks with `renderBlocks`. */
export function lexBlocks(source: string, links: Links): Token[] {
  const lexer = new Lexer({ ...marked.defaults });
  Object.assign(lexer.tokens.links, links);
  const tokens = lexer.lex(source);
  Object.assign(links, tokens.links);
  return tokens;
}

/** Blocks from `lexBlocks` to sanitized HTML, as `renderMarkdown` renders them; a fenced
 * code block in `open` (the stream's last, still unclosed) is shown unhighlighted. */
export function renderBlocks(blocks: Token[], open: readonly Tokens.Code[] = []): string {
  for (const code of open) unclosed.add(code);
  try {
    const html = marked.parser(blocks);
    return html === "" ? "" : sanitize(html);
  } finally {
    for (const code of open) unclosed.delete(code);
  }
}

/** Every fenced code block in `blocks`, at any depth, that has no closing fence yet. */
export function unclosedCode(blocks: Token[]): Tokens.Code[] {
  const found: Tokens.Code[] = [];
  marked.walkTokens(blocks, (token) => {
    if (token.type === "code" && isUnclosed(token as Tokens.Code)) found.push(token as Tokens.Code);
  });
  return found;
}

function isUnclosed(code: Tokens.Code): boolean {
  if (code.codeBlockStyle === "indented") return false;
  const fence = /^ {0,3}(`{3,}|~{3,})/.exec(code.raw)?.[1];
  if (fence === undefined) return false;
  const lines = code.raw.replace(/\n+$/, "").split("\n");
  // A closing fence is the opening one's character, at least as many times, alone on its line.
  const closing = new RegExp(`^ {0,3}${fence[0]}{${fence.length},}[ \\t]*$`);
  return lines.length < 2 || !closing.test(lines[lines.length - 1] ?? "");
}

function sanitize(html: string): string {
  // SVG and MathML are KaTeX's (raw HTML never gets this far: marked escapes it); its
  // MathML keeps the TeX source in a text-only <annotation> for screen readers and copy.
  return purifier().sanitize(html, {
    USE_PROFILES: { html: true, svg: true, mathMl: true },
    ADD_TAGS: ["semantics", "annotation"],
    ADD_ATTR: ["encoding"],
    FORBID_TAGS: ["style", "form"],
  });
}
