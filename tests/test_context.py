"""Kernel objects as context: what the model receives for a DataFrame, a Series, a
figure and any other object; @name mentions; the budgets; and the attachments kept in
the transcript, sent with later turns, saved and loaded."""

from __future__ import annotations

import base64
import json
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nbchat import Chat, widget
from nbchat.context import (
    CELL_CHARS,
    MAX_ATTACHMENT_CHARS,
    MAX_CONTEXT_CHARS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_SIDE,
    PICTURE_LEFT_OUT,
    PICTURE_NOT_SENT,
    PICTURE_SENT,
    SAMPLE_COLUMNS,
    SAMPLE_ROWS,
    attach,
    describe,
    gather,
    mentions,
    render_message,
    split_message,
)
from nbchat.protocol import IMAGE_URI
from nbchat.transcript import (
    COLUMNS,
    Transcript,
    plan_pictures,
    transcript_from_json,
    transcript_to_markdown,
)

from timeouts import TIMEOUT


@pytest.fixture
def df() -> pd.DataFrame:
    return pd.DataFrame({"region": ["north", None, "south"], "sales": [10, 20, 30]})


# --- one object -------------------------------------------------------------------------


def test_a_dataframe_becomes_its_shape_schema_nulls_and_rows(df: pd.DataFrame) -> None:
    item = describe(df, "df")
    assert item["name"] == "df"
    assert item["kind"] == "DataFrame"
    assert item["summary"] == "3 rows × 2 columns"
    text = item["text"]
    assert text.startswith("DataFrame: 3 rows × 2 columns\n")
    assert "- region: object, 1 null" in text or "- region: str, 1 null" in text
    assert "- sales: int64, 0 nulls" in text
    assert "All rows:" in text
    assert "|  | region | sales |" in text
    assert "| 1 | nan | 20 |" in text  # pandas 3 stores text nulls as NaN


def test_a_big_dataframe_is_sampled_within_the_budget() -> None:
    wide = pd.DataFrame(
        np.arange(1000 * 60).reshape(1000, 60), columns=[f"c{i}" for i in range(60)]
    )
    wide["long"] = "x" * 500 + "|pipe"
    text = describe(wide, "wide")["text"]
    assert len(text) <= MAX_ATTACHMENT_CHARS
    assert "DataFrame: 1,000 rows × 61 columns" in text
    assert "- ... and 11 more columns" in text  # the schema lists 50
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table[0].split(" | ")) == SAMPLE_COLUMNS + 1  # index + 20 columns
    assert 1 < len(table) - 1 <= SAMPLE_ROWS  # rows halved until the text fits
    assert "of 1,000 rows, first 20 of 61 columns" in text
    long = describe(wide[["long"]], "w")["text"]
    assert "| 0 | " + "x" * (CELL_CHARS - 1) + "… |" in long  # cells are cut


def test_cells_cannot_break_the_table() -> None:
    text = describe(pd.DataFrame({"a|b": ["x|y\nz"]}), "t")["text"]
    assert "| a\\|b |" in text
    assert "| 0 | x\\|y z |" in text


def test_a_series_becomes_its_length_dtype_nulls_and_values() -> None:
    item = describe(pd.Series([1.5, None, 3.0], name="price"), "price")
    assert item["kind"] == "Series"
    assert item["summary"] == "3 values"
    assert "Series price: 3 values, dtype float64, 1 null" in item["text"]
    assert "| 0 | 1.5 |" in item["text"]


def _sales_figure(figsize: tuple[float, float] = (6.4, 4.8)) -> Any:
    from matplotlib.figure import Figure  # Agg, no pyplot: no GUI, no global state

    figure = Figure(figsize=figsize)
    ax = figure.add_subplot()
    ax.bar(["north", "south"], [3, 5])
    ax.set(title="Sales by region", xlabel="region", ylabel="sales")
    return figure


def _png_size(uri: str) -> tuple[int, int]:
    png = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def test_a_matplotlib_figure_is_described_and_drawn_as_a_png() -> None:
    figure = _sales_figure()
    item = describe(figure, "fig")
    assert item["kind"] == "matplotlib Figure"
    assert item["summary"] == "1 axes"
    assert "title 'Sales by region', x 'region', y 'sales'" in item["text"]
    assert IMAGE_URI.fullmatch(item["image"])
    assert _png_size(item["image"]) == (640, 480)  # 100 dpi
    assert describe(figure.axes[0], "ax")["image"] == item["image"]  # an Axes: its figure


