"""Figures as pictures: a matplotlib figure attached to a message reaches a model that
takes images as an image part (OpenAI's ``image_url``, Anthropic's ``image`` block,
``images`` for a Python function, the demo's acknowledgement), and a model that does
not gets the description with a note saying so, over a real gateway on loopback
against the replay server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nbchat import Chat
from nbchat.context import PICTURE_LEFT_OUT, PICTURE_NOT_SENT, PICTURE_SENT, describe
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.gateway.providers import DemoProvider
from nbchat.gateway.providers.anthropic_messages import AnthropicProvider
from nbchat.gateway.providers.openai_compat import OpenAICompatProvider
from nbchat.gateway.server import ModelRoute
from nbchat.protocol import ChatMessage, ProtocolError, Start, decode_client, encode

from replay_server import Replay
from timeouts import TIMEOUT

TOKEN = "t"


def noise_figure() -> Any:
    """A picture that compresses badly: about 250 kB as a PNG data URI."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8))
    figure.add_subplot().imshow(np.random.default_rng(0).random((300, 400)))
    return figure


def sales_figure() -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.8))
    figure.add_subplot().plot([1, 2, 3], [3, 1, 2])
    return figure


@pytest.fixture
def gateway(replay: Replay) -> Iterator[EmbeddedGateway]:
    openai = OpenAICompatProvider(base_url=replay.base_url, api_key="sk-test")
    claude = AnthropicProvider(base_url=f"http://127.0.0.1:{replay.port}", api_key="sk-ant")
    models = {
        "gpt-4o-mini": ModelRoute(openai, "gpt-4o-mini"),  # takes images, by its name
        "blind": ModelRoute(openai, "gpt-4o-mini", images=False),  # the config says not
        "claude": ModelRoute(claude, "claude-sonnet-4-6"),
        "demo": ModelRoute(DemoProvider(), "demo"),
    }
    embedded = EmbeddedGateway(Gateway(models=models, token=TOKEN)).start()
    yield embedded
    embedded.close()


def last_request(replay: Replay) -> dict[str, Any]:
    paths = ("/v1/chat/completions", "/v1/messages")
    bodies = [r["body"] for r in replay.requests if r["path"] in paths]
    return bodies[-1]


def test_the_welcome_names_the_models_that_take_images(gateway: EmbeddedGateway) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="demo") as chat:
        chat.send("hi").wait(TIMEOUT)
        assert chat._conversation.image_models == {"gpt-4o-mini", "claude", "demo"}


