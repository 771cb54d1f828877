// Streams a reply's Markdown into the DOM block by block. Rendering the whole reply at
// every batch costs more the longer it gets; here the blocks that can no longer change
// keep their DOM nodes and each batch lexes and renders only the still-growing tail.
// Every block goes through the same pipeline as renderMarkdown (marked, then DOMPurify),
// and the blocks' HTML, end to end, is the whole reply's: the container ends up exactly
// as `innerHTML = renderMarkdown(reply)` would leave it, with no wrapper per block.
//
// Where the tail begins: a blank line ends every block but a few (a list, indented code,
// an open code fence or HTML block, a link definition's title in quotes), and the list
// and the code end at the first block after it that they do not take in. So the blocks
// before a blank line are final once a whole block follows it, ended by \n (the half
// line still arriving can turn "2" into "2.", and the list goes on), unless a link
// definition's title is still open before it. Not any block boundary will do: marked
// looks past the line it parses (a paragraph ends before "x\n--", which looks like a
// table's first two lines) and display math takes in lines up to its closing $$, blocks
// and all; a blank line stops both.

import type { Links, Token } from "marked";

import { lexBlocks, renderBlocks, unclosedCode } from "./markdown";

interface Block {
  raw: string;
  /** Its sanitized HTML; empty for blank lines and link definitions. */
  html: string;
  /** Its nodes in the container (none when `html` is empty). */
  nodes: ChildNode[];
  /** The reference definitions it was rendered with (see `linksKey`). */
  links: string;
  /** Whether it was rendered as the last block of a reply still arriving. */
  growing: boolean;
}

/** Renders a growing Markdown text into `container`, block by block. */
export class MarkdownStream {
  /** The text as given, and as marked reads it. */
  private source = "";
  private text = "";
  private blocks: Block[] = [];
  /** blocks[0, stable) are final; the tail, lexed again at every update, starts at
   * offset `tailStart` of the text. */
  private stable = 0;
  private tailStart = 0;
  /** The reference definitions in the final blocks, first one of a label first. */
  private stableLinks: Links = {};
  private links = linksKey({});

  /** The stream owns the container's children: it empties it now. `decorate` gets
   * each top-level element of a block once, when it is created, while still outside
   * the container: it may change or replace it (e.g. wrap a `<pre>` in a code bar). A
   * code block at the top level is the `<pre>` itself; one in a list is inside it. */
  constructor(
    private readonly container: HTMLElement,
    private readonly decorate?: (block: HTMLElement) => void,
  ) {
    container.replaceChildren();
  }

  /** Show `text` (the whole reply so far). If it extends the previous text, only the
   *  last (still-growing) block(s) are re-rendered; finished blocks keep their DOM nodes.
   *  If it does not extend the previous text, start again. Returns how many block
   *  nodes this update created or replaced (for tests and benchmarks). */
  update(text: string): number {
    if (text === this.source) return 0;
    if (!text.startsWith(this.source)) this.reset();
    // marked reads \r\n and \r as \n: so does the stream (on the new text only, and a
    // \r\n may be cut in two), so that the lexer's offsets are offsets in `this.text`.
    let added = text.slice(this.source.length);
    if (this.source.endsWith("\r") && added.startsWith("\n")) added = added.slice(1);
    this.source = text;
    this.text += added.replace(/\r\n?/g, "\n");
    return this.render(false);
  }

  /** The reply ended: render the final block as finished (e.g. highlight a code block that never closed). */
  finish(): number {
    return this.render(true);
  }

  private reset(): void {
    this.container.replaceChildren();
    this.source = "";
    this.text = "";
    this.blocks = [];
    this.stable = 0;
    this.tailStart = 0;
    this.stableLinks = {};
    this.links = linksKey({});
  }

  private render(finished: boolean): number {
    const tail = this.text.slice(this.tailStart);
    const links: Links = { ...this.stableLinks };
    const tokens = lexBlocks(tail, links);
    const key = linksKey(links);
    let touched = key === this.links ? 0 : this.relink(key, links);

    const old = this.blocks.splice(this.stable);
    for (let i = 0; i < Math.max(old.length, tokens.length); i++) {
      const before = old[i];
      const token = tokens[i];
      if (token === undefined) {
        for (const node of before?.nodes ?? []) node.remove();
        continue;
      }
      // The last block is still growing: a code fence in it that is still open is
      // shown as plain text, and highlighted when it closes or the reply ends.
      const growing = !finished && i === tokens.length - 1;
      const same = before?.raw === token.raw && before.links === key && before.growing === growing;
      const html = same ? before.html : renderBlocks([token], growing ? unclosedCode([token]) : []);
      if (before !== undefined && before.html === html) {
        this.blocks.push({ ...before, raw: token.raw, links: key, growing });
        continue;
      }
      for (const node of before?.nodes ?? []) node.remove();
      const nodes = this.insert(html, this.blocks.length);
      this.blocks.push({ raw: token.raw, html, nodes, links: key, growing });
      if (nodes.length > 0) touched++;
    }
    this.settle(tail, tokens);
    return touched;
  }

