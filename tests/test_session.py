"""session.py: seq numbering, pause holding, replay and duplicate-free assembly."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbchat.protocol import (
    Delta,
    Done,
    Error,
    Paused,
    Resumed,
    ServerFrame,
    Snapshot,
    Started,
    Welcome,
)
from nbchat.session import (
    TRANSITIONS,
    ClientSession,
    GatewaySession,
    LogLimits,
    ReplyEnd,
    ReplyState,
    SessionError,
)


def seqs(events: list[ServerFrame]) -> list[int]:
    return [e.seq for e in events]  # type: ignore[union-attr]


def test_seq_grows_by_one_across_replies() -> None:
    s = GatewaySession("s")
    events = s.start("a", "demo") + s.delta("a", "x") + s.start("b", "demo")
    events += s.delta("b", "y") + s.finish("a", "stop") + s.finish("b", "length")
    assert seqs(events) == [1, 2, 3, 4, 5, 6]
    assert s.last_seq == 6


def test_pause_holds_text_and_resume_releases_it_once() -> None:
    s = GatewaySession("s")
    s.start("a", "demo")
    s.delta("a", "one ")
    assert s.pause("a") == [Paused(seq=3, reply="a")]
    assert s.delta("a", "two ") == []
    assert s.delta("a", "three") == []
    assert s.resume("a") == [Resumed(seq=4, reply="a"), Delta(seq=5, reply="a", text="two three")]
    assert s.resume("a") == []  # a second resume has nothing to release


def test_natural_end_while_paused_waits_for_resume() -> None:
    s = GatewaySession("s")
    s.start("a", "demo")
    s.pause("a")
    s.delta("a", "held")
    assert s.finish("a", "stop", usage={"completion_tokens": 1}) == []
    assert s.replies["a"].state is ReplyState.PAUSED
    events = s.resume("a")
    assert [e.type for e in events] == ["resumed", "delta", "done"]
    assert events[-1] == Done(seq=5, reply="a", finish="stop", usage={"completion_tokens": 1})


def test_stop_while_paused_releases_held_text_then_ends() -> None:
    s = GatewaySession("s")
    s.start("a", "demo")
    s.pause("a")
    s.delta("a", "partial")
    events = s.finish("a", "stopped")
    assert events == [
        Delta(seq=3, reply="a", text="partial"),
        Done(seq=4, reply="a", finish="stopped"),
    ]
    assert s.replies["a"].state is ReplyState.STOPPED


def test_first_end_wins_and_nothing_follows_it() -> None:
    s = GatewaySession("s")
    s.start("a", "demo")
    s.finish("a", "stop")
    assert s.finish("a", "stopped") == []
    with pytest.raises(SessionError, match="already finished"):
        s.delta("a", "late")
    with pytest.raises(SessionError, match="cannot go from done to paused"):
        s.pause("a")


def test_error_end_carries_a_sequenced_error_frame() -> None:
    s = GatewaySession("s")
    s.start("a", "nope")
    events = s.finish("a", "error", error=Error(code="unknown_model", message="no such model"))
    assert events == [
        Error(code="unknown_model", message="no such model", reply="a", seq=2),
        Done(seq=3, reply="a", finish="error"),
    ]


def test_unknown_and_reused_reply_ids_are_refused() -> None:
    s = GatewaySession("s")
    with pytest.raises(SessionError, match="unknown reply 'zz'"):
        s.pause("zz")
    s.start("a", "demo")
    with pytest.raises(SessionError, match="already used"):
        s.start("a", "demo")


def test_final_states_have_no_successors() -> None:
    for state, successors in TRANSITIONS.items():
        assert (not successors) == state.finished


def test_replay_returns_exactly_the_events_after_a_seq() -> None:
    s = GatewaySession("s")
    s.start("a", "demo")
    for word in ["a", "b", "c"]:
        s.delta("a", word)
    replay = s.replay(2)
    assert not replay.gap
    assert seqs(replay.events) == [3, 4]
    assert s.replay(4).events == []
    with pytest.raises(SessionError, match="ahead of this session"):
        s.replay(5)


def test_replay_sends_snapshots_when_the_log_is_trimmed() -> None:
    s = GatewaySession("s", limits=LogLimits(max_events=3))
    s.start("a", "demo")
    s.start("b", "demo")
    s.delta("b", "old")
    s.finish("b", "stop")
    for word in ["w1 ", "w2 ", "w3 ", "w4"]:
        s.delta("a", word)
    s.pause("a")
    s.delta("a", " held")
    replay = s.replay(1)
    assert replay.gap
    assert replay.events == []
    assert replay.snapshots == [
        Snapshot(reply="a", text="w1 w2 w3 w4", paused=True),  # held text is not sent yet
        Snapshot(reply="b", text="old", finish="stop"),
    ]
    assert s.replay(s.last_seq - 2).gap is False  # a recent point is still in the log


def test_log_is_trimmed_by_age_with_the_clock_it_is_given() -> None:
    now = [0.0]
    s = GatewaySession("s", limits=LogLimits(max_age_s=10), clock=lambda: now[0])
    s.start("a", "demo")
    s.delta("a", "early")
    now[0] = 30.0
    s.delta("a", "late")
    replay = s.replay(0)
    assert replay.gap
    assert replay.snapshots == [Snapshot(reply="a", text="earlylate")]
    assert seqs(s.replay(2).events) == [3]


def test_a_client_ends_exact_after_a_gap() -> None:
    gateway = GatewaySession("s", limits=LogLimits(max_events=1))
    client = ClientSession()
    client.open("a")
    for event in gateway.start("a", "demo") + gateway.delta("a", "seen "):
        client.receive(event)
    missed = gateway.delta("a", "missed ") + gateway.delta("a", "also missed")
    assert missed  # the client never gets these: the link was down
    replay = gateway.replay(client.last_seq)
    assert replay.gap
    client.receive(
        Welcome(session="s", last_seq=gateway.last_seq, models=("demo",), resumed=True, server="t")
    )
    client.receive(Error(code="resume_gap", message="gap"))
    for snapshot in replay.snapshots:
        client.receive(snapshot)
    for event in gateway.delta("a", " live") + gateway.finish("a", "stop"):
        assert client.receive(event)
    assert client.replies["a"].text == "seen missed also missed live"
    assert client.replies["a"].state is ReplyState.DONE


def test_log_is_bounded_by_bytes_too() -> None:
    s = GatewaySession("s", limits=LogLimits(max_bytes=1000))
    s.start("a", "demo")
    for _ in range(50):
        s.delta("a", "x" * 100)
    assert s.replay(s.last_seq - 5).gap is False
    assert s.replay(0).gap is True


def test_client_applies_each_seq_once() -> None:
    c = ClientSession()
    c.open("a")
    frames: list[ServerFrame] = [
        Started(seq=1, reply="a", model="demo"),
        Delta(seq=2, reply="a", text="hi "),
        Delta(seq=3, reply="a", text="there"),
    ]
    assert [c.receive(f) for f in frames] == [True, True, True]
    assert [c.receive(f) for f in frames[1:]] == [False, False]
    assert c.duplicates == 2
    assert c.replies["a"].text == "hi there"
    assert c.receive(Done(seq=4, reply="a", finish="stop"))
    assert c.replies["a"].state is ReplyState.DONE


def test_client_ignores_unsequenced_errors_about_a_reply() -> None:
    c = ClientSession()
    c.open("a")
    c.receive(Error(code="bad_request", message="cannot pause", reply="a"))
    assert c.replies["a"].error is None
    c.receive(Error(code="upstream_error", message="boom", reply="a", seq=1))
    assert c.replies["a"].error == "boom"


# --- property: any interleaving yields each reply's text exactly once, in order ------

REPLIES = ["a", "b", "c"]
operation = st.one_of(
    st.tuples(st.just("delta"), st.sampled_from(REPLIES), st.text(min_size=1, max_size=4)),
    st.tuples(st.just("pause"), st.sampled_from(REPLIES)),
    st.tuples(st.just("resume"), st.sampled_from(REPLIES)),
    st.tuples(
        st.just("finish"),
        st.sampled_from(REPLIES),
        st.sampled_from(["stop", "length", "stopped", "error"]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(operation, max_size=60),
    log_size=st.sampled_from([2, 5, 20, 10_000]),
    data=st.data(),
)
def test_any_interleaving_assembles_each_reply_exactly_once(
    ops: list[tuple[str, ...]], log_size: int, data: st.DataObject
) -> None:
    # Small logs force resume gaps, answered with snapshots.
    gateway = GatewaySession("s", limits=LogLimits(max_events=log_size))
    stream: list[ServerFrame] = []
    generated = {r: "" for r in REPLIES}
    for r in REPLIES:
        stream += gateway.start(r, "demo")
    for op in ops:
        kind, reply = op[0], op[1]
        try:
            if kind == "delta":
                stream += gateway.delta(reply, op[2])
                generated[reply] += op[2]
            elif kind == "pause":
                stream += gateway.pause(reply)
            elif kind == "resume":
                stream += gateway.resume(reply)
            else:
                stream += gateway.finish(reply, op[2])  # type: ignore[arg-type]
        except SessionError:
            pass  # an operation the state does not allow changes nothing
    for r in REPLIES:  # let every reply end, releasing whatever is held
        stream += gateway.resume(r) if gateway.replies[r].state is ReplyState.PAUSED else []
        stream += gateway.finish(r, "stop")

    client = ClientSession()
    for r in REPLIES:
        client.open(r)
    delivered = 0
    while delivered < len(stream):
        action = data.draw(st.sampled_from(["next", "next", "duplicate", "replay"]))
        if action == "next":
            client.receive(stream[delivered])
            delivered += 1
        elif action == "duplicate" and delivered:
            client.receive(stream[data.draw(st.integers(0, delivered - 1))])
        elif action == "replay":
            # A client resuming from the last seq it has seen, as the real one does.
            replay = gateway.replay(client.last_seq)
            client.receive(
                Welcome(session="s", last_seq=gateway.last_seq, models=(), resumed=True, server="t")
            )
            if replay.gap:
                client.receive(Error(code="resume_gap", message="gap"))
            for frame in [*replay.events, *replay.snapshots]:
                client.receive(frame)
            delivered = max(delivered, client.last_seq)

    assert client.last_seq == gateway.last_seq
    for r in REPLIES:
        assert client.replies[r].text == generated[r]
        assert client.replies[r].state.finished
        assert gateway.replies[r].held == []


# --- restoring a session from a shared store's log ---------------------------------


@settings(max_examples=200)
@given(
    st.lists(st.sampled_from(["start", "delta", "pause", "resume", "finish", "error"]), max_size=60)
)
def test_a_session_restored_from_its_log_is_the_session_that_wrote_it(ops: list[str]) -> None:
    # A gateway taking over a session rebuilds it from the events the store kept;
    # it must number on from the same seq and know every reply as the writer did.
    session = GatewaySession("s")
    events: list[ServerFrame] = []
    replies: list[str] = []
    for n, op in enumerate(ops):
        open_ = [r for r in replies if not session.replies[r].state.finished]
        if op == "start" or not open_:
            replies.append(f"r{n}")
            events += session.start(f"r{n}", "demo")
            continue
        reply = open_[n % len(open_)]
        if op == "delta":
            events += session.delta(reply, f"t{n} ")
        elif op == "pause":
            events += session.pause(reply)
        elif op == "resume":
            events += session.resume(reply)
        elif op == "finish":
            events += session.finish(reply, "stop")
        else:
            events += session.finish(
                reply, "error", error=Error(code="upstream_error", message="x")
            )
    restored = GatewaySession.restore("s", events, last_seq=session.last_seq)
    assert restored.last_seq == session.last_seq
    assert set(restored.replies) == set(session.replies)
    for reply, progress in session.replies.items():
        again = restored.replies[reply]
        assert again.sent_text == progress.sent_text
        assert again.state.finished == progress.state.finished
        assert again.done == progress.done
    assert sorted(restored.unfinished()) == sorted(
        r for r, p in session.replies.items() if not p.state.finished
    )
    # And it goes on numbering where the writer stopped.
    assert restored.start("next", "demo")[0].seq == session.last_seq + 1  # type: ignore[union-attr]


def test_a_restored_session_knows_open_replies_whose_start_was_trimmed() -> None:
    session = GatewaySession.restore("s", [], last_seq=40, open_replies={"r-old"})
    assert session.unfinished() == ["r-old"]
    ended = session.finish("r-old", "error", error=Error(code="gateway_lost", message="gone"))
    assert [(e.type, e.seq) for e in ended] == [("error", 41), ("done", 42)]  # type: ignore[union-attr]


def welcome(session: str, resumed: bool) -> Welcome:
    return Welcome(session=session, last_seq=0, models=("demo",), resumed=resumed, server="t")


def took(client: ClientSession, frame: ServerFrame) -> list[ReplyEnd]:
    """What ``frame`` ends, once the client took it."""
    client.receive(frame)
    return client.ended(frame)


def test_a_reply_ends_on_its_done_with_the_error_its_view_assembled() -> None:
    c = ClientSession()
    c.receive(welcome("s", resumed=False))
    c.open("a")
    assert took(c, Started(seq=1, reply="a", model="demo")) == []
    assert took(c, Delta(seq=2, reply="a", text="x")) == []
    limited = Error(code="rate_limited", message="slow down", reply="a", seq=3, retry_after=2.0)
    assert took(c, limited) == []
    assert c.replies["a"].retry_after == 2.0
    assert took(c, Done(seq=4, reply="a", finish="error")) == [
        ReplyEnd("a", "error", "slow down", "rate_limited")
    ]
    c.open("b")
    assert took(c, Snapshot(reply="b", text="y", paused=False, finish=None)) == []
    assert took(c, Snapshot(reply="b", text="yz", paused=False, finish="stop")) == [
        ReplyEnd("b", "stop")
    ]


def test_an_unsequenced_error_ends_only_a_reply_whose_start_it_refused() -> None:
    c = ClientSession()
    c.receive(welcome("s", resumed=False))
    c.open("refused")
    assert took(c, Error(code="bad_request", message="no", reply="refused")) == [
        ReplyEnd("refused", "error", "no", "bad_request")
    ]
    c.open("running")
    c.receive(Started(seq=1, reply="running", model="demo"))
    # A refused pause (or stop) of a reply that runs: it goes on.
    assert took(c, Error(code="bad_request", message="no pause", reply="running")) == []
    assert took(c, Error(code="busy", message="session-level")) == []


def test_the_store_going_away_ends_the_reply_it_names_or_every_reply() -> None:
    c = ClientSession()
    c.receive(welcome("s", resumed=False))
    for reply in ("a", "b", "c"):
        c.open(reply)
    c.receive(Started(seq=1, reply="a", model="demo"))
    c.receive(Started(seq=2, reply="b", model="demo"))
    down = "the session store is unreachable"
    assert took(c, Error(code="store_unavailable", message=down, reply="a")) == [
        ReplyEnd("a", "error", down, "store_unavailable")
    ]
    c.forget("a")
    assert took(c, Error(code="store_unavailable", message=down)) == [
        ReplyEnd("b", "error", down, "store_unavailable"),
        ReplyEnd("c", "error", down, "store_unavailable"),  # started or not
    ]


def test_a_new_session_ends_the_replies_begun_in_the_old_one_only() -> None:
    c = ClientSession()
    c.receive(welcome("s", resumed=False))
    c.open("begun")
    c.open("unanswered")
    c.receive(Started(seq=1, reply="begun", model="demo"))
    assert took(c, welcome("s", resumed=True)) == []
    # The start never answered is sent again in the new session: it goes on.
    assert c.ended(welcome("s2", resumed=False), lost="gone") == [
        ReplyEnd("begun", "error", "gone", "session_lost")
    ]


def test_the_logged_deltas_are_out_of_the_garbage_collectors_reach() -> None:
    # A busy gateway holds millions of logged deltas; each full collection walked them
    # all (pauses of 200 ms and more at 200 sessions in benchmarks/bench_load.py).
    import gc

    session = GatewaySession("s-gc")
    session.start("r-gc", "demo")
    gc.collect()
    before = len(gc.get_objects())
    sent = [session.delta("r-gc", f" word{i}")[0] for i in range(5_000)]
    del sent
    gc.collect()
    assert len(gc.get_objects()) - before < 1_000  # 10,000 when each delta was an object
    replayed = session.replay(0).events
    assert len(replayed) == 5_001  # started, then every delta, whole again
    assert replayed[-1] == Delta(seq=5_001, reply="r-gc", text=" word4999")