def test_an_openai_model_that_takes_images_gets_an_image_url_part(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    figure = sales_figure()
    picture = describe(figure, "fig")["image"]
    with Chat(url=gateway.url, token=TOKEN, model="gpt-4o-mini") as chat:
        reply = chat.send("what does this show?", context=[figure]).wait(TIMEOUT)
        assert reply.finish == "stop"
        user = last_request(replay)["messages"][-1]
        text, image = user["content"]
        assert text["type"] == "text"
        assert text["text"].startswith("what does this show?")
        assert PICTURE_SENT in text["text"]
        assert image == {"type": "image_url", "image_url": {"url": picture}}
        # The picture is kept with the message: the next request carries it again.
        chat.send("and now?").wait(TIMEOUT)
        first = last_request(replay)["messages"][0]
        assert first["content"][1]["image_url"]["url"] == picture


def test_an_anthropic_model_gets_an_image_block(gateway: EmbeddedGateway, replay: Replay) -> None:
    figure = sales_figure()
    with Chat(url=gateway.url, token=TOKEN, model="claude") as chat:
        assert chat.send("describe", context=[figure]).wait(TIMEOUT).finish == "stop"
        text, image = last_request(replay)["messages"][-1]["content"]
        assert text["type"] == "text"
        assert image["type"] == "image"
        assert image["source"]["type"] == "base64"
        assert image["source"]["media_type"] == "image/png"
        assert image["source"]["data"] == describe(figure, "f")["image"].split(",", 1)[1]


def test_a_model_that_takes_no_images_gets_the_description_and_a_note(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="blind") as chat:
        assert chat.send("describe", context=[sales_figure()]).wait(TIMEOUT).finish == "stop"
        content = last_request(replay)["messages"][-1]["content"]
        assert isinstance(content, str)  # text only: no parts
        assert "A matplotlib figure." in content
        assert PICTURE_NOT_SENT in content
        assert "base64" not in content
        # The user hears of it too, on the attachment; the model does not read it.
        attached = chat.messages[0]["context"][0]
        assert attached["picture"] == "picture not sent: blind takes no images"
        assert "picture not sent" not in attached["summary"]
        assert "picture not sent:" not in content


def test_a_gateway_drops_pictures_a_client_sends_a_model_without_eyes(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    """A client that sends pictures anyway (an old one, or another program): the
    gateway gives the model only the text."""
    with Chat(url=gateway.url, token=TOKEN, model="blind") as chat:
        chat._conversation.image_models.add("blind")  # this client believes it takes them
        assert chat.send("describe", context=[sales_figure()]).wait(TIMEOUT).finish == "stop"
        assert isinstance(last_request(replay)["messages"][-1]["content"], str)


def test_the_demo_says_what_picture_it_received(gateway: EmbeddedGateway) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="demo") as chat:
        reply = chat.send("look at this", context=[sales_figure()]).wait(TIMEOUT)
        assert "I received 1 picture (PNG, 640 by 480 pixels)" in reply.text


def test_a_function_model_receives_the_pictures() -> None:
    seen: list[dict[str, Any]] = []

    def echo(messages: list[dict[str, Any]], **params: Any) -> str:
        seen.extend(messages)
        return f"{len(messages[-1].get('images', []))} pictures"

    figure = sales_figure()
    with Chat(model=echo) as chat:
        reply = chat.send("here", context=[figure]).wait(TIMEOUT)
        assert reply.text == "1 pictures"
        assert seen[-1]["images"] == [describe(figure, "f")["image"]]


def test_images_are_refused_on_other_roles_and_when_not_data_uris() -> None:
    start = Start(reply="r", model="m", messages=(ChatMessage("user", "x", images=("x",)),))
    with pytest.raises(ProtocolError, match="data:image"):
        encode(start)
    text = encode(Start(reply="r", model="m", messages=(ChatMessage("user", "x"),)))
    for bad in (
        '["https://example.com/a.png"]',
        '["data:image/svg+xml;base64,PHN2Zz4="]',
        '"data:image/png;base64,AAAA"',
    ):
        frame = text.replace('"content":"x"', f'"content":"x","images":{bad}')
        with pytest.raises(ProtocolError, match="images"):
            decode_client(frame)
    frame = text.replace(
        '"role":"user","content":"x"',
        '"role":"assistant","content":"x","images":["data:image/png;base64,AAAA"]',
    )
    with pytest.raises(ProtocolError, match="only user messages"):
        decode_client(frame)
    good = text.replace('"content":"x"', '"content":"x","images":["data:image/png;base64,AAAA"]')
    decoded = decode_client(good)
    assert isinstance(decoded, Start)
    assert decoded.messages[0].images == ("data:image/png;base64,AAAA",)


def test_a_picture_is_saved_and_loaded_with_its_conversation(
    gateway: EmbeddedGateway, tmp_path: Any
) -> None:
    figure = sales_figure()
    picture = describe(figure, "fig")["image"]
    with Chat(url=gateway.url, token=TOKEN, model="demo") as chat:
        chat.send("keep this", context=[figure]).wait(TIMEOUT)
        path = chat.save(tmp_path / "chat.json")
        frame = chat.to_dataframe()
    with Chat.load(path, url=gateway.url, token=TOKEN, model="demo") as again:
        assert again.messages[0]["context"][0]["image"] == picture
        # The conversation goes on from the loaded file.
        reply = again.send("and again?").wait(TIMEOUT)
        assert "turn 2" in reply.text
    assert frame["context"][0][0]["image"] == picture


def test_the_pictures_fate_follows_the_model_in_use(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    with Chat(url=gateway.url, token=TOKEN, model="blind") as chat:
        chat.send("describe", context=[sales_figure()]).wait(TIMEOUT)
        chat.model = "gpt-4o-mini"
        chat.send("now?").wait(TIMEOUT)
        first = last_request(replay)["messages"][0]["content"]
        assert first[1]["type"] == "image_url"
        assert PICTURE_SENT in first[0]["text"]
        assert "not sent" not in first[0]["text"]  # the model is told one thing
        assert chat.messages[0]["context"][0]["picture"] == "picture sent to gpt-4o-mini"


def test_a_long_conversation_leaves_its_picture_out_rather_than_fail(
    gateway: EmbeddedGateway, replay: Replay
) -> None:
    """Text and pictures share the gateway's frame: as the text grows, the picture
    stays behind (and the model and the user are told) instead of the request failing
    as too large."""
    with Chat(url=gateway.url, token=TOKEN, model="gpt-4o-mini") as chat:
        figure = noise_figure()
        assert len(describe(figure, "f")["image"]) > 200_000
        chat.send("keep this", context=[figure]).wait(TIMEOUT)
        for i in range(26):
            reply = chat.send(f"{i} " + "words " * 5_000).wait(TIMEOUT)
            assert (reply.finish, reply.error) == ("stop", None)
        first = last_request(replay)["messages"][0]["content"]
        assert isinstance(first, str)
        assert PICTURE_LEFT_OUT in first
        assert chat.messages[0]["context"][0]["picture"] == (
            "picture not sent: no room left in the request"
        )


def test_a_function_registered_after_connecting_gets_pictures() -> None:
    got: list[int] = []

    def first(messages: list[dict[str, Any]], **params: Any) -> str:
        return "one"

    def second(messages: list[dict[str, Any]], **params: Any) -> str:
        got.append(len(messages[-1].get("images", [])))
        return "two"

    with Chat(model=first) as chat:
        chat.send("hi").wait(TIMEOUT)
        chat.model = second
        chat.send("look", context=[sales_figure()]).wait(TIMEOUT)
        assert got == [1]