def test_a_huge_figure_is_drawn_small_enough() -> None:
    item = describe(_sales_figure((40, 30)), "big")
    width, height = _png_size(item["image"])
    assert max(width, height) <= MAX_IMAGE_SIDE
    assert len(base64.b64decode(item["image"].split(",")[1])) <= MAX_IMAGE_BYTES


def test_a_plotly_figure_without_kaleido_is_described_and_says_why_no_picture() -> None:
    import plotly.graph_objects as go

    figure = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]), layout={"title": {"text": "Counts"}})
    item = describe(figure, "pfig")
    assert item["kind"] == "plotly Figure"
    assert "title 'Counts'" in item["text"]
    assert "image" not in item
    assert (
        "No picture was sent: plotly draws pictures only with the kaleido package" in item["text"]
    )


def test_the_model_is_told_whether_it_got_the_picture() -> None:
    item = describe(_sales_figure(), "fig")
    assert render_message("look", [item]).endswith(f"{PICTURE_SENT}\n```")
    told = render_message("look", [item], {0: PICTURE_NOT_SENT})
    assert "does not take images" in told
    assert item["image"] not in told  # the picture never goes as text


def test_a_history_carries_pictures_newest_first_within_the_budget() -> None:
    transcript = Transcript()
    old, new = describe(_sales_figure(), "old"), describe(_sales_figure((3, 2)), "new")
    wide = describe(_sales_figure((8, 3)), "wide")
    transcript.add_user("first", at=1.0, context=[dict(old)])
    transcript.add_assistant(reply_id="r1", model="m", at=2.0).content = "ok"
    transcript.add_user("second", at=3.0, context=[dict(new), dict(wide)])
    room = len(new["image"]) + len(wide["image"]) + len(old["image"]) // 2

    def users(images: bool, budget: int) -> list[Any]:
        plan = plan_pictures(transcript.messages, images=images, budget=budget)
        return [m for m in transcript.history(pictures=plan) if m.role == "user"]

    first, second = users(True, room)  # both of the newer message, then no room
    assert second.images == (new["image"], wide["image"])
    assert second.content.count(PICTURE_SENT) == 2
    assert first.images is None
    assert PICTURE_LEFT_OUT in first.content

    # Each picture on its own: the newest that fits goes, though its neighbour does not.
    first, second = users(True, len(wide["image"]))
    assert second.images == (wide["image"],)
    assert PICTURE_LEFT_OUT in second.content.split("Context `wide`")[0]

    assert [m.images for m in users(True, 10**7)] == [
        (old["image"],),
        (new["image"], wide["image"]),
    ]
    blind = users(False, 10**7)
    assert all(m.images is None for m in blind)
    assert all(PICTURE_NOT_SENT in m.content for m in blind)
    assert all(m.images is None for m in transcript.history() if m.role == "user")


def test_drawing_from_another_thread_leaves_the_figure_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pane's sends run on a kernel subshell while a cell may be drawing the same
    figure: the picture is drawn from a copy, so neither sees the other's dpi."""
    from matplotlib.figure import Figure

    figure = _sales_figure()
    figure.set_dpi(150)
    drawn: list[Figure] = []
    savefig = Figure.savefig

    def spy(self: Figure, *args: Any, **kwargs: Any) -> None:
        drawn.append(self)
        savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    seen: list[Any] = []
    worker = threading.Thread(target=lambda: seen.append(describe(figure, "fig")))
    worker.start()
    worker.join()
    assert drawn
    assert figure not in drawn  # a copy was drawn
    assert _png_size(seen[0]["image"]) == (640, 480)
    assert figure.dpi == 150
    describe(figure, "fig")  # on the main thread (code's send): the figure itself
    assert drawn[-1] is figure


def test_a_figure_raising_system_exit_is_described_not_fatal() -> None:
    figure = _sales_figure()

    def explode(*args: Any, **kwargs: Any) -> None:
        raise SystemExit(3)

    figure.savefig = explode  # type: ignore[method-assign]
    item = describe(figure, "fig")
    assert "image" not in item
    assert "drawing it failed (SystemExit: 3)" in item["text"]


