"""The MLLM judge scorer against a scripted chat-completions server on 127.0.0.1 (no client mocking)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from chat_server import Reply, completion, serve
from PIL import Image

from eligen.agent.config import MllmSettings
from eligen.agent.errors import AnswerError
from eligen.agent.judge import MllmJudge, crop_box, make_judge, parse_verdict, public_url
from eligen.pipeline.bench.items import BenchItem, Instance
from eligen.pipeline.layout import parse_layout

RED, BLUE, GREEN = (220, 20, 20), (20, 20, 220), (20, 200, 20)
FAST = {"retry-after-ms": "10"}
YES = json.dumps({"correct": True, "reason": "a red square, as described"})
NO = json.dumps({"correct": False, "reason": "the square is blue, not green"})


def _scene() -> tuple[Image.Image, BenchItem]:
    """A 512x512 blue image with a red box (100,100)-(300,200) and a green one (360,300)-(460,400)."""
    image = Image.new("RGB", (512, 512), BLUE)
    image.paste(RED, (100, 100, 300, 200))
    image.paste(GREEN, (360, 300, 460, 400))
    instances = (Instance("a red square", (100.0, 100.0, 300.0, 200.0)),
                 Instance("a green square", (360.0, 300.0, 460.0, 400.0)))
    layout = parse_layout({"size": [512, 512], "prompt": "two squares", "entities": [
        {"prompt": i.prompt, "box": list(i.box)} for i in instances]})
    return image, BenchItem("scene-0", "2 entities", layout, instances)


def _judge(url: str, retries: int = 2, **options: Any) -> MllmJudge:
    settings = MllmSettings(url=url, family="qwen2-vl", timeout=60, retries=0, **options)  # a loaded machine
    return make_judge(settings, retries)


def _sent_image(request: dict[str, Any]) -> Image.Image:
    """The one image of a chat request (the judge sends exactly one, in the user message)."""
    parts = [part for message in request["body"]["messages"] if isinstance(message["content"], list)
             for part in message["content"] if part["type"] == "image_url"]
    assert len(parts) == 1
    data = parts[0]["image_url"]["url"].removeprefix("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def _mask(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    return (np.abs(np.asarray(image, dtype=int) - colour).sum(axis=2) < 60)


def test_yes_and_no_per_instance_and_the_crops_sent() -> None:
    image, item = _scene()
    with serve([YES, NO]) as server:
        score = _judge(server.url).score(image, item)
    assert [s["judge_correct"] for s in score.instances] == [True, False]
    assert score.instances[0] == {"judge_correct": True, "judge_reason": "a red square, as described",
                                  "judge_error": None}
    assert score.image == {}
    requests = server.chat_requests
    assert len(requests) == 2 and [r["path"] for r in server.requests] == ["/v1/models"] + ["/v1/chat/completions"] * 2
    body = requests[0]["body"]
    assert body["model"] == "served-model" and body["temperature"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert '"a red square"' in body["messages"][1]["content"][1]["text"]
    assert '"a green square"' in requests[1]["body"]["messages"][1]["content"][1]["text"]
    # the red box with 10% margin is 240x120 px; upscaled to a 224 px short side: 448x224 (a Qwen2-VL fixed point)
    first = _sent_image(requests[0])
    assert first.size == (448, 224)
    red = _mask(first, RED)
    ys, xs = np.nonzero(red)
    assert abs(xs.min() - 20 / 240 * 448) <= 2 and abs(xs.max() + 1 - 220 / 240 * 448) <= 2
    assert abs(ys.min() - 10 / 120 * 224) <= 2 and abs(ys.max() + 1 - 110 / 120 * 224) <= 2
    assert _mask(first, BLUE)[[0, 0, -1, -1], [0, -1, 0, -1]].all()  # the margin shows the background
    assert not _mask(first, GREEN).any()
    second = _sent_image(requests[1])  # 100x100 box + margin = 120x120, upscaled to 224x224
    assert second.size == (224, 224) and _mask(second, GREEN)[20:200, 20:200].all()


def test_malformed_answers_are_sent_back_then_recorded_as_none() -> None:
    image, item = _scene()
    bad = ["yes", '{"correct": "true", "reason": "x"}', '{"correct": true}']
    refused = Reply(200, completion(None, refusal="I cannot help with that."))
    with serve([*bad, refused, '{"correct": 1, "reason": "x"}', YES]) as server:
        score = _judge(server.url, retries=2).score(image, item)
    first, second = score.instances
    assert first["judge_correct"] is None and first["judge_reason"] == ""
    assert "after 3 tries" in first["judge_error"] and "'reason'" in first["judge_error"]
    assert second["judge_correct"] is True and second["judge_error"] is None  # the third ask was usable
    requests = server.chat_requests
    assert len(requests) == 6
    retry = requests[1]["body"]["messages"]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == "yes" and "not one JSON object" in retry[3]["content"]
    assert "'correct' must be true or false" in requests[2]["body"]["messages"][-1]["content"]


def test_no_retries_records_the_first_problem() -> None:
    image, item = _scene()
    with serve(['{"correct": true, "reason": "ok"} and more', YES]) as server:
        score = _judge(server.url, retries=0).score(image, item)
    assert score.instances[0]["judge_correct"] is None and "after 1 try:" in score.instances[0]["judge_error"]
    assert score.instances[1]["judge_correct"] is True and len(server.chat_requests) == 2


def test_a_server_error_is_recorded_not_raised() -> None:
    image, item = _scene()
    broken = Reply(500, {"error": {"message": "internal error sk-secret"}}, FAST)
    with serve([broken, NO]) as server:
        score = _judge(server.url, model="m", api_key="sk-secret").score(image, item)
    first, second = score.instances
    assert first["judge_correct"] is None and "HTTP 500" in first["judge_error"]
    assert "sk-secret" not in first["judge_error"]
    assert second["judge_correct"] is False and second["judge_reason"] == "the square is blue, not green"


def test_an_unreachable_server_is_recorded_per_instance() -> None:
    image, item = _scene()
    with serve([]) as server:
        url = server.url
    score = _judge(url, model="m").score(image, item)
    assert all(s["judge_correct"] is None and "cannot reach" in s["judge_error"] for s in score.instances)


def test_describe_names_the_model_and_prompts_but_no_secret() -> None:
    with serve([]) as server:
        port = server.url.split(":")[2].split("/")[0]
        url = f"http://user:sk-secret@127.0.0.1:{port}/v1"
        described = _judge(url, retries=4, api_key="sk-secret").describe()
    assert described["model"] == "served-model" and described["backend"] == "openai-compatible"
    assert described["base_url"] == f"http://127.0.0.1:{port}/v1"
    assert described["retries"] == 4 and "{prompt}" in described["question"]
    assert "JSON" in described["system_prompt"]
    assert "sk-secret" not in json.dumps(described)
    assert MllmJudge.name == "mllm-judge"


@pytest.mark.parametrize(("answer", "problem"), [
    ("", "empty"),
    ("no", "not one JSON object"),
    ('{"correct": true, "reason": "ok"} trailing', "not one JSON object"),
    ('[{"correct": true, "reason": "ok"}]', "a JSON list"),
    ('{"correct": true}', "missing: ['reason']"),
    ('{"correct": true, "reason": "ok", "score": 1}', "extra: ['score']"),
    ('{"correct": "yes", "reason": "ok"}', "'correct' must be true or false"),
    ('{"correct": null, "reason": "ok"}', "'correct' must be true or false"),
    ('{"correct": 0, "reason": "ok"}', "'correct' must be true or false"),
    ('{"correct": true, "reason": 3}', "'reason' must be a string"),
    ('{"correct": true, "correct": false, "reason": "ok"}', "more than once"),
    ('{"correct": true, "reason": "' + "x" * 20_000 + '"}', "longer than"),
])
def test_unusable_verdicts(answer: str, problem: str) -> None:
    with pytest.raises(AnswerError) as caught:
        parse_verdict(answer)
    assert problem in str(caught.value)


def test_usable_verdicts() -> None:
    fenced = parse_verdict('```json\n{"correct": false, "reason": "a \\u001b[31mgreen\\n cat"}\n```')
    assert fenced.correct is False and fenced.reason == "a [31mgreen cat"
    long = parse_verdict(json.dumps({"correct": True, "reason": "y" * 1000}))
    assert long.correct is True and len(long.reason) == 300


def test_crop_box_margin_clipping_and_empty_boxes() -> None:
    assert crop_box((512, 512), (100, 100, 300, 200)) == (80, 90, 320, 210)
    assert crop_box((512, 512), (0, 480, 40, 512)) == (0, 476, 44, 512)
    with pytest.raises(ValueError, match="no area"):
        crop_box((512, 512), (600, 600, 700, 700))
    with pytest.raises(ValueError, match="not a finite number"):
        crop_box((512, 512), (0, 0, float("inf"), 10))


def test_a_box_outside_the_image_is_recorded() -> None:
    image, item = _scene()
    outside = BenchItem("x", "1", item.layout, (Instance("a cat", (600, 600, 700, 700)),))
    with serve([]) as server:
        score = _judge(server.url, model="m").score(image, outside)
    assert score.instances[0]["judge_correct"] is None and "no area" in score.instances[0]["judge_error"]
    assert server.chat_requests == []


def test_public_url() -> None:
    assert public_url("https://k:s@example.com:8443/v1?api_key=s") == "https://example.com:8443/v1"
    assert public_url(None) is None
