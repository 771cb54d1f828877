// Model output is untrusted: Markdown is rendered by marked, raw HTML in it is shown as
// text, and the result is sanitized by DOMPurify before it touches the DOM. Links open
// in a new tab without access to this page. Math is typeset by KaTeX (see math.ts).

import DOMPurify from "dompurify";
import { Marked } from "marked";
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

const marked = new Marked(mathExtension, {
  gfm: true,
  breaks: false,
  renderer: {
    // Raw HTML in a reply is shown as the text it is, never parsed.
    html({ text }) {
      return escapeHtml(text);
    },
    code({ text, lang }) {
      const language = escapeHtml((lang ?? "").split(/\s+/)[0] ?? "");
      const cls = language ? ` class="hljs language-${language}"` : ` class="hljs"`;
      return `<pre><code${cls}>${highlight(text, lang)}</code></pre>\n`;
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
  const html = marked.parse(source, { async: false });
  // SVG and MathML are KaTeX's (raw HTML never gets this far: marked escapes it); its
  // MathML keeps the TeX source in a text-only <annotation> for screen readers and copy.
  return purifier().sanitize(html, {
    USE_PROFILES: { html: true, svg: true, mathMl: true },
    ADD_TAGS: ["semantics", "annotation"],
    ADD_ATTR: ["encoding"],
    FORBID_TAGS: ["style", "form"],
  });
}
