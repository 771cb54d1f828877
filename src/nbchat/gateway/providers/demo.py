"""The built-in offline ``demo`` model: deterministic Markdown replies, no network.

The same history always gives the same reply, shaped by what the last message asks for,
so every renderer can be seen offline:

- a **table** ("make a table of ...", "compare ..."): a Markdown table of the message's
  words, with aligned columns;
- **code** ("write a function ...", "python", "sql", ...): a fenced code block in the
  language asked for, that works on the message's text;
- **math** ("formula", "equation", "integral", ...): inline ``$...$`` and display
  ``$$...$$`` math, computed from the message;
- anything else: a paragraph, a numbered list of things to try (never the same item
  twice; longer for longer messages, and a long message also gets a part-by-part list,
  so a long prompt gives a long reply) and a fenced code block.

Every reply opens by quoting the user's last message (and naming what is attached to it,
``Attached: df (DataFrame, <its shape>).``) and ends with a sentence that says
which turn this is and how the conversation began, so multi-turn history is visible.

Params: ``tokens_per_s`` (default 30; 0 = as fast as possible), ``max_tokens``
(the reply is cut there with finish = "length") and ``seed`` (an integer: the same
history and seed give the same reply, another seed another one, so a retry with a new
seed, ``chat.retry(seed=1)``, shows a different answer; without it, a retry repeats the
reply word for word).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import struct
from collections.abc import AsyncIterator, Callable
from typing import Final

from ...context import split_message
from ...protocol import FinishReason
from .base import Finish, ProviderError, Request, TextChunk

__all__ = ["DemoProvider", "count_tokens", "demo_reply", "reply_shape", "tokenize"]

DEFAULT_TOKENS_PER_S: Final = 30.0

_TIPS: Final = (
    "Press **Stop** while a reply streams: the partial text stays in the transcript.",
    "Press **Pause**, wait, then **Resume**: nothing generated in between is lost.",
    "Call `chat.send(...)` from a cell and watch the pane update live.",
    "Use `chat.to_dataframe()` to get the transcript with timing columns.",
    "Set `tokens_per_s=0` to stream as fast as the link allows.",
    'Set `max_tokens` to cut a reply short with `finish == "length"`.',
    "Iterate over a reply with `for chunk in reply:` to process it as it streams.",
    "Use `await reply` in an async cell to keep the kernel free.",
    "Point `Chat(url=...)` at a gateway started with `nbchat serve`.",
    "Read `reply.finish` to learn why a reply ended.",
    "Pass `system=...` to give the model standing instructions.",
    "Open the same chat in a second output with `display(chat)`.",
    "Ask for a table, some code or a formula to see each of them rendered.",
)

# Words that ask for a shape. When a message has words of several shapes, the one that
# comes first in it decides ("a function that computes the mean": code).
_SHAPE_WORDS: Final = {
    "table": r"tables?|tabular|spreadsheet|compare|comparison|columns",
    "code": r"code|function|script|program|snippet|implement|python|javascript|typescript"
    r"|js|ts|sql|bash|shell|regex",
    "math": r"math|maths|formulas?|formulae|equations?|integral|derivative|proof|theorem"
    r"|latex|calculate|solve|variance|probability",
}
_SHAPE_RE: Final = re.compile(
    "|".join(rf"\b(?P<{shape}>{words})\b" for shape, words in _SHAPE_WORDS.items()),
    re.IGNORECASE,
)
_LANGUAGES: Final = {
    "javascript": "javascript",
    "js": "javascript",
    "typescript": "typescript",
    "ts": "typescript",
    "sql": "sql",
    "bash": "bash",
    "shell": "bash",
}
_LANGUAGE_RE: Final = re.compile(rf"\b({'|'.join(_LANGUAGES)})\b", re.IGNORECASE)
_WORD_RE: Final = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")
_PART_WORDS: Final = 10  # a long message gets one "part" item per this many words
_TOKEN_RE: Final = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into word tokens that keep their leading white space, so that
    ``"".join(tokenize(t)) == t``."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    """``len(tokenize(text))``, without building the list (a long history is counted
    on every turn)."""
    return len(text.split()) + (1 if text[-1:].isspace() else 0)


def reply_shape(text: str) -> str:
    """What a message asks for: ``"table"``, ``"code"``, ``"math"`` or ``"text"``."""
    match = _SHAPE_RE.search(text)
    return match.lastgroup or "text" if match is not None else "text"


def demo_reply(request: Request) -> str:
    """The reply the demo model gives to this history."""
    user_messages = [m for m in request.messages if m.role == "user"]
    users = [m.content for m in user_messages]
    if not users:
        raise ProviderError("bad_request", "the demo model needs at least one user message")
    # Attachments (nbchat.context) follow the user's own text: quote and shape by the text.
    last, attached = split_message(users[-1].strip())
    last = last.strip()
    seed = request.params.get("seed")
    salt = "" if seed is None else f"\x00seed={seed}"  # no seed: the replies as before
    said = "\x00".join(m.content for m in request.messages) + salt
    digest = hashlib.sha256(said.encode()).digest()
    quote = last if len(last) <= 120 else last[:117] + "..."
    opening = f"**Demo reply.** You wrote: \u201c{quote}\u201d."
    if attached:
        opening += " Attached: " + "; ".join(f"{n} ({about})" for n, about in attached) + "."
    pictures = user_messages[-1].images or ()
    if pictures:
        sizes = ", ".join(_picture_size(uri) for uri in pictures)
        opening += (
            f" I received {len(pictures)} {'picture' if len(pictures) == 1 else 'pictures'}"
            f" ({sizes}); I cannot see, but a model that takes images would."
        )
    if len(users) == 1:
        earlier = "This is the first turn of our conversation."
    else:
        first = split_message(users[0].strip())[0].strip()
        first = first if len(first) <= 60 else first[:57] + "..."
        earlier = (
            f"This is turn {len(users)} of our conversation; it began with \u201c{first}\u201d."
        )
    body = _BODIES[reply_shape(last)](last, digest)
    return f"{opening} {body}\n\n{earlier}"


def _picture_size(uri: str) -> str:
    """A picture's format and size ("PNG, 640 by 480 pixels" from its header)."""
    head, _, data = uri.partition(",")
    kind = head.removeprefix("data:image/").removesuffix(";base64").upper()
    try:
        header = base64.b64decode(data[:32] + "=" * (-len(data[:32]) % 4))
    except ValueError:
        return kind
    if kind == "PNG" and header[12:16] == b"IHDR" and len(header) >= 24:
        width, height = struct.unpack(">II", header[16:24])
        return f"{kind}, {width} by {height} pixels"
    return kind


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _cell(text: str) -> str:
    """Text that cannot break a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _table(last: str, digest: bytes) -> str:
    words = list(dict.fromkeys(_words(last)))[:10] or ["table"]
    rows = "\n".join(
        f"| {i} | {_cell(word)} | {len(word)} | {sum(c.lower() in 'aeiou' for c in word)} "
        f"| {'yes' if word[:1].isupper() else 'no'} |"
        for i, word in enumerate(words, 1)
    )
    return (
        "You asked for a table, so here is one: the first distinct words of your message. "
        "I am nbchat's built-in offline model; a real model would fill it with facts.\n\n"
        "| # | word | letters | vowels | capitalised |\n"
        "|--:|:-----|--------:|-------:|:-----------:|\n"
        f"{rows}\n\n"
        f"The longest word is **{_cell(max(words, key=len))}**. Tip: {_tips(digest, 1)[0]}"
    )


def _code(last: str, digest: bytes) -> str:
    found = _LANGUAGE_RE.search(last)
    language = _LANGUAGES[found.group(1).lower()] if found else "python"
    text = last[:80]
    snippets: dict[str, str] = {
        "python": (
            "from collections import Counter\n\n\n"
            "def word_counts(text: str) -> Counter[str]:\n"
            '    """How often each word occurs in ``text``."""\n'
            "    return Counter(text.lower().split())\n\n\n"
            f"print(word_counts({text!r}).most_common(3))"
        ),
        "javascript": (
            "function wordCounts(text) {\n"
            "  const counts = new Map();\n"
            "  for (const word of text.toLowerCase().split(/\\s+/)) {\n"
            "    counts.set(word, (counts.get(word) ?? 0) + 1);\n"
            "  }\n"
            "  return counts;\n"
            "}\n\n"
            f"console.log(wordCounts({_js_string(text)}));"
        ),
        "typescript": (
            "function wordCounts(text: string): Map<string, number> {\n"
            "  const counts = new Map<string, number>();\n"
            "  for (const word of text.toLowerCase().split(/\\s+/)) {\n"
            "    counts.set(word, (counts.get(word) ?? 0) + 1);\n"
            "  }\n"
            "  return counts;\n"
            "}\n\n"
            f"console.log(wordCounts({_js_string(text)}));"
        ),
        "sql": (
            "-- How often each word of the message occurs\n"
            "SELECT word, COUNT(*) AS n\n"
            "FROM words\n"
            f"WHERE message = '{text.replace(chr(39), chr(39) * 2)}'\n"
            "GROUP BY word\n"
            "ORDER BY n DESC\n"
            "LIMIT 3;"
        ),
        "bash": (
            "# How often each word of the message occurs\n"
            f"echo {_shell_string(text)} \\\n"
            "  | tr -s '[:space:]' '\\n' | tr '[:upper:]' '[:lower:]' \\\n"
            "  | sort | uniq -c | sort -rn | head -3"
        ),
    }
    return (
        f"You asked for code, so here is some {language}: it counts the words of your "
        "message. I am nbchat's built-in offline model, so it is an example, not an "
        f"answer.\n\n```{language}\n{snippets[language]}\n```\n\n"
        "Code blocks are highlighted and have a **Copy** button. "
        f"Tip: {_tips(digest, 1)[0]}"
    )


def _js_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _shell_string(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _math(last: str, digest: bytes) -> str:
    lengths = [len(w) for w in _words(last)] or [0]
    n = len(lengths)
    mean = sum(lengths) / n
    variance = sum((x - mean) ** 2 for x in lengths) / (n - 1) if n > 1 else 0.0
    shown = ", ".join(str(x) for x in lengths[:8]) + (", \\dots" if n > 8 else "")
    return (
        "You asked for math, so here is a formula. I am nbchat's built-in offline "
        f"model: the numbers come from your message, whose $n = {n}$ words have "
        f"lengths $x_i = {shown}$. Their mean is $\\bar{{x}} = {mean:.2f}$ and their "
        f"variance $s^2 = {variance:.2f}$, from\n\n"
        "$$\n"
        "\\bar{x} = \\frac{1}{n} \\sum_{i=1}^{n} x_i, \\qquad "
        "s^2 = \\frac{1}{n - 1} \\sum_{i=1}^{n} \\left( x_i - \\bar{x} \\right)^2\n"
        "$$\n\n"
        "and, for good measure, the Gaussian integral:\n\n"
        "$$\n"
        "\\int_{-\\infty}^{\\infty} e^{-x^2} \\, dx = \\sqrt{\\pi}\n"
        "$$\n\n"
        f"Tip: {_tips(digest, 1)[0]}"
    )


def _text(last: str, digest: bytes) -> str:
    words = last.split()
    listing = "\n".join(
        f"{i}. {tip}" for i, tip in enumerate(_tips(digest, 3 + len(words) // 10), 1)
    )
    parts = ""
    if len(words) > 4 * _PART_WORDS:
        # A long message gets a long reply (streaming of long replies can be tried).
        items = []
        for begin in range(0, min(len(words), 40 * _PART_WORDS), _PART_WORDS):
            chunk = words[begin : begin + _PART_WORDS]
            excerpt = " ".join(chunk[:6]) + (" ..." if len(chunk) > 6 else "")
            items.append(f"- Words {begin + 1}\u2013{begin + len(chunk)}: \u201c{excerpt}\u201d")
        parts = "Your message, part by part:\n\n" + "\n".join(items) + "\n\n"
    return (
        "I am nbchat's built-in offline "
        "model: I need no network and give the same reply to the same conversation, "
        "so you can try streaming, Stop, Pause and Resume right away.\n\n"
        f"Things to try:\n\n{listing}\n\n{parts}"
        "```python\n"
        "from nbchat import Chat\n\n"
        "chat = Chat()\n"
        f"reply = chat.send({last[:80]!r})\n"
        "print(reply.wait().text)\n"
        "```"
    )


def _tips(digest: bytes, count: int) -> list[str]:
    """``count`` different tips (at most all of them), in an order the history picks."""
    order = sorted(range(len(_TIPS)), key=lambda i: (digest[i % len(digest)], i))
    return [_TIPS[i] for i in order[: min(count, len(_TIPS))]]


_BODIES: Final[dict[str, Callable[[str, bytes], str]]] = {
    "table": _table,
    "code": _code,
    "math": _math,
    "text": _text,
}


class DemoProvider:
    """Serves the ``demo`` model from :func:`demo_reply`, at a steady token rate."""

    def models(self) -> list[str]:
        return ["demo"]

    @staticmethod
    def takes_images(model: str) -> bool:
        """The demo takes pictures to show the path works: it says what it got."""
        return True

    async def stream(self, request: Request) -> AsyncIterator[TextChunk | Finish]:
        rate = float(request.params.get("tokens_per_s", DEFAULT_TOKENS_PER_S))
        max_tokens = request.params.get("max_tokens")
        seed = request.params.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ProviderError("bad_request", "seed must be an integer")
        if rate < 0:
            raise ProviderError("bad_request", "tokens_per_s must be 0 or more")
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ProviderError("bad_request", "max_tokens must be a positive integer")
        tokens = tokenize(demo_reply(request))
        reason: FinishReason = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, reason = tokens[:max_tokens], "length"
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for i, token in enumerate(tokens):
            # Pace against the start time rather than sleeping a fixed step, so the
            # rate holds however long each send takes.
            delay = begin + i / rate - loop.time() if rate else 0.0
            await asyncio.sleep(max(delay, 0.0))
            yield TextChunk(token)
        prompt = sum(count_tokens(m.content) for m in request.messages)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens),
        }
        yield Finish(reason, usage=usage)
