"""Responders: the FAQ by real embeddings, an OpenAI-compatible LLM over real HTTP, and the stage."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from anchor.core.config import AnchorSettings, LlmSettings
from anchor.core.frames import SpeechStarted, Transcript
from anchor.core.graph import AUDIO_OUT, Graph
from anchor.core.runtime import Runtime
from anchor.core.session import EventStream
from anchor.core.stage import Stage
from anchor.responders.answer import Responder, ResponderError, Turn
from anchor.responders.faq import FaqError, FaqIndex, load_faq, parse_faq
from anchor.responders.llm import LlmAnswerer, LlmError, llm_answerer
from anchor.testing.fakes import FakeTTS
from engines.text.embedder import SentenceEmbedder
from tests.helpers import FAST


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder()


# -- faq -------------------------------------------------------------------------------------------


def test_the_bundled_faq_finds_reworded_questions_and_not_unrelated_ones(embedder: SentenceEmbedder) -> None:
    index = FaqIndex(load_faq(None), embedder.embed)
    name = index.match("hey, what's your name?")
    assert name.entry.question == "Who are you?"
    assert name.score > 0.55
    news = index.match("how can I get you to read my story")
    assert news.entry.question == "How do I send you a news story?"
    unrelated = index.match("how many moons does jupiter have")
    assert unrelated.score < 0.55, unrelated


def test_embeddings_are_unit_vectors_and_similar_texts_are_close(embedder: SentenceEmbedder) -> None:
    vectors = embedder.embed(["The bank raised rates.", "Interest rates went up.", "A cat sat on the mat."])
    assert vectors.shape == (3, 384)
    assert abs(float((vectors**2).sum(axis=1).max()) - 1) < 1e-5
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.3


def test_faq_files_in_every_format_load(tmp_path: Path) -> None:
    (tmp_path / "q.json").write_text(json.dumps([{"question": "Hours?", "answer": "Nine to five."}]))
    (tmp_path / "q.csv").write_text('question,answer\n"Where?","In the studio, downtown."\n')
    assert load_faq(tmp_path / "q.json")[0].answer == "Nine to five."
    assert load_faq(tmp_path / "q.csv")[0].answer == "In the studio, downtown."


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("f.toml", "[[faq]]\nquestion = 'a'\n", "f.toml: entry 1: answer must be non-empty text"),
        ("f.toml", "[[faq]]\nquestion='a'\nanswer='b'\nscore=1\n", r"entry 1: unknown fields \['score'\]"),
        ("f.toml", "[faqs]\n", r"unknown top-level keys \['faqs'\]"),
        ("f.toml", "question = ", "f.toml: not valid TOML"),
        ("f.toml", "", "f.toml: no questions"),
        ("f.json", '{"question": "a"}', "expected a list"),
        ("f.csv", "q,a\n1,2\n", r"the CSV header lacks \['answer', 'question'\]"),
        ("f.yaml", "a: b", "unknown FAQ format .yaml"),
        ("f.toml", "[[faq]]\nquestion='a'\nanswer='b'\nalternatives=[1]\n", "alternatives must be a list"),
    ],
)
def test_a_bad_faq_file_names_the_entry_and_field(name: str, text: str, message: str) -> None:
    with pytest.raises(FaqError, match=message):
        parse_faq(name, text)


# -- a fake OpenAI-compatible server, with fault knobs ---------------------------------------------------


@dataclass
class FakeLlm:
    tokens: list[str] = field(default_factory=lambda: ["The ", "markets ", "closed ", "higher", "."])
    fail_first: int = 0
    fail_status: int = 503
    hang: bool = False
    token_delay_s: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        if request.headers.get("Authorization") != "Bearer sk-test":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        if len(self.requests) <= self.fail_first:
            return web.json_response({"error": {"message": "overloaded"}}, status=self.fail_status)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if self.hang:
                await asyncio.sleep(3600)
            await response.write(b": keep-alive\n\n")
            await response.write(b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\n')
            for token in self.tokens:
                await asyncio.sleep(self.token_delay_s)
                chunk = {"choices": [{"delta": {"content": token}}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnected.set()
            raise
        return response


@contextlib.asynccontextmanager
async def llm_server(fake: FakeLlm) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def llm_settings(url: str, **changes: Any) -> LlmSettings:
    return LlmSettings(base_url=url, api_key="sk-test", model="tiny", **changes)  # type: ignore[arg-type]


async def collect(answerer: LlmAnswerer, question: str, history: tuple[Turn, ...] = ()) -> list[str]:
    try:
        return [piece async for piece in answerer.answer(question, history)]
    finally:
        await answerer.aclose()


async def test_the_answer_streams_token_by_token_with_the_conversation_so_far() -> None:
    fake = FakeLlm()
    async with llm_server(fake) as url:
        history = (Turn("user", "Hi"), Turn("assistant", "Hello."))
        pieces = await collect(LlmAnswerer(llm_settings(url)), "How did markets do?", history)
    assert pieces == fake.tokens
    (sent,) = fake.requests
    assert sent["stream"] is True and sent["model"] == "tiny"
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][-1]["content"] == "How did markets do?"


async def test_overload_before_the_first_token_is_retried() -> None:
    fake = FakeLlm(fail_first=2)
    async with llm_server(fake) as url:
        pieces = await collect(LlmAnswerer(llm_settings(url, retries=2)), "Q?")
    assert "".join(pieces) == "The markets closed higher."
    assert len(fake.requests) == 3


async def test_a_client_error_fails_at_once_with_the_servers_message() -> None:
    fake = FakeLlm(fail_first=5, fail_status=404)
    async with llm_server(fake) as url:
        with pytest.raises(LlmError, match=r"answered 404: .*overloaded"):
            await collect(LlmAnswerer(llm_settings(url, retries=3)), "Q?")
    assert len(fake.requests) == 1


async def test_a_silent_server_times_out_after_its_retries() -> None:
    fake = FakeLlm(hang=True)
    async with llm_server(fake) as url:
        settings = llm_settings(url, retries=1, first_token_timeout_s=0.2)
        with pytest.raises(LlmError, match="sent no token in time"):
            await collect(LlmAnswerer(settings), "Q?")
    assert len(fake.requests) == 2


async def test_nobody_listening_is_a_clear_error() -> None:
    settings = llm_settings("http://127.0.0.1:9/v1", retries=0)
    with pytest.raises(LlmError, match=r"127\.0\.0\.1:9/v1/chat/completions failed: ClientConnectorError"):
        await collect(LlmAnswerer(settings), "Q?")


# -- the responder stage in a session --------------------------------------------------------------


async def finished(events: EventStream, uid: str) -> str:
    async with asyncio.timeout(20):
        while (event := await events.next()) is not None:
            if event.kind == "utterance_finished" and event.utterance_id == uid:
                return event.detail
    raise AssertionError("session closed")


async def test_a_barge_in_cancels_the_llm_request_and_nothing_stale_plays() -> None:
    fake = FakeLlm(tokens=["word "] * 200, token_delay_s=0.05)
    async with llm_server(fake) as url:
        settings = FAST.model_copy(
            update={"responder": AnchorSettings().responder.model_copy(update={"llm": llm_settings(url)})}
        )
        responder = Responder({"llm": llm_answerer}, "llm")
        tts = FakeTTS("tts", ms_per_word=40)
        async with Runtime(settings) as rt:
            session = await rt.open_session(Graph().chain(responder, tts).link(tts, AUDIO_OUT))
            events = session.events()
            uid = await session.ask("Tell me everything.")
            async with asyncio.timeout(10):
                while (event := await events.next()) is not None and event.kind != "audio_started":
                    pass
            await session.push(SpeechStarted())
            assert await finished(events, uid) == "interrupted"
            async with asyncio.timeout(5):
                await fake.disconnected.wait()
        assert len(responder.memory) == 2
        assert responder.memory[1].text.startswith("word"), "what was said before the cut is remembered"
        assert len(responder.memory[1].text.split()) < 200


class Ears(Stage):
    """Stands in for the speech recognizer: emits the transcripts it is given."""

    accepts = (Transcript,)


async def test_a_final_transcript_is_answered_when_the_session_answers_viewers() -> None:
    responder = Responder({}, "off")
    tts = FakeTTS("tts", ms_per_word=40)
    graph = Graph().add(Ears()).chain(responder, tts).link(tts, AUDIO_OUT)
    async with Runtime(FAST) as rt:
        session = await rt.open_session(graph, answer_transcripts=True)
        events = session.events()
        await session.push(Transcript(text="Is it raining?", final=False, utterance_id="mic/1"))
        await session.push(Transcript(text="Is it raining?", final=True, utterance_id="mic/1"))
        kinds = []
        async with asyncio.timeout(5):
            while (event := await events.next()) is not None:
                kinds.append((event.kind, event.detail))
                if event.kind == "utterance_finished":
                    break
    assert kinds[:2] == [("transcript", "Is it raining?"), ("question", "Is it raining?")]
    assert kinds[-1] == ("utterance_finished", "done"), "answering 'off' ends the question silently"


async def test_an_unknown_responder_choice_is_refused() -> None:
    with pytest.raises(ResponderError, match="unknown responder 'gpt'; choose one of faq, off"):
        Responder({"faq": llm_answerer}, "gpt")
