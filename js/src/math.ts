// Math in replies: $…$, $$…$$, \(…\) and \[…\] rendered by KaTeX, as a marked
// extension. Only a closed formula is math: half of one (mid-stream) stays text until
// its closing delimiter arrives. KaTeX runs with trust off (no \href, \url, \htmlData,
// \includegraphics), and its output still goes through DOMPurify with the rest.

import katex from "katex";
import type { MarkedExtension, Tokens } from "marked";

interface MathToken extends Tokens.Generic {
  type: "math" | "inlineMath";
  raw: string;
  text: string;
  display: boolean;
}

// Inline $…$ follows the common (Pandoc) rule, so "$5 and $10" stays currency: no space
// after the opening $, none before the closing one, and no digit right after it.
const INLINE_DOLLAR = /^\$(?![\s$])((?:\\[\s\S]|[^\\$])+?)(?<!\s)\$(?!\d)/;
const INLINE_DOUBLE_DOLLAR = /^\$\$((?:\\[\s\S]|[^\\$])+?)\$\$/;
const INLINE_PAREN = /^\\\(([\s\S]+?)\\\)/;
const INLINE_BRACKET = /^\\\[([\s\S]+?)\\\]/;
// Display math that starts a block: $$ or \[ at the start of a line, up to its closer
// and the end of that line.
const BLOCK_DOLLAR = /^ {0,3}\$\$((?:\\[\s\S]|[^\\$])+?)\$\$[^\S\n]*(?:\n|$)/;
const BLOCK_BRACKET = /^ {0,3}\\\[([\s\S]+?)\\\][^\S\n]*(?:\n|$)/;
const BLOCK_START = /^ {0,3}(?:\$\$|\\\[)/m;

const INLINE_RULES: Array<[RegExp, boolean]> = [
  [INLINE_DOUBLE_DOLLAR, true],
  [INLINE_DOLLAR, false],
  [INLINE_PAREN, false],
  [INLINE_BRACKET, true],
];

// A streaming reply is rendered again at every batch: each formula is typeset once.
const CACHE_LIMIT = 500;
const cache = new Map<string, string>();

/** One formula as KaTeX HTML (a bad formula shows its source, in the error colour). */
export function renderMath(tex: string, display: boolean): string {
  const key = `${display ? "D" : "I"}${tex}`;
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  const html = katex.renderToString(tex, {
    displayMode: display,
    throwOnError: false,
    trust: false,
    strict: "ignore",
    maxSize: 50,
    output: "htmlAndMathml",
  });
  if (cache.size >= CACHE_LIMIT) cache.delete(cache.keys().next().value as string);
  cache.set(key, html);
  return html;
}

function token(
  type: MathToken["type"],
  raw: string,
  text: string,
  display: boolean,
): MathToken | undefined {
  const tex = text.trim();
  // A blank line ends a paragraph, so it cannot be inside a formula either.
  if (!tex || /\n[^\S\n]*\n/.test(text)) return undefined;
  return { type, raw, text: tex, display };
}

export const mathExtension: MarkedExtension = {
  extensions: [
    {
      name: "math",
      level: "block",
      start(src: string) {
        return BLOCK_START.exec(src)?.index;
      },
      tokenizer(src: string) {
        const match = BLOCK_DOLLAR.exec(src) ?? BLOCK_BRACKET.exec(src);
        return match ? token("math", match[0], match[1] ?? "", true) : undefined;
      },
      renderer(item) {
        return `<div class="nbchat-math">${renderMath((item as MathToken).text, true)}</div>\n`;
      },
    },
    {
      name: "inlineMath",
      level: "inline",
      start(src: string) {
        const index = src.search(/\$|\\[([]/);
        return index < 0 ? undefined : index;
      },
      tokenizer(src: string) {
        for (const [rule, display] of INLINE_RULES) {
          const match = rule.exec(src);
          if (match) {
            const found = token("inlineMath", match[0], match[1] ?? "", display);
            if (found) return found;
          }
        }
        return undefined;
      },
      renderer(item) {
        return renderMath((item as MathToken).text, (item as MathToken).display);
      },
    },
  ],
};
