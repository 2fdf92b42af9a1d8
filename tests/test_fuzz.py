"""Fuzzing the anchor's inputs with Hypothesis: no input may cause a 5xx, an unhandled exception or a
dead control plane, and a bad input changes nothing for anyone else.

Targets: MQTT command messages (parser, and a real Mosquitto barrage), HTTP command bodies (schemas,
and a live server), SDP offers (parser and checks) and checkpoint files (loaders). Each is bounded
in examples so the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchor.core.commands import COMMANDS, CommandError, build, decode_object
from engines.errors import WeightsError
from engines.face.mouth_gan import load_mouth_gan
from engines.weights import project_weights_dir
from streams.mqtt import parse_message
from streams.server import RequestError, check_sdp, parse_offer_json
from tests.edge import Edge, served_anchor

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
FIELDS = ("text", "title", "body", "priority", "reason", "muted", "answer", "item", "on_air", "session")
command_like = st.fixed_dictionaries({}, optional={name: json_values for name in FIELDS}) | st.dictionaries(
    st.text(max_size=12), json_values, max_size=6
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=70),
        "sent_at": st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
        "ttl_s": st.floats(allow_nan=True) | st.integers(),
    },
)
payloads = (
    st.binary(max_size=300)
    | st.builds(lambda e, c: json.dumps({**c, **e}).encode(), envelopes, command_like)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth)
)
names = st.sampled_from(sorted(COMMANDS)) | st.text(max_size=20)


def refusal(call: Callable[[], object]) -> Exception | None:
    """None if ``call`` succeeds, the refusal if it raises one of ours; anything else fails the test."""
    try:
        call()
    except (CommandError, RequestError, WeightsError) as exc:
        return exc
    return None


@FUZZ
@given(names, payloads)
def test_mqtt_messages_parse_or_are_refused_with_a_command_error(name: str, payload: bytes) -> None:
    refused = refusal(lambda: parse_message(name, payload, 16 * 1024, time.time()))
    assert refused is None or isinstance(refused, CommandError)


@FUZZ
@given(st.sampled_from(sorted(COMMANDS)), payloads)
def test_http_command_bodies_build_or_are_refused_with_a_command_error(name: str, body: bytes) -> None:
    refused = refusal(lambda: build(COMMANDS[name], decode_object(body)))
    assert refused is None or isinstance(refused, CommandError)


def _offer() -> str:
    return (Path(__file__).parent / "data" / "offer.sdp").read_text()


sdp_lines = st.lists(
    st.sampled_from(_offer().splitlines())
    | st.text(max_size=60).map(lambda t: f"a={t}")
    | st.text(alphabet="vosctmab=0123456789 .:-/", max_size=40),
    max_size=60,
)


@FUZZ
@given(sdp_lines, st.binary(max_size=200))
def test_offers_parse_or_are_refused_with_a_400(lines: list[str], raw: bytes) -> None:
    for text in ("\r\n".join(["v=0", *lines]) + "\r\n", "\r\n".join(lines)):
        refused = refusal(lambda text=text: check_sdp(text))  # type: ignore[misc]
        assert refused is None or (isinstance(refused, RequestError) and refused.status == 400)
    refused = refusal(lambda: parse_offer_json(raw))
    assert refused is None or (isinstance(refused, RequestError) and refused.status == 400)


# -- a live server, driven from this thread while its loop runs in another ----------------------


@pytest.fixture(scope="module")
def live_edge() -> Iterator[Edge]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz:server", daemon=True)
    thread.start()
    served = served_anchor(256, offers_per_minute=1_000_000)  # every input reaches its handler
    try:
        yield asyncio.run_coroutine_threadsafe(served.__aenter__(), loop).result(60)
    finally:
        asyncio.run_coroutine_threadsafe(served.__aexit__(None, None, None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _post(url: str, body: bytes, content_type: str = "application/json") -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


PATHS = ("/offer", "/say", "/ask", "/interrupt", "/news", "/whep/main")
offers = sdp_lines.map(lambda lines: "\r\n".join(["v=0", *lines]) + "\r\n")
bodies = payloads | offers.map(lambda sdp: json.dumps({"sdp": sdp, "type": "offer"}).encode())
#: Offers the fuzzer got answered (a peer exists until it connects or times out).
ANSWERED: list[str] = []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(PATHS), bodies | offers.map(str.encode))
def test_the_live_server_never_answers_5xx(live_edge: Edge, path: str, body: bytes) -> None:
    content_type = "application/sdp" if path.startswith("/whep") else "application/json"
    status = _post(f"{live_edge.url}{path}", body, content_type)
    assert status < 500, (path, body[:200], status)
    if path in ("/offer", "/whep/main") and status in (200, 201):
        ANSWERED.append(path)


def test_after_the_fuzzing_the_server_serves_and_holds_no_stray_viewer(live_edge: Edge) -> None:
    assert _post(f"{live_edge.url}/say", json.dumps({"text": "still on air"}).encode()) == 202
    assert len(live_edge.server.peers) <= len(ANSWERED), "only answered offers hold a viewer"
    with urllib.request.urlopen(f"{live_edge.url}/healthz", timeout=10) as response:
        assert json.loads(response.read())["peers"] == 0


# -- checkpoints -----------------------------------------------------------------------------------


def _shipped_mouth() -> bytes:
    return (project_weights_dir() / "mouth_gan.pt").read_bytes()


def _rewritten(change: str, key_index: int) -> bytes:
    data = torch.load(io.BytesIO(_shipped_mouth()), weights_only=True)
    state: dict[str, torch.Tensor] = data["state_dict"]
    key = sorted(state)[key_index % len(state)]
    tensor = state[key]
    if change == "nan":
        state[key] = torch.full_like(tensor.float(), float("nan"))
    elif change == "inf":
        state[key] = torch.full_like(tensor.float(), float("inf"))
    elif change == "int":
        state[key] = torch.zeros(tensor.shape, dtype=torch.int64)
    elif change == "huge":
        state[key] = torch.zeros((1,) * max(1, tensor.dim() - 1) + (1 << 16,), dtype=torch.float16)
    elif change == "missing":
        del state[key]
    elif change == "extra":
        state[key + ".bogus"] = tensor
    out = io.BytesIO()
    torch.save(data, out)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["truncate", "flip", "nan", "inf", "int", "huge", "missing", "extra"]),
    st.integers(0, 10_000_000),
)
def test_damaged_checkpoints_are_refused_with_a_weights_error(change: str, where: int) -> None:
    if change in ("truncate", "flip"):
        raw = bytearray(_shipped_mouth())
        at = where % len(raw)
        if change == "truncate":
            raw = raw[:at]
        else:
            raw[at] ^= 0xFF
        blob = bytes(raw)
    else:
        blob = _rewritten(change, where)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mouth_gan.pt"
        path.write_bytes(blob)
        if isinstance(refusal(lambda: load_mouth_gan(path)), WeightsError):
            return
    # Only a flipped byte may leave a loadable file (one inside a tensor's data): then it still loads whole.
    assert change == "flip", f"a checkpoint with {change} was accepted"
