"""nbchat.batch end to end: real gateways on loopback, the demo model and the official
OpenAI SDK against the replay server (tests/replay_server.py)."""

from __future__ import annotations

import _thread
import asyncio
import importlib
import inspect
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pandas
import pytest

import nbchat
from nbchat.batching import BATCH_COLUMNS, CLOSE_S, REPLIES_PER_SESSION, STOP_GRACE_S
from nbchat.client import client_loop
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.limits import GatewayLimits
from nbchat.gateway.providers import DemoProvider
from nbchat.gateway.providers.base import retry_after_s
from nbchat.gateway.providers.openai_compat import OpenAICompatProvider
from nbchat.gateway.redis_store import RedisStore
from nbchat.gateway.server import ModelRoute
from nbchat.protocol import Welcome

from faults import FaultyProxy
from redis_server import RedisServer
from replay_server import Replay
from timeouts import TIMEOUT, wait_until

GPT_TEXT = "WebSockets keep one TCP connection open in both directions."


@pytest.fixture
def gateway(replay: Replay) -> Iterator[EmbeddedGateway]:
    """A gateway serving the demo model (unpaced) and replayed OpenAI models."""
    openai = OpenAICompatProvider(
        base_url=replay.base_url, api_key="sk-test", label="openai-compatible"
    )
    routes = {
        "demo": ModelRoute(DemoProvider(), "demo", params={"tokens_per_s": 0}),
        "gpt": ModelRoute(openai, "gpt-4o-mini"),
        "gpt-429": ModelRoute(openai, "gpt-429"),
        "gpt-429-twice": ModelRoute(openai, "gpt-429-twice"),
        "broken": ModelRoute(openai, "broken-model"),
        "long": ModelRoute(openai, "long"),
    }
    embedded = EmbeddedGateway(Gateway(models=routes, token="t")).start()
    replay.requests.clear()
    yield embedded
    embedded.close()


def run(gateway: EmbeddedGateway, prompts: object, models: object, **options: object) -> object:
    return nbchat.batch(prompts, models, url=gateway.url, token="t", **options)  # type: ignore[arg-type]


def demo_opening(prompt: str) -> str:
    return f"**Demo reply.** You wrote: \u201c{prompt}\u201d."


