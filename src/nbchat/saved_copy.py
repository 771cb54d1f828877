"""The saved copy: a static rendering of a conversation that the notebook keeps.

The live pane is a widget, and a saved notebook holds only a reference to it: reopened
without the kernel, converted by nbconvert or shown on a site that knows nothing of
widgets, it shows an error or a repr. So beside the pane, the chat keeps a second output
whose mime bundle is the conversation itself (HTML, and Markdown as plain text), updated at
turn boundaries; while the pane is live it hides that output (see js/src/saved.ts).

Pure: no I/O. Markdown is rendered by ``markdown-it-py`` with raw HTML off, so model
output shows as text, never as markup; links with scripting schemes are refused by its
link validation, and images are not loaded (they become links).

A conversation with branches (retry, edit) shows its active branch, and the banner says
how many there are; the copy is a rendering, not a store: ``chat.save()`` and named
conversations keep every branch.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass, field
from typing import Final

from markdown_it import MarkdownIt

from .transcript import Message, Transcript, footer_line, transcript_to_markdown

__all__ = [
    "MAX_INTERVAL_S",
    "MAX_SAVED_CHARS",
    "MAX_WAIT_S",
    "MIN_INTERVAL_S",
    "QUIET_S",
    "SAVED_ATTRIBUTE",
    "SAVED_BYTES_PER_S",
    "SavedCopy",
    "publish_at",
    "update_interval",
    "view_note",
]

# The attribute that marks a saved copy in the page; the live pane hides the element
# that carries its chat's id.
SAVED_ATTRIBUTE: Final = "data-nbchat-saved"
# How much message text one copy holds: the newest messages that fit. The copy is
# resent whole at each turn, so its size bounds that traffic; the whole conversation
# is in chat.save() or a named conversation.
MAX_SAVED_CHARS: Final = 200_000
# The copy's share of the kernel's WebSocket: a copy is rewritten whole, so a big one
# waits longer before the next (1 s at least, 5 s at most).
SAVED_BYTES_PER_S: Final = 64_000
MIN_INTERVAL_S: Final = 1.0
MAX_INTERVAL_S: Final = 5.0
# A turn boundary after a quiet spell is published at once (the notebook has the
# message you just sent); the boundaries that follow it within QUIET_S wait until the
# chat has had none for QUIET_S, so turns sent one after another from a cell are not
# each followed by the whole copy again; while they keep coming, the copy waits at most
# MAX_WAIT_S (JupyterLab autosaves every 120 s).
QUIET_S: Final = 1.0
MAX_WAIT_S: Final = 30.0


def update_interval(size_bytes: int) -> float:
    """Seconds to wait after publishing a copy of ``size_bytes`` before the next."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, size_bytes / SAVED_BYTES_PER_S))


def publish_at(now: float, unsaved_since: float, published: float, interval: float) -> float:
    """When to publish the copy after a turn boundary at ``now``. ``unsaved_since`` is
    the first change the notebook does not have yet (``now`` if this is it),
    ``published`` when the last copy went out, ``interval`` what its size asks
    (:func:`update_interval`) before the next. The first change after a quiet spell
    goes at once; later ones ``QUIET_S`` after the last of them, but no later than
    ``MAX_WAIT_S`` after the first; never sooner than ``interval`` after the last copy."""
    soonest = published + interval
    if unsaved_since == now and now - published >= QUIET_S:
        return max(now, soonest)
    return max(min(now + QUIET_S, unsaved_since + MAX_WAIT_S), soonest)


_STYLE: Final = """<style>
.nbchat-saved{font-family:var(--jp-ui-font-family,sans-serif);font-size:var(--jp-content-font-size1,14px);
 color:var(--jp-content-font-color1,inherit);border:1px solid var(--jp-border-color2,#ddd);
 border-radius:4px;padding:0 12px 8px;max-width:100%}
.nbchat-saved-note{font-size:12px;color:var(--jp-ui-font-color2,#666);padding:6px 12px}
.nbchat-saved-banner{font-size:12px;color:var(--jp-ui-font-color2,#666);padding:6px 0;
 border-bottom:1px solid var(--jp-border-color2,#ddd);margin-bottom:4px}
.nbchat-saved-role{font-weight:600;margin-top:10px}
.nbchat-saved-footer{font-size:12px;color:var(--jp-ui-font-color2,#666)}
.nbchat-saved-user .nbchat-saved-body{white-space:pre-wrap}
.nbchat-saved pre{overflow-x:auto;background:var(--jp-layout-color2,#f5f5f5);padding:6px}
.jp-OutputArea-child:has(+ .jp-OutputArea-child [data-nbchat-saved]):not(:has(.nbchat)){
 display:none}
</style>"""
# The last rule hides the output just before a saved copy (the pane's own output) when no
# live pane is in it: after a restart, JupyterLab shows "Error displaying widget: model
# not found" there, and nbconvert the repr. Style rules reach the page only where the
# notebook is trusted (your own saved notebook) or in nbconvert's HTML.


def view_note(chat_id: str) -> dict[str, str]:
    """What a further view of a chat leaves in the notebook: a line pointing to the
    view that holds the saved copy (shown, like it, only when the pane is not live)."""
    text = "nbchat: another view of the chat shown above, where its saved copy is."
    return {
        "text/html": (
            f'{_STYLE}<div class="nbchat-saved nbchat-saved-note" '
            f'{SAVED_ATTRIBUTE}="{html.escape(chat_id)}">{html.escape(text)}</div>'
        ),
        "text/plain": text,
    }


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    md.disable("image")  # a copy opened later must not fetch what a model linked
    return md


