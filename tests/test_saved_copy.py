"""saved_copy.py: the static rendering of a conversation that a saved notebook keeps."""

from __future__ import annotations

from html.parser import HTMLParser

from nbchat.saved_copy import (
    MAX_WAIT_S,
    QUIET_S,
    SAVED_ATTRIBUTE,
    SavedCopy,
    publish_at,
    update_interval,
)
from nbchat.transcript import Transcript


def conversation(*turns: tuple[str, str]) -> Transcript:
    t = Transcript(system="Be brief.")
    for i, (question, answer) in enumerate(turns):
        t.add_user(question, at=1_700_000_000.0 + i)
        reply = t.add_assistant(reply_id=f"r{i}", model="demo", at=1_700_000_000.0 + i)
        reply.content, reply.finish = answer, "stop"
        reply.first_token_s, reply.duration_s, reply.chunks = 0.1, 1.0, 9
    return t


class _Tags(HTMLParser):
    """Every start tag with its attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> _Tags:
    tags = _Tags()
    tags.feed(html)
    return tags


def test_every_message_is_in_each_form_and_marked_as_a_saved_copy() -> None:
    t = conversation(("first question", "A **bold** answer"), ("second one", "| a |\n|---|\n| 1 |"))
    bundle = SavedCopy("c0ffee").bundle(t, now=1_700_000_100.0)
    page = parse(bundle["text/html"])
    text = "".join(page.text)
    for words in ("first question", "bold", "second one", "Be brief.", "Saved copy", "read-only"):
        assert words in text
        assert words in bundle["text/plain"]
    assert ("strong", {}) in page.tags  # the reply's Markdown is rendered
    assert any(tag == "table" for tag, _ in page.tags)
    marked = [attrs for _, attrs in page.tags if SAVED_ATTRIBUTE in attrs]
    assert marked == [{"class": "nbchat-saved", SAVED_ATTRIBUTE: "c0ffee"}]
    assert "2 turns" in text
    assert "2023-11-14 22:15 UTC" in text  # when the copy was made


def test_there_is_no_markdown_form_that_a_renderer_could_pass_raw_html_through() -> None:
    t = conversation(("hi", "<script>alert(1)</script>"))
    assert sorted(SavedCopy("c0ffee").bundle(t)) == ["text/html", "text/plain"]


def test_model_output_and_user_text_cannot_inject_markup() -> None:
    payloads = (
        '<script>alert(1)</script><img src=x onerror="alert(2)">',
        "[click](javascript:alert(3)) ![pixel](https://tracker.example/p.png)",
    )
    t = conversation((payloads[0], payloads[0]), (payloads[1], payloads[1]))
    page = parse(SavedCopy("c0ffee").bundle(t)["text/html"])
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "img", "iframe"}
    hrefs = [attrs.get("href") for tag, attrs in page.tags if tag == "a"]
    assert not any(href and href.lower().startswith("javascript") for href in hrefs)
    assert not any(a for _, attrs in page.tags for a in attrs if a.startswith("on"))
    assert "<script>alert(1)</script>" in "".join(page.text)  # shown as text, not run


def test_a_long_conversation_keeps_the_newest_messages_and_says_what_is_left_out() -> None:
    t = conversation(*((f"question {i}", "x" * 1000) for i in range(50)))
    bundle = SavedCopy("c0ffee", max_chars=10_500).bundle(t)
    assert "question 49" in bundle["text/html"]
    assert "question 40" in bundle["text/html"]
    assert "question 39" not in bundle["text/html"]
    assert "80 earlier messages not in this copy" in bundle["text/html"]
    assert "80 earlier messages" in bundle["text/plain"]


def test_a_finished_message_is_rendered_once_and_a_streaming_one_each_time() -> None:
    t = conversation(("q", "done answer"))
    t.add_user("next", at=1_700_000_010.0)
    live = t.add_assistant(reply_id="r9", model="demo", at=1_700_000_010.0)
    live.content = "so far"
    copy = SavedCopy("c0ffee")
    rendered: list[str] = []
    render = copy._md.render
    copy._md.render = lambda text, env=None: rendered.append(text) or render(text, env)  # type: ignore[method-assign]
    copy.bundle(t)
    first = rendered.copy()
    live.content += " and more"
    html = copy.bundle(t)["text/html"]
    assert first == ["done answer", "so far"]
    assert rendered[len(first) :] == ["so far and more"]
    assert "streaming" in html  # the footer says the reply had not ended


def test_a_bigger_copy_is_rewritten_less_often() -> None:
    assert update_interval(5_000) == 1.0  # a short chat: once a second, as before
    assert update_interval(320_000) == 5.0  # 64 kB a second at most
    assert update_interval(10**9) == 5.0  # however big
    assert update_interval(128_000) == 2.0


def test_the_copy_waits_for_the_turns_to_pause_but_not_forever() -> None:
    # The first turn boundary after a quiet spell goes at once...
    assert publish_at(100.0, 100.0, 0.0, 1.0) == 100.0
    assert publish_at(100.0, 100.0, 99.0, 1.0) == 100.0  # (a second after the last copy)
    # ...unless the last copy went less than QUIET_S ago: then it waits for a pause.
    assert publish_at(100.0, 100.0, 99.5, 1.0) == 100.0 + QUIET_S
    # Each later boundary pushes it on while the turns keep coming...
    assert publish_at(110.0, 100.0, 99.0, 1.0) == 110.0 + QUIET_S
    # ...but a change the notebook lacks waits at most MAX_WAIT_S.
    assert publish_at(100.0 + MAX_WAIT_S - 0.5, 100.0, 99.0, 1.0) == 100.0 + MAX_WAIT_S
    assert publish_at(100.0 + MAX_WAIT_S + 7, 100.0, 99.0, 1.0) == 100.0 + MAX_WAIT_S
    # And never sooner than the last copy's size allows after it.
    assert publish_at(100.0, 100.0, 99.0, 5.0) == 104.0
    assert publish_at(101.0, 100.0, 99.0, 5.0) == 104.0