def test_two_models_over_many_prompts_pair_each_prompt_with_its_answer(
    gateway: EmbeddedGateway, replay: Replay, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [f"question number {i}" for i in range(200)]
    df = nbchat.batch(
        prompts,
        ["gpt", "demo"],
        url=gateway.url,
        token="t",
        concurrency=8,
        prices={"gpt": (0.15, 0.60)},
    )
    assert isinstance(df, pandas.DataFrame)
    assert list(df.columns) == list(BATCH_COLUMNS)
    assert len(df) == 400
    # Prompt-major, in input order; each prompt's models in the order given.
    assert list(df["prompt"]) == [p for p in prompts for _ in range(2)]
    assert list(df["model"]) == ["gpt", "demo"] * 200
    assert set(df["finish"]) == {"stop"}
    demo = df[df["model"] == "demo"]
    for prompt, text in zip(demo["prompt"], demo["text"], strict=True):
        assert text.startswith(demo_opening(prompt))
    gpt = df[df["model"] == "gpt"]
    assert set(gpt["text"]) == {GPT_TEXT}
    assert list(gpt["prompt_tokens"]) == [14] * 200  # as the provider reported them
    assert list(gpt["completion_tokens"]) == [11] * 200
    assert gpt["cost"].iloc[0] == pytest.approx((14 * 0.15 + 11 * 0.60) / 1e6)
    assert (demo["cost"] == 0.0).all()  # the built-in price of demo
    assert (df["first_token_s"] > 0).all()
    assert (df["duration_s"] >= df["first_token_s"]).all()
    assert (df["retries"] == 0).all()
    assert df["reply_id"].is_unique
    assert df.attrs["nbchat"]["sessions"] == 2
    assert df.attrs["nbchat"]["stopped"] is False
    # One provider request per gpt row: nothing lost, nothing sent twice.
    posts = [r for r in replay.requests if r["path"].endswith("/chat/completions")]
    assert sorted(r["body"]["messages"][-1]["content"] for r in posts) == sorted(prompts)
    err = capsys.readouterr().err
    assert "400/400" in err
    assert "100%" in err
    assert "done=400, failed=0" in err
    assert "8 at once over 2 sessions of 4" in err  # the limit applied
    assert "tokens/s" in err


def test_no_session_goes_over_the_gateways_limit_of_replies(gateway: EmbeddedGateway) -> None:
    limit = gateway.gateway.limits.replies_per_session
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            sessions = list(gateway.gateway.sessions.values())
            seen.extend(len(s.tasks) for s in sessions)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        df = run(gateway, [f"p{i}" for i in range(40)], "gpt", concurrency=10, progress=False)
    finally:
        stop.set()
        watcher.join()
    assert isinstance(df, pandas.DataFrame)
    assert set(df["finish"]) == {"stop"}, df[["finish", "error"]]
    assert (df["retries"] == 0).all()  # never refused as busy
    assert max(seen) == limit  # used to the full, never over
    assert df.attrs["nbchat"]["sessions"] == 3


def test_a_rate_limited_prompt_is_retried_after_the_providers_retry_after(
    gateway: EmbeddedGateway, replay: Replay, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = ["first", "second", "third"]
    df = run(gateway, prompts, ["gpt-429", "broken"], concurrency=6)
    assert isinstance(df, pandas.DataFrame)
    limited = df[df["model"] == "gpt-429"]
    assert list(limited["finish"]) == ["stop"] * 3
    assert set(limited["text"]) == {GPT_TEXT}
    assert list(limited["retries"]) == [1, 1, 1]
    assert limited["error"].isna().all()  # the row is the retry's success
    for prompt in prompts:
        first, second = replay.throttled[prompt]
        assert second - first >= 1.0  # Retry-After: 1
    # Only a provider's "retry after" is retried: a 503 is not.
    broken = df[df["model"] == "broken"]
    assert list(broken["finish"]) == ["error"] * 3
    assert list(broken["retries"]) == [0, 0, 0]
    assert list(broken["error_code"]) == ["upstream_error"] * 3
    assert broken["error"].str.contains("HTTP 503").all()
    assert "retries=3" in capsys.readouterr().err


def test_retries_stop_at_max_retries_and_the_row_says_why(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    replay.retry_after = "0.2"
    df = run(gateway, ["only"], "gpt-429-twice", max_retries=1, progress=False)
    assert isinstance(df, pandas.DataFrame)
    row = df.iloc[0]
    assert row["finish"] == "error"
    assert row["error_code"] == "rate_limited"
    assert "retry after 0.2 s" in row["error"]
    assert row["retries"] == 1
    assert len(replay.throttled["only"]) == 2


def test_the_error_frame_carries_retry_after(gateway: EmbeddedGateway, replay: Replay) -> None:
    replay.retry_after = "3"
    with nbchat.Chat(url=gateway.url, token="t", model="gpt-429-twice") as chat:
        reply = chat.send("hello").wait(TIMEOUT)
        assert reply.error_code == "rate_limited"
        assert "retry after 3 s" in (reply.error or "")
    # The error event the gateway logged and sent: the number, not only the words.
    errors = [
        progress.error
        for live in gateway.gateway.sessions.values()
        for progress in live.state.replies.values()
        if progress.error is not None
    ]
    assert [e.retry_after for e in errors] == [3.0]


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert retry_after_s({"retry-after": "7"}) == 7.0
    assert retry_after_s({"retry-after": "0.5"}) == 0.5
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_s({"retry-after": date}, now=now.timestamp()) == pytest.approx(30)
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({"retry-after": "-3"}) is None
    assert retry_after_s({"retry-after": "nan"}) is None
    assert retry_after_s({}) is None


def test_an_interrupt_stops_the_replies_in_flight_and_returns_what_finished(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    prompts = [f"q{i}" for i in range(12)]
    timer = threading.Timer(1.0, _thread.interrupt_main)
    began = time.monotonic()
    timer.start()
    try:
        df = run(gateway, prompts, ["gpt", "long"], concurrency=4, progress=False)
    finally:
        timer.cancel()
    took = time.monotonic() - began
    assert isinstance(df, pandas.DataFrame)
    assert took < 5.0  # a long reply takes 10 s: stopped, not waited for
    assert len(df) == 24
    assert df.attrs["nbchat"]["stopped"] is True
    done = df[df["finish"] == "stop"]
    stopped = df[df["finish"] == "stopped"]
    not_run = df[df["finish"] == "not_run"]
    assert len(done) + len(stopped) + len(not_run) == 24
    assert len(done) >= 2
    assert set(done["model"]) == {"gpt"}
    assert set(done["text"]) == {GPT_TEXT}
    # The four in flight were the long ones: stopped with their partial text.
    assert len(stopped) == 4
    assert set(stopped["model"]) == {"long"}
    assert all(t.startswith(" word0 word1") for t in stopped["text"])
    assert stopped["duration_s"].notna().all()
    assert len(not_run) > 0
    assert (not_run["text"] == "").all()
    assert not_run["reply_id"].isna().all()
    assert not_run["duration_s"].isna().all()
    # Each stop reached the provider: its request was closed mid-stream.
    wait_until(lambda: len(replay.disconnected_at) == 4, "the provider requests closed")
    # And what was not run never went to the provider.
    posts = [r for r in replay.requests if r["path"].endswith("/chat/completions")]
    assert len(posts) == len(done) + len(stopped)


def test_a_stop_event_set_from_another_thread_stops_the_batch(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    began = time.monotonic()
    df = run(gateway, ["a", "b", "c"], "long", concurrency=2, stop=stop, progress=False)
    assert isinstance(df, pandas.DataFrame)
    assert time.monotonic() - began < 4.0
    assert list(df["finish"]) == ["stopped", "stopped", "not_run"]
    wait_until(lambda: len(replay.disconnected_at) == 2, "the provider requests closed")


def test_a_dataframe_of_prompts_carries_its_other_columns(gateway: EmbeddedGateway) -> None:
    source = pandas.DataFrame(
        {"id": [7, 8, 9], "question": ["alpha", "beta", "gamma"], "topic": ["x", "y", "z"]}
    )
    df = run(gateway, source, ["demo", "gpt"], column="question", progress=False)
    assert isinstance(df, pandas.DataFrame)
    assert list(df.columns) == ["id", "topic", *BATCH_COLUMNS]
    assert list(df["id"]) == [7, 7, 8, 8, 9, 9]
    assert list(df["topic"]) == ["x", "x", "y", "y", "z", "z"]
    assert list(df["prompt"]) == ["alpha", "alpha", "beta", "beta", "gamma", "gamma"]
    for prompt, text in zip(df["prompt"][::2], df["text"][::2], strict=True):
        assert text.startswith(demo_opening(prompt))
    series = run(gateway, source["question"], "demo", progress=False)
    assert isinstance(series, pandas.DataFrame)
    assert list(series["prompt"]) == ["alpha", "beta", "gamma"]


def test_an_unknown_model_gives_error_rows_with_the_gateways_message(
    gateway: EmbeddedGateway,
) -> None:
    df = run(gateway, ["hi", "there"], ["demo", "no-such-model"], progress=False)
    assert isinstance(df, pandas.DataFrame)
    assert list(df["finish"]) == ["stop", "error", "stop", "error"]
    unknown = df[df["model"] == "no-such-model"]
    assert list(unknown["error_code"]) == ["unknown_model"] * 2
    assert unknown["error"].str.startswith("unknown model 'no-such-model'; available: ").all()
    assert unknown["prompt_tokens"].isna().all()  # not reported: null, never invented
    assert unknown["cost"].isna().all()


def test_the_default_model_and_the_embedded_gateway_with_a_system_message() -> None:
    df = nbchat.batch(["hello"], system="Answer briefly.", progress=False, tokens_per_s=0)
    row = df.iloc[0]
    assert row["model"] == "demo"
    assert row["finish"] == "stop"
    assert row["text"].startswith(demo_opening("hello"))


@pytest.mark.parametrize(
    ("prompts", "options", "says"),
    [
        ([], {}, "no prompts"),
        ("one prompt", {}, "not one string"),
        (["fine", 3], {}, r"prompts item 1 is 3 \(int\), not text"),
        (["fine", None], {}, r"item 1 is None \(NoneType\)"),
        (["  "], {}, "item 0 is empty"),
        (["bad \ud800"], {}, "lone surrogate"),
        ({"a": 1}, {}, "must be a list of strings"),
        (["ok"], {"concurrency": 0}, "concurrency must be 1 to 1024"),
        (["ok"], {"concurrency": 2.5}, "concurrency must be a whole number"),
        (["ok"], {"models": []}, "non-empty list"),
        (["ok"], {"models": ["demo", 3]}, "each model must be a model name"),
        (["ok"], {"column": "q"}, "pass a DataFrame"),
        (["ok"], {"max_retries": -1}, "max_retries"),
        (["ok"], {"prices": {"demo": 3}}, r"\(input, output\)"),
        (["ok"], {"temperature": float("nan")}, "cannot send these params"),
        (["ok"], {"stop": True}, "threading.Event"),
        (["ok"], {"system": 5}, "system must be text"),
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(
    gateway: EmbeddedGateway, replay: Replay, prompts: object, options: dict[str, object], says: str
) -> None:
    models = options.pop("models", "gpt")
    with pytest.raises(ValueError, match=says):
        run(gateway, prompts, models, **options)
    assert not gateway.gateway.sessions
    assert not replay.requests


def test_a_dataframe_needs_its_column_and_no_clashing_names(gateway: EmbeddedGateway) -> None:
    source = pandas.DataFrame({"q": ["a"], "model": ["mine"]})
    with pytest.raises(ValueError, match="name the column of prompts"):
        run(gateway, source, "demo")
    with pytest.raises(ValueError, match="no column 'question'; its columns: 'q', 'model'"):
        run(gateway, source, "demo", column="question")
    with pytest.raises(ValueError, match=r"columns named like the result's \(model\)"):
        run(gateway, source, "demo", column="q")


def test_an_unreachable_gateway_raises_gateway_unavailable() -> None:
    with pytest.raises(nbchat.GatewayUnavailable, match="cannot reach the gateway"):
        nbchat.batch(["hi"], "demo", url="ws://127.0.0.1:9/v1/chat", progress=False)


class GatewayOfOld(Gateway):
    """A gateway from before welcome.replies_per_session: its welcome does not say."""

    def welcome(self, session: str, last_seq: int, resumed: bool) -> Welcome:
        return replace(super().welcome(session, last_seq, resumed), replies_per_session=None)


def watch_replies(gateway: EmbeddedGateway) -> tuple[threading.Event, list[list[int]]]:
    """Sample, until the event is set, how many replies each session runs at once."""
    done, seen = threading.Event(), []

    def watch() -> None:
        while not done.is_set():
            seen.append([len(s.tasks) for s in list(gateway.gateway.sessions.values())])
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()
    return done, seen


def test_a_gateway_with_a_lower_limit_gets_more_sessions_and_never_says_busy() -> None:
    limits = GatewayLimits(replies_per_session=1)  # `nbchat serve --replies-per-session 1`
    gateway = EmbeddedGateway(Gateway(token="t", limits=limits)).start()
    done, seen = watch_replies(gateway)
    try:
        # Replies of about 3 s: longer than any quick retry of a busy session lasts.
        df = nbchat.batch(
            ["p0", "p1", "p2", "p3"], "demo", url=gateway.url, token="t", concurrency=2,
            progress=False, tokens_per_s=30,
        )  # fmt: skip
    finally:
        done.set()
        gateway.close()
    assert set(df["finish"]) == {"stop"}, df[["finish", "error"]]
    assert (df["retries"] == 0).all()
    figures = df.attrs["nbchat"]
    assert (figures["concurrency"], figures["sessions"], figures["replies_per_session"]) == (
        2, 2, 1,
    )  # fmt: skip
    assert max(max(s, default=0) for s in seen) == 1  # never over the gateway's limit
    assert max(sum(s) for s in seen) == 2  # and as many at once as asked


def test_a_full_session_of_an_older_gateway_is_waited_for_not_retried() -> None:
    # It does not say its limit (2): the batch sends 4 at once on one session, and the
    # two it refuses as busy wait for a reply to end, however long that takes.
    gateway = EmbeddedGateway(
        GatewayOfOld(token="t", limits=GatewayLimits(replies_per_session=2))
    ).start()
    try:
        df = nbchat.batch(
            ["p0", "p1", "p2", "p3"], "demo", url=gateway.url, token="t", concurrency=4,
            progress=False, tokens_per_s=40, max_retries=0,
        )  # fmt: skip
    finally:
        gateway.close()
    assert set(df["finish"]) == {"stop"}, df[["finish", "error"]]
    assert df["error"].isna().all()
    assert (df["retries"] == 0).all()  # a full session is no failure
    assert df.attrs["nbchat"]["replies_per_session"] == REPLIES_PER_SESSION  # it did not say


def test_a_retry_after_over_max_retry_wait_s_is_not_waited_and_the_row_says_why(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    replay.retry_after = "3"
    began = time.monotonic()
    df = run(gateway, ["c"], "gpt-429", max_retry_wait_s=1, progress=False)
    assert isinstance(df, pandas.DataFrame)
    assert time.monotonic() - began < 3.0  # not sent again early, nor waited for
    row = df.iloc[0]
    assert (row["finish"], row["error_code"], row["retries"]) == ("error", "rate_limited", 0)
    assert "the provider asked to wait 3 s, over max_retry_wait_s=1" in row["error"]
    assert len(replay.throttled["c"]) == 1


def test_a_retry_cut_short_by_a_stop_is_not_counted(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    replay.retry_after = "5"
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    df = run(gateway, ["a", "b"], "gpt-429", stop=stop, progress=False)
    assert isinstance(df, pandas.DataFrame)
    assert list(df["finish"]) == ["error", "error"]
    assert list(df["retries"]) == [0, 0]  # waiting, never sent again
    assert df["error"].str.endswith("(not tried again: the batch was stopped)").all()
    assert {prompt: len(times) for prompt, times in replay.throttled.items()} == {"a": 1, "b": 1}
    assert df.attrs["nbchat"]["stopped"] is True


@pytest.mark.redis
def test_the_session_store_going_away_ends_every_row(redis: RedisServer) -> None:
    store = RedisStore(redis.url, lease_s=2.0)
    gateway = EmbeddedGateway(Gateway(token="t", store=store)).start()

    def stop_redis_mid_reply() -> None:
        wait_until(lambda: any(s.tasks for s in list(gateway.gateway.sessions.values())), "a reply")
        time.sleep(0.5)
        redis.stop()

    stopper = threading.Thread(target=stop_redis_mid_reply)
    stopper.start()
    began = time.monotonic()
    try:
        df = nbchat.batch(
            [f"p{i}" for i in range(8)], "demo", url=gateway.url, token="t", concurrency=4,
            progress=False, tokens_per_s=30,
        )  # fmt: skip
    finally:
        stopper.join()
        gateway.close()
    assert time.monotonic() - began < TIMEOUT
    assert set(df["finish"]) == {"error"}, df[["finish", "error"]]
    assert set(df["error_code"]) == {"store_unavailable"}
    assert df["error"].str.contains("unreachable").all()
    streaming = df.iloc[:4]  # in flight when Redis stopped: their text so far is kept
    assert (streaming["text"].str.len() > 0).all()
    assert df.attrs["nbchat"]["stopped"] is False


def test_a_stop_the_gateway_never_confirms_says_so(gateway: EmbeddedGateway) -> None:
    proxy = FaultyProxy(gateway.gateway.port, seed=3, slice_bytes=None).start()
    stop = threading.Event()

    def stall_then_stop() -> None:
        wait_until(lambda: any(s.tasks for s in list(gateway.gateway.sessions.values())), "a reply")
        proxy.stall(3 * TIMEOUT)  # open but dead: the stops never reach the gateway
        stop.set()

    staller = threading.Thread(target=stall_then_stop)
    staller.start()
    began = time.monotonic()
    try:
        df = nbchat.batch(
            [f"p{i}" for i in range(4)], "demo", url=proxy.url(), token="t", concurrency=2,
            progress=False, stop=stop, tokens_per_s=20,
        )  # fmt: skip
        took = time.monotonic() - began
    finally:
        staller.join()
        proxy.close()
    assert took < STOP_GRACE_S + CLOSE_S
    assert list(df["finish"]) == ["stopped", "stopped", "not_run", "not_run"]
    assert list(df["error_code"][:2]) == ["stop_unconfirmed"] * 2
    assert df["error"][:2].str.startswith("stop not confirmed by the gateway").all()


def test_the_stop_flag_says_whether_the_stop_cut_anything_short(
    gateway: EmbeddedGateway,
) -> None:
    class AfterTheLastReply:
        """Says stop once the gateway has ended every reply: too late to cut any."""

        def is_set(self) -> bool:
            wait_until(
                lambda: (
                    [
                        p.done is not None
                        for live in list(gateway.gateway.sessions.values())
                        for p in live.state.replies.values()
                    ].count(True)
                    == 2
                ),
                "every reply ended",
            )
            return True

    df = run(gateway, ["a", "b"], "demo", stop=AfterTheLastReply(), progress=False)
    assert isinstance(df, pandas.DataFrame)
    assert list(df["finish"]) == ["stop", "stop"]
    assert df.attrs["nbchat"]["stopped"] is False


def test_tokens_per_s_counts_what_streams_before_any_reply_ends(
    gateway: EmbeddedGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    run(gateway, ["a", "b"], "demo", stop=stop, tokens_per_s=20)  # 5 s replies: stopped
    rates = re.findall(r"done=0, failed=0, ([\d,]+) tokens/s", capsys.readouterr().err)
    assert max(int(rate.replace(",", "")) for rate in rates) > 0


def test_fewer_sessions_than_planned_are_reported_as_they_ran(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway = EmbeddedGateway(Gateway(token="t", limits=GatewayLimits(sessions=2))).start()
    try:
        with pytest.warns(RuntimeWarning) as warned:
            df = nbchat.batch(
                [f"p{i}" for i in range(16)], "demo", url=gateway.url, token="t",
                concurrency=16, tokens_per_s=0,
            )  # fmt: skip
    finally:
        gateway.close()
    assert set(df["finish"]) == {"stop"}
    figures = df.attrs["nbchat"]
    assert (figures["concurrency"], figures["sessions"]) == (8, 2)
    (warning,) = [w for w in warned if str(w.message).startswith("nbchat.batch:")]
    assert "8 replies at once over 2 gateway sessions instead of 16" in str(warning.message)
    assert "serves 2 sessions already" in str(warning.message)  # the gateway's reason
    assert warning.filename == __file__  # it points at the call
    assert "batch: 8 at once over 2 sessions of 4" in capsys.readouterr().err


def test_carried_columns_keep_their_dtypes_and_the_index_its_labels(
    gateway: EmbeddedGateway,
) -> None:
    source = pandas.DataFrame(
        {
            "n": pandas.array([1, None], dtype="Int64"),
            "q": ["alpha", "beta"],
            "c": pandas.Categorical(["x", "y"]),
            "b": pandas.array([True, None], dtype="boolean"),
            "t": pandas.to_datetime(["2024-01-01", "2024-01-02"]).tz_localize("UTC"),
        },
        index=pandas.Index(["w", "x"], name="key"),
    )
    df = run(gateway, source, ["demo", "demo"], column="q", progress=False)
    assert isinstance(df, pandas.DataFrame)
    carried = source.drop(columns="q")
    assert list(df.columns) == [*carried.columns, *BATCH_COLUMNS]
    assert (df.dtypes[carried.columns] == carried.dtypes).all()
    assert list(df.index) == ["w", "w", "x", "x"]
    assert df.index.name == "key"
    assert df["n"].isna().tolist() == [False, False, True, True]
    assert list(df["prompt"]) == ["alpha", "alpha", "beta", "beta"]
    series = run(gateway, pandas.Series(["a", "b"], index=[100, 200]), "demo", progress=False)
    assert isinstance(series, pandas.DataFrame)
    assert list(series.index) == [100, 200]
    listed = run(gateway, ["a", "b"], ["demo", "demo"], progress=False)
    assert isinstance(listed, pandas.DataFrame)
    assert list(listed.index) == [0, 1, 2, 3]


@pytest.mark.parametrize("columns", [["q", "k", "k"], ["q", "q", "k"]], ids=["carried", "prompts"])
def test_repeated_column_labels_are_refused(gateway: EmbeddedGateway, columns: list[str]) -> None:
    source = pandas.DataFrame([["hi", "yo", "x"]], columns=columns)
    with pytest.raises(ValueError, match="repeated column labels"):
        run(gateway, source, "demo", column="q")
    assert not gateway.gateway.sessions


def test_the_batch_module_is_not_shadowed_by_the_function() -> None:
    module = importlib.import_module("nbchat.batching")
    assert inspect.ismodule(module)
    assert nbchat.batch is module.batch


def test_batch_refuses_to_run_on_the_client_loop(gateway: EmbeddedGateway) -> None:
    async def from_the_loop() -> object:
        return run(gateway, ["x"], "demo", progress=False)

    future = asyncio.run_coroutine_threadsafe(from_the_loop(), client_loop())
    with pytest.raises(RuntimeError, match="cannot be called on nbchat's own client loop"):
        future.result(TIMEOUT)