@dataclass
class SavedCopy:
    """Renders a chat's saved copy. Keeps each finished message's HTML, so a turn costs
    the new messages' rendering, not the whole conversation's."""

    chat_id: str
    max_chars: int = MAX_SAVED_CHARS
    _md: MarkdownIt = field(default_factory=_markdown, repr=False)
    _html: dict[int, tuple[Message, str]] = field(default_factory=dict, repr=False)

    def bundle(self, transcript: Transcript, *, now: float | None = None) -> dict[str, str]:
        """The copy as a mime bundle: ``text/html``, and ``text/plain`` (Markdown)."""
        shown, left_out = _newest_that_fit(transcript.messages, self.max_chars)
        stamp = time.strftime(
            "%Y-%m-%d %H:%M UTC", time.gmtime(time.time() if now is None else now)
        )
        turns = transcript.turns
        branches = transcript.branches()
        # Counted from 1 for people (chat.branches() numbers them from 0).
        active = next((n for n, b in enumerate(branches, 1) if b.active), None)
        shown_branch = (
            f"branch {active} of {len(branches)} (the others are not in this copy) · "
            if len(branches) > 1 and active is not None
            else ""
        )
        banner = (
            f"Saved copy of an nbchat conversation · {turns} turn{'s' * (turns != 1)} · "
            f"{shown_branch}{stamp} · read-only: run the cell again to chat"
        )
        note = (
            f"{left_out} earlier message{'s' * (left_out != 1)} not in this copy "
            "(chat.save() or a named conversation keeps them all)"
            if left_out
            else ""
        )
        view = Transcript(system=transcript.system, messages=shown)
        markdown = f"> *{banner}*\n\n" + (f"*{note}*\n\n" if note else "")
        markdown += transcript_to_markdown(view)
        self._forget_gone(shown)
        parts = [
            _STYLE,
            f'<div class="nbchat-saved" {SAVED_ATTRIBUTE}="{html.escape(self.chat_id)}">',
            f'<div class="nbchat-saved-banner">{html.escape(banner)}</div>',
        ]
        if note:
            parts.append(f'<div class="nbchat-saved-footer">{html.escape(note)}</div>')
        if transcript.system:
            parts.append(self._block("system", "System", html.escape(transcript.system), ""))
        parts += [self._message_html(m) for m in shown]
        parts.append("</div>")
        # No text/markdown: a renderer that passes raw HTML through (site generators,
        # some viewers) would run what a model wrote; the HTML above is escaped, and
        # plain text is never rendered.
        return {"text/html": "".join(parts), "text/plain": markdown}

    def _message_html(self, message: Message) -> str:
        cached = self._html.get(id(message))
        if cached is not None and cached[0] is message:
            return cached[1]
        if message.role == "user":
            # What the user typed is shown as typed, like the pane's own bubble.
            out = self._block("user", "You", html.escape(message.content), "")
        elif message.role == "tool":
            # A call and its result, folded; all of it escaped (the model wrote the
            # arguments, the function the result).
            arguments = json.dumps(message.tool_arguments or {}, ensure_ascii=False)
            summary = html.escape(f"{message.tool_name}({arguments})")
            body = (
                f"<details><summary><code>{summary}</code></summary>"
                f"<pre>{html.escape(message.content)}</pre></details>"
            )
            out = self._block("tool", "tool", body, html.escape(message.error or ""))
        else:
            body = (
                self._md.render(message.content) if message.content else "<p><em>(no text)</em></p>"
            )
            if message.reasoning:
                reasoning = html.escape(message.reasoning)
                body = (
                    f"<details><summary>Reasoning</summary><pre>{reasoning}</pre></details>{body}"
                )
            footer = html.escape(footer_line(message))
            out = self._block(message.role, message.model or "assistant", body, footer)
        if message.final:
            self._html[id(message)] = (message, out)
        return out

    @staticmethod
    def _block(role: str, who: str, body: str, footer: str) -> str:
        foot = f'<div class="nbchat-saved-footer">{footer}</div>' if footer else ""
        return (
            f'<div class="nbchat-saved-msg nbchat-saved-{role}">'
            f'<div class="nbchat-saved-role">{html.escape(who)}</div>'
            f'<div class="nbchat-saved-body">{body}</div>{foot}</div>'
        )

    def _forget_gone(self, shown: list[Message]) -> None:
        if len(self._html) > 2 * len(shown) + 16:  # cleared or trimmed: drop the rest
            keep = {id(m) for m in shown}
            self._html = {k: v for k, v in self._html.items() if k in keep}


def _newest_that_fit(messages: list[Message], max_chars: int) -> tuple[list[Message], int]:
    """The newest messages whose text fits in ``max_chars`` (always the newest one), and
    how many older ones were left out."""
    used, start = 0, len(messages)
    while start > 0:
        size = len(messages[start - 1].content) + len(messages[start - 1].reasoning or "")
        if used + size > max_chars and start < len(messages):
            break
        used += size
        start -= 1
    return messages[start:], start