def test_other_objects_are_their_repr_cut_at_the_budget() -> None:
    assert describe({"a": 1}, "d") == {
        "name": "d",
        "kind": "dict",
        "summary": "",
        "text": "{'a': 1}",
    }
    assert describe("plain text", "s")["text"] == "plain text"  # a str as itself
    long = describe(list(range(10_000)), "big")["text"]
    assert len(long) <= MAX_ATTACHMENT_CHARS
    assert long.startswith("[0, 1, 2")
    assert long.endswith(", ...]")  # shortened as it is made, not built whole and cut
    huge = describe("x" * 100_000, "s")["text"]  # text is itself, cut to the budget
    assert huge.endswith(f"[cut: {MAX_ATTACHMENT_CHARS:,} of 100,000 characters]")


def test_a_huge_container_is_described_without_building_its_whole_repr() -> None:
    class Counted:
        made = 0

        def __repr__(self) -> str:
            Counted.made += 1
            return "c"

    text = describe([Counted() for _ in range(100_000)], "many")["text"]
    assert Counted.made <= 200  # repr() of the list would have made all 100,000
    assert len(text) <= MAX_ATTACHMENT_CHARS


def test_objects_python_shares_are_not_named_after_an_unrelated_variable() -> None:
    namespace = {"n": None, "k": 5, "word": "hi", "frame": [1, 2]}
    got = gather("", [None, 5, "hi", namespace["frame"]], namespace)
    assert [a["name"] for a in got] == ["context[0]", "context[1]", "context[2]", "frame"]
    several = gather("", (x for x in ([1], [2])), {})  # a generator of objects: each one
    assert [a["text"] for a in several] == ["[1]", "[2]"]
    assert [a["text"] for a in gather("", {3, 4}, {})] == ["3", "4"]


def test_a_repr_that_exits_does_not_end_the_kernel() -> None:
    class Exits:
        def __repr__(self) -> str:
            raise SystemExit("bye")

    assert "SystemExit: bye" in describe(Exits(), "e")["text"]


def test_a_broken_repr_or_bad_text_never_raises() -> None:
    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("nope")

    assert describe(Broken(), "b")["text"] == (
        "(could not describe this object: RuntimeError: nope)"
    )
    assert describe("\ud800", "s")["text"] == "\ufffd"  # sendable as UTF-8
    assert describe(1, "a`b\nc")["name"] == "a'b c"  # cannot break the header


def test_the_message_budget_cuts_then_leaves_out() -> None:
    items = attach([(f"x{i}", "y" * 5_000) for i in range(6)])
    sizes = [len(i["text"]) for i in items]
    assert sum(sizes) <= MAX_CONTEXT_CHARS + 200
    assert sizes[:4] == [MAX_ATTACHMENT_CHARS] * 4
    assert "left out" in items[-1]["text"]


# --- @name ------------------------------------------------------------------------------


def test_mentions_are_identifiers_after_an_at_sign_not_emails_nor_code() -> None:
    text = "why does @sales have nulls? ask a@b.com or x.y@z.org; @sales again, @df."
    assert mentions(text) == ["sales", "df"]
    assert mentions("`@decorator` and\n```\n@dataclass\n```\n@ok") == ["ok"]
    assert mentions("@élan @_private @1x") == ["élan", "_private"]
    assert mentions("@_ @__ @_5 @_i3 @_oh and @df") == ["df"]  # IPython's history: not mentions


def test_gather_resolves_known_names_once_and_names_explicit_objects(df: pd.DataFrame) -> None:
    namespace: dict[str, Any] = {"df": df, "n": 3, "In": [], "other": df}
    got = gather("@df and @missing and @n and @In, @df", None, namespace, hidden={"In"})
    assert [(a["name"], a["kind"]) for a in got] == [("df", "DataFrame"), ("n", "int")]
    got = gather("summarise @df", [df, [1, 2]], namespace)
    assert [a["name"] for a in got] == ["df", "context[1]"]  # df once, named by its variable
    assert [a["name"] for a in gather("x", {"mine": 1})] == ["mine"]
    assert [a["name"] for a in gather("x", df)] == ["context[0]"]  # one object, no namespace
    assert gather("@df", None, None) == []  # outside IPython nothing resolves


