"""Kernel objects as context for the model: a DataFrame, a figure or any object becomes
a bounded text attachment sent with a user message.

Pure: no I/O. pandas, matplotlib and plotly are never imported here; an object is
recognised as one of theirs only when its library is already loaded (it must be, for
the object to exist). The namespace that ``@name`` resolves against is passed in (the
widget reads IPython's ``user_ns``).

An attachment is ``{name, kind, summary, text}``: ``text`` is what the model receives,
at most :data:`MAX_ATTACHMENT_CHARS` characters, and all of a message's attachments
together at most :data:`MAX_CONTEXT_CHARS`. A figure is also drawn as a PNG
(``image``, a data URI of at most :data:`MAX_IMAGE_BYTES`, at most
:data:`MAX_IMAGE_SIDE` pixels a side): models that take images get the picture with
the description, the others the description and a note saying the picture was not sent.
"""

from __future__ import annotations

import base64
import collections
import importlib.util
import io
import pickle
import re
import reprlib
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypedDict

__all__ = [
    "CELL_CHARS",
    "MAX_ATTACHMENT_CHARS",
    "MAX_CONTEXT_CHARS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_SIDE",
    "PICTURE_LEFT_OUT",
    "PICTURE_NOT_SENT",
    "PICTURE_SENT",
    "SAMPLE_COLUMNS",
    "SAMPLE_ROWS",
    "Attachment",
    "attach",
    "describe",
    "find_name",
    "gather",
    "mentions",
    "render_message",
    "split_message",
]

MAX_ATTACHMENT_CHARS: Final = 4_000  # the text of one attachment
MAX_CONTEXT_CHARS: Final = 16_000  # the texts of all of one message's attachments
SAMPLE_ROWS: Final = 20  # a DataFrame's sample: its first rows ...
SAMPLE_COLUMNS: Final = 20  # ... and columns
CELL_CHARS: Final = 40  # a sample cell longer than this is cut
_SCHEMA_COLUMNS: Final = 50  # columns listed with their dtype and nulls
MAX_IMAGE_BYTES: Final = 300_000  # a figure's PNG; drawn smaller until it fits
MAX_IMAGE_SIDE: Final = 1568  # pixels: larger pictures are scaled down by the APIs anyway

# The line each attachment with a picture ends with, saying what the model got.
PICTURE_SENT: Final = "(The picture is attached to this message as an image.)"
PICTURE_NOT_SENT: Final = (
    "(The picture was not sent: the model in use does not take images, so this "
    "description is all it has.)"
)
PICTURE_LEFT_OUT: Final = (
    "(The picture was not sent: the request had no room left for it, so this "
    "description is all the model has.)"
)


class _Described(TypedDict):
    """One object attached to a message: ``text`` is what the model receives."""

    name: str  # the variable's name ("df"), or "context[0]" for an unnamed object
    kind: str  # "DataFrame", "Series", "matplotlib Figure", "plotly Figure", a type name
    summary: str  # one line, e.g. a DataFrame's shape; "" when there is nothing to say
    text: str


class Attachment(_Described, total=False):
    """One object attached to a message: ``text`` is what the model receives, and a
    figure's picture, ``image``, what a model that takes images sees."""

    image: str  # a data:image/png;base64,... URI


# --- @name in text -------------------------------------------------------------------

