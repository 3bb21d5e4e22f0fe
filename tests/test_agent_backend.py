"""The OpenAI-compatible backend against a real chat-completions server on 127.0.0.1 (no client mocking)."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import pytest
from chat_server import Reply, completion, serve
from PIL import Image

from eligen.agent.backends import OpenAIBackend
from eligen.agent.config import DEFAULT_MAX_PIXELS, MllmSettings, load_settings
from eligen.agent.errors import AgentError
from eligen.agent.plan import design_layout, plan_edits
from eligen.agent.vision import sent_size

FAST = {"retry-after-ms": "10"}  # the client honours it, so retry tests take milliseconds
DESK = json.dumps({"prompt": "a desk with a laptop", "entities": [
    {"prompt": "a silver laptop", "bbox_2d": [100, 300, 500, 700]}]})


def _backend(url: str, **options: object) -> OpenAIBackend:
    return OpenAIBackend(MllmSettings(url=url, timeout=60, retries=2, **options))  # ample on a loaded machine


def test_design_request_and_layout() -> None:
    with serve([DESK]) as server:
        plan = design_layout(_backend(server.url, api_key="sk-test", family="qwen2-vl"), "qwen2-vl",
                             "a desk with a laptop", (1024, 768))
    assert plan.layout.size == (1024, 768) and plan.layout.units == "px"
    assert plan.layout.entities[0].box == (102, 230, 512, 538)  # 0..1000 -> pixels
    assert plan.layout.negative_prompt  # a default negative prompt when the model gives none
    models, chat = server.requests[0], server.chat_requests[0]
    assert models["path"] == "/v1/models"  # no --mllm-model: the served model is asked for
    body = chat["body"]
    assert body["model"] == "served-model" and body["temperature"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert chat["headers"]["authorization"] == "Bearer sk-test"
    assert "0 to 1000" in body["messages"][0]["content"]


def test_rejected_response_formats_fall_back_and_are_remembered() -> None:
    with serve([DESK, DESK], reject_formats={"json_schema"}) as server:
        backend = _backend(server.url, model="m")
        design_layout(backend, "qwen2.5-vl", "a desk", (512, 512))
        design_layout(backend, "qwen2.5-vl", "a desk", (512, 512))
    formats = [(r["body"].get("response_format") or {}).get("type") for r in server.chat_requests]
    assert formats == ["json_schema", "json_object", "json_object"]
    with serve([DESK], reject_formats={"json_schema", "json_object"}) as server:
        design_layout(_backend(server.url, model="m"), "qwen2.5-vl", "a desk", (512, 512))
    assert "response_format" not in server.chat_requests[-1]["body"]


def test_429_then_success() -> None:
    busy = Reply(429, {"error": {"message": "slow down"}}, FAST)
    with serve([busy, busy, DESK]) as server:
        plan = design_layout(_backend(server.url, model="m"), "qwen2-vl", "a desk", (512, 512))
    assert len(server.chat_requests) == 3 and plan.layout.entities


def test_500s_until_giving_up() -> None:
    broken = Reply(500, {"error": {"message": "internal error"}}, FAST)
    with serve([broken] * 10) as server, pytest.raises(AgentError, match=r"HTTP 500 after 3 tries"):
        design_layout(_backend(server.url, model="m"), "qwen2-vl", "a desk", (512, 512))
    assert len(server.chat_requests) == 3


def test_timeout_is_bounded() -> None:
    # Each reply comes after 20 s: without the 0.3 s timeout the two tries take 40 s. The bound leaves a loaded
    # machine 10 s for what takes 0.6 s on a quiet one, and still tells a working timeout from a missing one.
    slow = Reply(200, completion(DESK), delay=20)
    with serve([slow, slow]) as server:
        backend = OpenAIBackend(MllmSettings(url=server.url, model="m", timeout=0.3, retries=1))
        start = time.perf_counter()
        with pytest.raises(AgentError, match=r"did not answer within 0.3 s \(2 tries\)"):
            design_layout(backend, "qwen2-vl", "a desk", (512, 512))
        assert time.perf_counter() - start < 10


def test_unreachable_server() -> None:
    backend = OpenAIBackend(MllmSettings(url="http://127.0.0.1:9/v1", model="m", timeout=1, retries=0))
    with pytest.raises(AgentError, match="cannot reach the MLLM"):
        design_layout(backend, "qwen2-vl", "a desk", (512, 512))


def test_malformed_answer_is_asked_again_once_with_the_problem() -> None:
    fenced = "```json\n" + DESK + "\n```"
    with serve(["{'prompt': broken", fenced]) as server:
        plan = design_layout(_backend(server.url, model="m"), "qwen2-vl", "a desk", (512, 512))
    retry = server.chat_requests[1]["body"]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "{'prompt': broken"}
    assert "could not be used: the answer is not a JSON object" in retry[-1]["content"]
    assert "asked again after an unusable answer" in plan.notes


def test_refusals_give_up_with_a_clear_message() -> None:
    refusal = Reply(200, completion(None, refusal="I can't help with that."))
    with serve([refusal, "Sorry, I cannot do this."]) as server, \
            pytest.raises(AgentError, match=r"could not be used .* even after asking again"):
        design_layout(_backend(server.url, model="m"), "qwen2-vl", "a desk", (512, 512))
    assert len(server.chat_requests) == 2


@pytest.mark.parametrize("reply", [
    Reply(200, b"<html>not json</html>"),
    Reply(200, {"choices": []}),
    Reply(200, {"choices": [{"message": {"content": {"nested": True}}}]}),
])
def test_garbage_responses_are_errors_not_crashes(reply: Reply) -> None:
    with serve([reply, reply]) as server, pytest.raises(AgentError):
        design_layout(_backend(server.url, model="m"), "qwen2-vl", "a desk", (512, 512))


def test_api_key_never_appears_in_errors_or_reprs() -> None:
    secret = "sk-very-secret-123"
    denied = Reply(401, {"error": {"message": f"Incorrect API key provided: {secret}"}})
    echo = Reply(400, {"error": {"message": f"bad request for key {secret}"}})
    settings = MllmSettings(url="http://x/v1", model="m", api_key=secret)
    assert secret not in repr(settings) and secret not in str(settings)
    for reply in (denied, echo):
        with serve([reply] * 3, reject_formats=set()) as server:
            backend = OpenAIBackend(settings.model_copy(update={"url": server.url, "retries": 0}))
            backend.formats = ["text"]
            with pytest.raises(AgentError) as caught:
                design_layout(backend, "qwen2-vl", "a desk", (512, 512))
        assert secret not in str(caught.value)


def test_edit_grounds_in_image_pixels_for_qwen25() -> None:
    image = Image.new("RGB", (1300, 961), (120, 140, 90))
    sent = sent_size(image.size, "qwen2.5-vl", DEFAULT_MAX_PIXELS)  # boxes come in pixels of the sent image
    answer = {"prompt": "a lawn with a red car", "entities": [
        {"prompt": "a red car", "bbox_2d": [sent[0] // 2, sent[1] // 2, sent[0], sent[1]]}]}
    with serve([json.dumps(answer)]) as server:
        plan = plan_edits(_backend(server.url, model="m"), "qwen2.5-vl", "add a red car", image)
    assert plan.layout.size == (1300, 961)
    x1, y1, x2, y2 = plan.layout.entities[0].box
    assert abs(x1 - 650) <= 2 and abs(y1 - 480) <= 2 and (x2, y2) == (1300, 961)
    content = server.chat_requests[0]["body"]["messages"][1]["content"]
    url = content[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent_image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent_image.size == sent and sent[0] % 28 == 0 and sent[1] % 28 == 0
    assert f"{sent[0]}x{sent[1]} image" in server.chat_requests[0]["body"]["messages"][0]["content"]


def test_settings_flags_over_environment_over_file(tmp_path: Path) -> None:
    config = tmp_path / "eligen" / "config.yaml"
    config.parent.mkdir()
    config.write_text("mllm_url: http://file/v1\nmllm_model: file-model\nmllm_family: qwen3-vl\nmllm_timeout: 9\n"
                      "mllm_api_key: file-key\nother_tool_setting: 1\n")
    env = {"XDG_CONFIG_HOME": str(tmp_path), "ELIGEN_MLLM_MODEL": "env-model", "OPENAI_API_KEY": "openai-key"}
    settings = load_settings({"model": None, "family": "qwen2-vl"}, env)
    assert (settings.url, settings.model, settings.family, settings.timeout) == ("http://file/v1", "env-model",
                                                                                  "qwen2-vl", 9.0)
    assert settings.api_key == "openai-key"
    assert load_settings({}, {**env, "ELIGEN_MLLM_API_KEY": "eligen-key"}).api_key == "eligen-key"
    assert load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path)}).api_key == "file-key"
    local = load_settings({"local": "/models/qwen"}, env)
    assert local.local == "/models/qwen" and local.url is None  # a flag's backend wins over the file's
    with pytest.raises(AgentError, match="--mllm-family"):
        load_settings({"family": "qwen9"}, env)
    with pytest.raises(AgentError, match="no MLLM is configured"):
        load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path / "none")})
    config.write_text("mllm_colour: red\n")
    with pytest.raises(AgentError, match="unknown key mllm_colour"):
        load_settings({}, {"XDG_CONFIG_HOME": str(tmp_path)})