def test_rendering_puts_each_attachment_in_a_fence_and_splits_back(df: pd.DataFrame) -> None:
    item = describe(pd.DataFrame({"a": ["```"]}), "ticks")
    content = render_message("what is this?", [item])
    assert content.startswith(
        "what is this?\n\nContext `ticks` (DataFrame, 1 row × 1 column):\n````\n"
    )
    assert content.endswith("\n````")
    assert split_message(content) == ("what is this?", [("ticks", "DataFrame, 1 row × 1 column")])
    assert split_message("no context") == ("no context", [])


# --- through a Chat -----------------------------------------------------------------------


def test_context_reaches_the_model_and_the_transcript_keeps_the_text(
    chat: Chat, df: pd.DataFrame, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(widget, "_user_namespace", lambda: ({"df": df}, frozenset()))
    reply = chat.send("what is in @df?", tokens_per_s=0).wait(TIMEOUT)
    assert reply.text.startswith(
        "**Demo reply.** You wrote: \u201cwhat is in @df?\u201d. "
        "Attached: df (DataFrame, 3 rows × 2 columns)."
    )
    user = chat.messages[0]
    assert user["content"] == "what is in @df?"
    assert [(a["name"], a["kind"]) for a in user["context"]] == [("df", "DataFrame")]
    assert chat.messages[1]["context"] is None

    # A later turn carries the earlier context: the model saw it.
    chat.send("and now?", context=[[1, 2, 3]], tokens_per_s=0).wait(TIMEOUT)
    with chat._conversation.lock:
        history = chat._conversation.transcript.history()
    assert history[0].content.startswith("what is in @df?\n\nContext `df` (DataFrame")
    assert "| 1 | nan | 20 |" in history[0].content
    assert history[2].content == "and now?\n\nContext `context[0]` (list):\n```\n[1, 2, 3]\n```"

    frame = chat.to_dataframe()
    assert list(frame.columns) == list(COLUMNS)
    assert frame["context"][0][0]["name"] == "df"
    assert "Attached: `df` (DataFrame, 3 rows × 2 columns)" in chat.to_markdown()

    path = chat.save(tmp_path / "chat.json")
    saved = json.loads(path.read_text())
    assert saved["messages"][0]["context"][0]["text"].startswith("DataFrame: 3 rows")
    with Chat.load(path) as again:
        assert again.messages[0]["context"] == user["context"]
    with Chat.from_dataframe(frame) as again:
        assert again.messages[2]["context"][0]["text"] == "[1, 2, 3]"
    frame.to_csv(tmp_path / "chat.csv", index=False)
    with Chat.from_dataframe(pd.read_csv(tmp_path / "chat.csv")) as again:
        assert again.messages[0]["context"] == user["context"]


def test_unknown_names_and_emails_stay_text(chat: Chat, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(widget, "_user_namespace", lambda: ({"com": 1}, frozenset()))
    reply = chat.send("mail @nobody at a@b.com", tokens_per_s=0).wait(TIMEOUT)
    assert "Attached" not in reply.text
    assert chat.messages[0]["context"] is None


def test_a_pane_send_resolves_mentions(
    chat: Chat, df: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(widget, "_user_namespace", lambda: ({"df": df}, frozenset()))
    chat._on_pane_message(chat, {"type": "send", "text": "look at @df"}, None)
    reply = chat.reply
    assert reply is not None
    assert "Attached: df (DataFrame" in reply.wait(TIMEOUT).text


def test_a_saved_context_is_checked_when_loaded() -> None:
    base = {"format": "nbchat.transcript", "version": 1, "system": None}
    good = {"name": "df", "kind": "DataFrame", "text": "t"}
    loaded = transcript_from_json(
        {**base, "messages": [{"role": "user", "content": "x", "context": [good]}]}
    )
    assert loaded.messages[0].context == [{**good, "summary": ""}]
    assert "Attached: `df` (DataFrame)" in transcript_to_markdown(loaded)
    picture = {**good, "image": "data:image/png;base64,AAAA"}
    again = transcript_from_json(
        {**base, "messages": [{"role": "user", "content": "x", "context": [picture]}]}
    )
    assert again.messages[0].images == ("data:image/png;base64,AAAA",)
    bad_pictures = [{**good, "image": "https://example.com/x.png"}], [{**good, "image": 1}]
    for bad in ([{"name": "df"}], ["text"], [{**good, "text": 3}], "df", *bad_pictures):
        with pytest.raises(ValueError, match="context"):
            transcript_from_json(
                {**base, "messages": [{"role": "user", "content": "x", "context": bad}]}
            )