# An identifier after an @ that does not follow a word character, a dot or another @:
# "@df?" is a mention, "a@b.com" and "x.y@z" are not.
_MENTION_RE: Final = re.compile(r"(?<![\w.@])@([^\W\d]\w*)")
# Code is not scanned: "@dataclass" in a fenced block or `@decorator` inline is code.
_CODE_RE: Final = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]*`", re.DOTALL)


# IPython's input and output history (_, __, _5, _i, _i5, _oh, ...): not user variables.
_IPYTHON_HISTORY_RE: Final = re.compile(r"_{1,3}|_\d+|_i{1,3}|_i\d+|_[oid]h|_exit_code")


def mentions(text: str) -> list[str]:
    """The names mentioned as ``@name`` in ``text``, in order, once each. Not an email
    address (``a@b.com``), nor anything inside backticks or a fenced code block."""
    prose = _CODE_RE.sub(" ", text)
    names = (m.group(1) for m in _MENTION_RE.finditer(prose))
    return list(dict.fromkeys(n for n in names if not _IPYTHON_HISTORY_RE.fullmatch(n)))


def find_name(obj: object, namespace: Mapping[str, Any], hidden: Iterable[str] = ()) -> str | None:
    """The first public name ``obj`` is bound to in ``namespace``, or None. Not for
    values Python shares between unrelated names (None, small numbers, interned text):
    those would be named after whichever variable happens to hold the same object."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return None
    skip = set(hidden)
    for name, value in namespace.items():
        if value is obj and not name.startswith("_") and name not in skip:
            return name
    return None


def gather(
    text: str,
    objects: object = None,
    namespace: Mapping[str, Any] | None = None,
    hidden: Iterable[str] = (),
) -> list[Attachment]:
    """The attachments of one message: ``objects`` (a list, tuple, set or other
    iterable of objects, a mapping of names to objects, or one object), then each
    ``@name`` of ``text`` that names a variable of ``namespace`` (not one of
    ``hidden``). An object is attached once however often it is named; unknown
    names stay plain text. Without a namespace (outside IPython) nothing is
    resolved."""
    skip = set(hidden)
    if namespace is not None:
        # A copy: the pane's send may run on a kernel subshell while a cell assigns.
        namespace = dict(namespace)
    named: list[tuple[str, object]] = []
    if isinstance(objects, Mapping):
        named += [(_valid(str(k)), v) for k, v in objects.items()]
    elif isinstance(objects, Iterable) and _many(objects):  # a list, a set, a generator...
        for i, obj in enumerate(list(objects)):
            found = find_name(obj, namespace, skip) if namespace is not None else None
            named.append((found or f"context[{i}]", obj))
    elif objects is not None:
        found = find_name(objects, namespace, skip) if namespace is not None else None
        named.append((found or "context[0]", objects))
    if namespace is not None:
        named += [(n, namespace[n]) for n in mentions(text) if n in namespace and n not in skip]
    seen: set[int] = set()
    unique = []
    for name, obj in named:
        if id(obj) not in seen:
            seen.add(id(obj))
            unique.append((name, obj))
    return attach(unique)


def _many(objects: object) -> bool:
    """Whether ``objects`` is several objects to attach, not one: any iterable but
    text, a mapping, or a data object (DataFrame, Series, array) that is one thing."""
    if objects is None or isinstance(objects, (str, bytes, bytearray, Mapping)):
        return False
    module = type(objects).__module__.split(".")[0]
    if module in ("pandas", "numpy", "polars", "xarray", "torch"):
        return False
    return isinstance(objects, Iterable)


def attach(named: Iterable[tuple[str, object]]) -> list[Attachment]:
    """Describe each ``(name, object)``, keeping the message's budget: once
    :data:`MAX_CONTEXT_CHARS` is spent, later texts are cut, then left out (the
    attachment stays, saying so)."""
    out: list[Attachment] = []
    left = MAX_CONTEXT_CHARS
    for name, obj in named:
        item = describe(obj, name)
        if len(item["text"]) > left:
            if left >= 200:
                item["text"] = _cut(item["text"], left)
            else:
                item["text"] = (
                    f"(left out: this message's context budget of {MAX_CONTEXT_CHARS:,} "
                    "characters is spent)"
                )
        left -= len(item["text"])
        out.append(item)
    return out


# --- one object ----------------------------------------------------------------------


def describe(obj: object, name: str) -> Attachment:
    """``obj`` as an attachment named ``name``. Never raises: an object whose
    description fails (a broken ``__repr__``) says so in its text."""
    name = _clean_name(name)
    try:
        kind, summary, text = _describe(obj)
    except KeyboardInterrupt:
        raise  # the user asked to stop: not a description failing
    except BaseException as exc:  # SystemExit from a __repr__ must not end the kernel
        kind, summary = type(obj).__name__, ""
        text = f"(could not describe this object: {type(exc).__name__}: {exc})"
    image: str | None = None
    if kind in ("matplotlib Figure", "plotly Figure"):
        image, problem = _picture(obj)
        if problem:
            text += f"\n(No picture was sent: {problem}.)"
    text = _valid(text)
    if len(text) > MAX_ATTACHMENT_CHARS:
        text = _cut(text, MAX_ATTACHMENT_CHARS)
    item: Attachment = {
        "name": name,
        "kind": _valid(kind),
        "summary": _valid(summary),
        "text": text,
    }
    if image is not None:
        item["image"] = image
    return item


def _describe(obj: object) -> tuple[str, str, str]:
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(obj, pd.DataFrame):
        return _dataframe(obj)
    if pd is not None and isinstance(obj, pd.Series):
        return _series(obj)
    figure = _figure(obj)
    if figure is not None:
        return figure
    if isinstance(obj, str):
        return "str", f"{len(obj):,} characters", obj
    # reprlib keeps a huge container's repr small as it is made (repr() would build
    # all of it, 90 MB for ten million ints, before it could be cut).
    if isinstance(obj, _CONTAINERS):
        return type(obj).__name__, "", _REPR.repr(obj)
    return type(obj).__name__, "", repr(obj)


def _bounded_repr() -> reprlib.Repr:
    bounded = reprlib.Repr()
    bounded.maxlevel = 4
    bounded.maxlist = bounded.maxtuple = bounded.maxset = bounded.maxfrozenset = 200
    bounded.maxdeque = bounded.maxarray = 200
    bounded.maxdict = 100
    bounded.maxstring = bounded.maxlong = MAX_ATTACHMENT_CHARS
    bounded.maxother = MAX_ATTACHMENT_CHARS
    return bounded


_REPR: Final = _bounded_repr()
_CONTAINERS: Final = (list, tuple, set, frozenset, dict, collections.deque)


def _dataframe(frame: Any) -> tuple[str, str, str]:
    rows, columns = frame.shape
    summary = f"{rows:,} {_plural(rows, 'row')} × {columns:,} {_plural(columns, 'column')}"
    nulls = frame.isna().sum().tolist()
    lines = [f"DataFrame: {summary}", "Columns (dtype, nulls):"]
    for i in range(min(columns, _SCHEMA_COLUMNS)):
        lines.append(
            f"- {_inline(frame.columns[i])}: {frame.dtypes.iloc[i]}, "
            f"{nulls[i]:,} {_plural(nulls[i], 'null')}"
        )
    if columns > _SCHEMA_COLUMNS:
        lines.append(f"- ... and {columns - _SCHEMA_COLUMNS:,} more columns")
    head = "\n".join(lines)
    shown = frame.iloc[:SAMPLE_ROWS, :SAMPLE_COLUMNS]
    header = ["", *(_cell(c) for c in shown.columns)]
    body = [
        [_cell(index), *(_cell(v) for v in values)]
        for index, values in zip(shown.index, shown.itertuples(index=False, name=None), strict=True)
    ]
    return "DataFrame", summary, _with_sample(head, header, body, rows, columns)


def _series(series: Any) -> tuple[str, str, str]:
    rows = len(series)
    nulls = int(series.isna().sum())
    summary = f"{rows:,} {_plural(rows, 'value')}"
    head = (
        f"Series {_inline(series.name)}: {summary}, dtype {series.dtype}, "
        f"{nulls:,} {_plural(nulls, 'null')}"
    )
    shown = series.iloc[:SAMPLE_ROWS]
    header = ["", _cell(series.name if series.name is not None else "value")]
    body = [[_cell(index), _cell(value)] for index, value in shown.items()]
    return "Series", summary, _with_sample(head, header, body, rows, 1)


def _with_sample(
    head: str, header: list[str], body: list[list[str]], rows: int, columns: int
) -> str:
    """The head, then a Markdown table of as many sample rows as fit the budget."""
    while True:
        cut = []
        if len(body) < rows:
            cut.append(f"first {len(body):,} of {rows:,} rows")
        if len(header) - 1 < columns:
            cut.append(f"first {len(header) - 1:,} of {columns:,} columns")
        title = f"Sample ({', '.join(cut)}):" if cut else "All rows:"
        table = [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in body),
        ]
        text = f"{head}\n{title}\n" + "\n".join(table) if body else head
        if len(text) <= MAX_ATTACHMENT_CHARS or len(body) <= 1:
            return text
        body = body[: len(body) // 2]


def _figure(obj: object) -> tuple[str, str, str] | None:
    """A matplotlib or plotly figure (or a matplotlib Axes) described in words."""
    module = type(obj).__module__ or ""
    cls = type(obj).__name__
    if module.startswith("matplotlib"):
        figure = getattr(obj, "figure", None) if cls != "Figure" else obj
        axes = list(getattr(figure, "axes", None) or [])
        if figure is None or not hasattr(figure, "savefig"):
            return None
        parts = []
        suptitle = getattr(figure, "_suptitle", None)
        if suptitle is not None and suptitle.get_text():
            parts.append(f"title {suptitle.get_text()!r}")
        for i, ax in enumerate(axes[:8], 1):
            labels = [
                f"{what} {text!r}"
                for what, text in (
                    ("title", ax.get_title()),
                    ("x", ax.get_xlabel()),
                    ("y", ax.get_ylabel()),
                )
                if text
            ]
            parts.append(f"axes {i}: " + (", ".join(labels) or "no labels"))
        summary = f"{len(axes)} {_plural(len(axes), 'axes', 'axes')}"
        return "matplotlib Figure", summary, "\n".join(["A matplotlib figure.", *parts])
    if module.startswith("plotly") and cls in ("Figure", "FigureWidget"):
        layout = obj.layout  # type: ignore[attr-defined]
        traces = [getattr(t, "type", "trace") for t in obj.data]  # type: ignore[attr-defined]
        parts = []
        for what, title in (
            ("title", layout.title.text),
            ("x", layout.xaxis.title.text),
            ("y", layout.yaxis.title.text),
        ):
            if title:
                parts.append(f"{what} {title!r}")
        summary = f"{len(traces)} {_plural(len(traces), 'trace')}"
        kinds = ", ".join(dict.fromkeys(traces)) or "no traces"
        lines = [f"A plotly figure: {summary} ({kinds}).", *parts]
        return "plotly Figure", summary, "\n".join(lines)
    return None


def _picture(obj: object) -> tuple[str | None, str]:
    """A figure drawn as a PNG data URI, or None and why not. Never raises."""
    try:
        if (type(obj).__module__ or "").startswith("plotly"):
            if importlib.util.find_spec("kaleido") is None:
                return None, "plotly draws pictures only with the kaleido package installed"
            return _fitted(lambda scale: obj.to_image(format="png", scale=scale), 1.0)  # type: ignore[attr-defined]
        figure = obj if type(obj).__name__ == "Figure" else getattr(obj, "figure", None)
        if threading.current_thread() is not threading.main_thread():
            # Sent from the pane (a kernel subshell) while a cell may be drawing this
            # figure: savefig changes a figure's dpi while it draws, so draw a copy.
            try:
                figure = pickle.loads(pickle.dumps(figure))
            except Exception:
                return None, "the figure cannot be copied to draw it safely; attach it from code"
        width, height = figure.get_size_inches()  # type: ignore[union-attr]
        dpi = min(100.0, MAX_IMAGE_SIDE / max(width, height, 0.01))

        def draw(dpi: float) -> bytes:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=dpi)  # type: ignore[union-attr]
            return buffer.getvalue()

        return _fitted(draw, dpi)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from a user's artist must not end the kernel
        return None, f"drawing it failed ({type(exc).__name__}: {_inline(exc)})"


def _fitted(draw: Callable[[float], bytes], scale: float) -> tuple[str | None, str]:
    """Draw at ``scale``, then smaller while the PNG is over :data:`MAX_IMAGE_BYTES`:
    scaled by the square root of the excess (bytes grow with the area), at most three
    draws in all, since a heavy plot costs as much to draw small."""
    for _ in range(3):
        png = draw(scale)
        if len(png) <= MAX_IMAGE_BYTES:
            return _png_uri(png), ""
        scale *= 0.9 * (MAX_IMAGE_BYTES / len(png)) ** 0.5
    return None, f"the picture is larger than {MAX_IMAGE_BYTES:,} bytes"


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --- what the model receives ---------------------------------------------------------

_HEADER_RE: Final = re.compile(r"^Context `(?P<name>[^`\n]*)` \((?P<about>[^\n]*)\):$", re.M)


def render_message(
    text: str,
    context: Iterable[Mapping[str, Any]] | None,
    picture_notes: Mapping[int, str] | None = None,
) -> str:
    """A user message as the model receives it: the user's text, then per attachment a
    header line (``Context `df` (kind, summary):``) and its text in a fenced block
    longer than any run of backticks in it. An attachment with a picture ends with a
    line saying whether the model got it: ``picture_notes[i]`` for the attachment at
    index ``i`` when it was not sent, else :data:`PICTURE_SENT`."""
    parts = [text]
    for i, item in enumerate(context or ()):
        about = ", ".join(p for p in (item.get("kind"), item.get("summary")) if p)
        body = item.get("text") or ""
        if item.get("image"):
            body = f"{body}\n{(picture_notes or {}).get(i, PICTURE_SENT)}"
        longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
        fence = "`" * max(3, longest + 1)
        parts.append(f"Context `{item.get('name')}` ({about}):\n{fence}\n{body}\n{fence}")
    return "\n\n".join(parts)


def split_message(content: str) -> tuple[str, list[tuple[str, str]]]:
    """What :func:`render_message` made, taken apart: the user's own text, and each
    attachment's name and description (its kind and summary)."""
    found = [(m.group("name"), m.group("about"), m.start()) for m in _HEADER_RE.finditer(content)]
    if not found:
        return content, []
    return content[: found[0][2]].rstrip("\n"), [(n, a) for n, a, _ in found]


# --- helpers -------------------------------------------------------------------------


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return word if count == 1 else plural or word + "s"


def _inline(value: object) -> str:
    return " ".join(str(value).split())[:100]


def _cell(value: object) -> str:
    try:
        text = " ".join(str(value).split())
    except Exception:
        text = "?"
    if len(text) > CELL_CHARS:
        text = text[: CELL_CHARS - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _clean_name(name: str) -> str:
    name = " ".join(str(name).replace("`", "'").split())
    return name[:100] or "context"


def _cut(text: str, limit: int) -> str:
    note = f"\n… [cut: {limit:,} of {len(text):,} characters]"
    return text[: max(0, limit - len(note))] + note


_SURROGATE_RE: Final = re.compile("[\ud800-\udfff]")


def _valid(text: str) -> str:
    """Text that can travel as UTF-8 (a repr may hold lone surrogates)."""
    return _SURROGATE_RE.sub("\ufffd", text)