  /** Moves the blocks that can no longer change out of the tail: those before a blank
   * line that a complete block follows (see the top of this file). */
  private settle(tail: string, tokens: Token[]): void {
    const complete = tail.lastIndexOf("\n") + 1;
    let start = 0;
    let last = -1; // the last block that is not blank lines: its index, where its text ends, its end
    let lastText = 0;
    let lastEnd = 0;
    let settled = 0;
    let length = 0;
    for (const [i, token] of tokens.entries()) {
      const end = start + token.raw.length;
      if (token.type !== "space") {
        if (end > complete) break;
        if (last >= 0 && /\n[ \t]*\n/.test(tail.slice(lastText, start))) {
          settled = last + 1;
          length = lastEnd;
        }
        if (openTitle(tail, start)) break;
        last = i;
        lastText = start + token.raw.trimEnd().length;
        lastEnd = end;
      }
      start = end;
    }
    // The raws, end to end, are the text: checked, since a wrong offset would misplace
    // every later block.
    const prefix = tokens.slice(0, settled).map((token) => token.raw).join("");
    if (settled === 0 || prefix.length !== length || !tail.startsWith(prefix)) return;
    for (const token of tokens.slice(0, settled)) addDefinitions(token, this.stableLinks);
    this.stable += settled;
    this.tailStart += length;
  }

  /** A reference definition arrived (or changed): final blocks that may use it are
   * rendered again, as the whole reply would render them. */
  private relink(key: string, links: Links): number {
    let touched = 0;
    for (const [i, block] of this.blocks.slice(0, this.stable).entries()) {
      if (block.links === key || !block.raw.includes("[")) continue;
      block.links = key;
      const html = renderBlocks(lexBlocks(block.raw, { ...links }));
      if (html === block.html) continue;
      for (const node of block.nodes) node.remove();
      block.html = html;
      block.nodes = this.insert(html, i);
      touched++;
    }
    this.links = key;
    return touched;
  }

  /** Puts `html` in the container as the nodes of blocks[index], after the blocks before it. */
  private insert(html: string, index: number): ChildNode[] {
    if (html === "") return [];
    const document = this.container.ownerDocument;
    // A template parses inertly; its nodes are then brought into the page's document.
    const template = document.createElement("template");
    template.innerHTML = html;
    const fragment = document.importNode(template.content, true);
    if (this.decorate !== undefined) {
      for (const element of Array.from(fragment.children)) this.decorate(element as HTMLElement);
    }
    const nodes = Array.from(fragment.childNodes);
    this.container.insertBefore(fragment, this.nextSibling(index));
    return nodes;
  }

  /** The node the nodes of blocks[index] go before. */
  private nextSibling(index: number): ChildNode | null {
    for (let i = index - 1; i >= 0; i--) {
      const nodes = this.blocks[i]?.nodes ?? [];
      const last = nodes[nodes.length - 1];
      if (last !== undefined) return last.nextSibling;
    }
    return this.container.firstChild;
  }
}

// A link definition's title in "…", '…' or (…) may run over blank lines (marked's rule):
// a definition whose title has not closed yet may still swallow all that follows it.
const DEFINITION_START = / {0,3}\[/y;
const OPEN_TITLE = new RegExp(
  String.raw`^ {0,3}\[(?:\\[\s\S]|[^[\]\\\n]|\n(?![ \t]*\n))+\]: *(?:\n[ \t]*)?` + // [label]:
    String.raw`(?:[^<\s]\S*|<(?:\\.|[^\n<>\\])*>)(?: +(?:\n[ \t]*)?| *\n[ \t]*)` + // destination
    String.raw`(?:"(?:\\[\s\S]|[^"\\])*|'(?:\\[\s\S]|[^'\\])*|\((?:\\[\s\S]|[^()\\])*)\\?$`, // open title
);

function openTitle(text: string, start: number): boolean {
  DEFINITION_START.lastIndex = start;
  return DEFINITION_START.test(text) && OPEN_TITLE.test(text.slice(start));
}

function linksKey(links: Links): string {
  return JSON.stringify(links);
}

/** The definitions in `token`, at any depth, into `links` (the first of a label wins, as in marked). */
function addDefinitions(token: Token, links: Links): void {
  if (token.type === "def") {
    links[token.tag] ??= { href: token.href, title: token.title };
    return;
  }
  if (!token.raw.includes("]:")) return;
  for (const child of children(token)) addDefinitions(child, links);
}

function children(token: Token): Token[] {
  if (token.type === "list") return token.items as Token[];
  return "tokens" in token && Array.isArray(token.tokens) ? (token.tokens as Token[]) : [];
}
