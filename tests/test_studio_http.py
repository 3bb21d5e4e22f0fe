"""The studio's HTTP layer against hostile requests: its Starlette app in this process, on the built-in shapes
model, through Starlette's TestClient and, where the connection itself matters, real sockets to uvicorn."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from starlette.testclient import TestClient

import eligen.pipeline.hub as hub
from eligen.pipeline.layout import parse_layout
from eligen.pipeline.model_info import default_size, scale_factor
from eligen.studio.api import Studio
from eligen.studio.command import page_info
from eligen.studio.engine import Engine
from eligen.studio.guard import allowed_hosts
from eligen.studio.paths import Allowed
from eligen.studio.server import listen, make_app

BASE = "http://127.0.0.1:7860"
JSON = {"Content-Type": "application/json"}
LAYOUT = {"prompt": "a red circle", "entities": [{"prompt": "a red circle", "box": [4, 4, 30, 30]}]}
BODY_TIMEOUT = 1.0  # s: the test app's limit for a request body to arrive
WAIT = 60.0  # s: the longest any condition below is waited for (a busy machine)
REPR = re.compile(r"<[\w.]+ object at 0x|Traceback|File \"")
OPENED: list[str] = []  # every file this process opens while a test records it (an audit hook)
RECORDING = threading.Event()
ALLOWED_LORA = "someone/loras/style.safetensors"  # a hub LoRA on the allow-list (never fetched by these tests)
ALLOWED_ADAPTER = "someone/adapters/ip-adapter.bin"


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and RECORDING.is_set() and isinstance(args[0], (str, bytes, Path)):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def allowed_mask(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mask file on the server that the studio was started with (--allow-file): the top-left quarter of the
    shapes model's canvas."""
    from PIL import Image

    width, height = default_size("shapes")
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:height // 2, :width // 2] = 255
    path = tmp_path_factory.mktemp("allowed") / "quarter.png"
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture(scope="module")
def studio(allowed_mask: Path) -> Studio:
    from eligen.pipeline.generate import EligenPipeline

    engine = Engine(EligenPipeline.from_pretrained("shapes", device="cpu", dtype="fp32"), "shapes")
    allowed = Allowed((ALLOWED_LORA,), (str(allowed_mask), ALLOWED_ADAPTER))
    return Studio(engine, page_info("shapes", list(allowed.loras), False, None, engine.no_attention_maps), allowed)


@pytest.fixture(scope="module")
def client(studio: Studio) -> Iterator[TestClient]:
    with TestClient(make_app(studio, allowed_hosts("127.0.0.1"), body_timeout=BODY_TIMEOUT), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def live(studio: Studio) -> Iterator[tuple[str, int]]:
    """The app on uvicorn on a real socket (in a thread), as `eligen studio` serves it; its address."""
    sock = listen("127.0.0.1", 0)
    config = uvicorn.Config(make_app(studio, allowed_hosts("127.0.0.1"), auth="me:secret",
                                     body_timeout=BODY_TIMEOUT), log_level="warning", lifespan="off",
                            timeout_keep_alive=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield sock.getsockname()[:2]
    server.should_exit = True
    thread.join(timeout=WAIT)
    sock.close()


def _refused(response: Any, status: int, error: str, words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and words in body["message"], body
    assert not REPR.search(body["message"]), body
    return body


# ---------- who may ask ----------

def test_a_page_from_another_site_or_another_local_port_is_refused(client: TestClient) -> None:
    body = json.dumps({"mode": "generate", "layout": LAYOUT})
    ok = client.post("/api/check", content=body, headers={**JSON, "Origin": BASE})
    assert ok.status_code == 200 and ok.json()["cells"]  # the studio's own page
    for origin in ("https://evil.example", "http://localhost:3000", "http://127.0.0.1:7861", "null"):
        answer = client.post("/api/generate", content=body, headers={**JSON, "Origin": origin})
        _refused(answer, 403, "origin", "expected a request from the studio's own page")
    answer = client.post("/api/check", content=body, headers={**JSON, "Sec-Fetch-Site": "cross-site"})
    _refused(answer, 403, "origin", "another site")


def test_a_dns_rebinding_host_is_refused_for_the_page_and_the_api(client: TestClient) -> None:
    for path in ("/", "/api/info", "/studio.js"):
        assert client.get(path).status_code == 200
        _refused(client.get(path, headers={"Host": "rebind.evil.example:7860"}), 403, "host",
                 "expected a request to the studio's own address")
    assert client.get("/api/info", headers={"Host": "localhost:7860"}).status_code == 200
    assert client.get("/api/info", headers={"Host": "[::1]:7860"}).status_code == 200


def test_other_names_are_accepted_only_when_given(studio: Studio) -> None:
    app = make_app(studio, allowed_hosts("0.0.0.0", ["studio.lan"]))
    with TestClient(app, base_url="http://studio.lan:7860") as lan:
        assert lan.get("/api/info").status_code == 200
        assert lan.get("/api/info", headers={"Host": "192.168.1.5:7860"}).status_code == 403
    with TestClient(make_app(studio, allowed_hosts("192.168.1.5")), base_url="http://192.168.1.5:7860") as bound:
        assert bound.get("/api/info").status_code == 200  # --host 192.168.1.5


def test_the_api_takes_json_with_its_content_type_only(client: TestClient) -> None:
    body = json.dumps({"mode": "generate", "layout": LAYOUT})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": kind} if kind else {}
        answer = client.post("/api/generate", content=body, headers=headers)
        _refused(answer, 415, "request", "expected a JSON body with Content-Type: application/json")
    assert client.post("/api/check", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
                       ).status_code == 200


# ---------- bodies ----------

def test_an_oversized_body_is_a_413_declared_or_streamed(client: TestClient) -> None:
    answer = client.post("/api/restore", content=b"{}", headers={**JSON, "Content-Length": str(200 * 2**20)})
    _refused(answer, 413, "request", "expected a request of at most 48 MiB")
    assert answer.headers["connection"] == "close"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked, more than the limit
        yield b'{"files": "'
        for _ in range(49):
            yield b"A" * 2**20
    _refused(client.post("/api/restore", content=chunks(), headers=JSON), 413, "request", "at most 48 MiB")


def test_deep_or_malformed_json_is_a_400_and_the_studio_goes_on(client: TestClient) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    _refused(client.post("/api/check", content=deep, headers=JSON), 400, "request", "nested at most 32 levels")
    nested = '{"layout": ' + '{"a": ' * 40 + "1" + "}" * 40 + "}"  # parses, but deeper than any layout
    _refused(client.post("/api/check", content=nested, headers=JSON), 400, "request", "nested at most 32 levels")
    _refused(client.post("/api/check", content='{"mode": ', headers=JSON), 400, "request", "expected a JSON body")
    _refused(client.post("/api/check", content="[1, 2]", headers=JSON), 400, "request", "got an array")
    _refused(client.post("/api/check", content=b"\xff\xfe", headers=JSON), 400, "request", "expected a JSON body")
    assert client.post("/api/check", json={"mode": "generate", "layout": LAYOUT}).status_code == 200


def test_messages_name_no_python_objects(client: TestClient, studio: Studio, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    broken = {"files": [{"name": "broken.png", "data": base64.b64encode(b"\x89PNG\r\n\x1a\n no").decode()}]}
    body = _refused(client.post("/api/image", json=broken), 400, "layout", "expected a readable PNG, JPEG or WebP")
    assert body["field"] == "(image)"
    garbage = {**LAYOUT, "entities": [{"prompt": "a red circle", "mask": "data:image/png;base64,AAAA"}]}
    body = _refused(client.post("/api/check", json={"mode": "generate", "layout": garbage}), 400, "layout",
                    "expected a readable image")
    assert body["field"] == "entities[0].mask"

    def fails(_: Any) -> Any:
        raise RuntimeError(f"something inside {object()!r}")
    monkeypatch.setattr(studio, "check", fails)
    app = make_app(studio, allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as fresh:
        _refused(fresh.post("/api/check", json={}), 500, "internal", "its console says why")


# ---------- connections (real sockets to uvicorn) ----------

def _request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
             host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response from `sock` (with Content-Length), waiting at most WAIT seconds."""
    sock.settimeout(WAIT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


AUTH = {"Authorization": "Basic " + base64.b64encode(b"me:secret").decode()}


def test_a_refused_request_leaves_its_connection_usable(live: tuple[str, int]) -> None:
    with socket.create_connection(live, timeout=WAIT) as sock:
        body = json.dumps({"mode": "generate", "layout": LAYOUT}).encode()
        sock.sendall(_request("POST", "/api/check", body, {"Content-Type": "application/json"}))  # no auth: 401
        status, headers, _ = _read_response(sock)
        assert status == 401 and "basic" in headers["www-authenticate"].lower()
        sock.sendall(_request("POST", "/api/nothing", body, {**AUTH, "Content-Type": "application/json"}))
        status, _, answer = _read_response(sock)
        assert status == 404 and json.loads(answer)["message"] == "nothing at /api/nothing"
        sock.sendall(_request("POST", "/api/check", body, {**AUTH, "Content-Type": "application/json"}))
        status, _, answer = _read_response(sock)  # the same connection, its unread bodies skipped
        assert status == 200 and json.loads(answer)["cells"]


def test_a_lying_content_length_holds_nobody_and_times_out(live: tuple[str, int]) -> None:
    liars = [socket.create_connection(live, timeout=WAIT) for _ in range(3)]
    try:
        for liar in liars:  # 10 bytes declared, none sent
            liar.sendall(b"POST /api/check HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 10\r\n\r\n".encode())
        slow = socket.create_connection(live, timeout=WAIT)
        liars.append(slow)
        slow.sendall(b"POST /api/check HTTP/1.1\r\nHost: 127.0")  # headers that never end
        body = json.dumps({"mode": "generate", "layout": LAYOUT}).encode()
        for _ in range(5):  # other clients are served meanwhile
            with socket.create_connection(live, timeout=WAIT) as other:
                other.sendall(_request("POST", "/api/check", body, {**AUTH, "Content-Type": "application/json"}))
                status, _, answer = _read_response(other)
                assert status == 200 and json.loads(answer)["cells"]
        for liar in liars[:3]:  # and after BODY_TIMEOUT each liar gets its answer and loses its connection
            status, headers, answer = _read_response(liar)
            assert status == 408 and headers["connection"] == "close"
            assert json.loads(answer)["message"] == "expected the whole request within 1 s; 0 bytes of 10 arrived"
            assert liar.recv(1) == b""
    finally:
        for liar in liars:
            liar.close()


# ---------- files a layout may name ----------

def _with(entity: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {**LAYOUT, "entities": [{"prompt": "a red circle", "box": [4, 4, 30, 30], **(entity or {})}], **top}


SECRET = "/etc/hostname"
HOSTILE = [  # (layout, the field the refusal names)
    (_with({"box": None, "mask": SECRET}), "entities[0].mask"),
    (_with({"box": None, "mask": "../../../../etc/hostname"}), "entities[0].mask"),
    (_with({"box": None, "mask": "~/.ssh/id_rsa"}), "entities[0].mask"),
    (_with({"box": None, "color": "#ff0000"}, color_mask=SECRET), "color_mask"),
    (_with({"reference": {"image": SECRET}}, ip_adapter={"path": ALLOWED_ADAPTER}), "entities[0].reference.image"),
    (_with(ip_adapter={"path": "h94/IP-Adapter/ip-adapter.bin", "image": SECRET}), "ip_adapter.path"),
    (_with(ip_adapter={"path": SECRET, "image": SECRET}), "ip_adapter.path"),
    (_with(ip_adapter={"path": ALLOWED_ADAPTER, "image": SECRET}), "ip_adapter.image"),
    (_with(ip_adapter={"path": ALLOWED_ADAPTER, "image": SECRET, "image_encoder": "/etc"}), "ip_adapter.image"),
    (_with(ip_adapter={"path": ALLOWED_ADAPTER, "image_encoder": "google/siglip-so400m-patch14-384"}),
     "ip_adapter.image_encoder"),
    (_with(loras=[{"path": SECRET}]), "loras[0].path"),
    (_with(loras=[{"path": "evil/loras/x.safetensors"}]), "loras[0].path"),
    (_with(loras=[{"path": "evil/loras", "file": "x.safetensors"}]), "loras[0].path"),
    (_with(loras=[{"path": ALLOWED_LORA}, {"path": "someone/loras", "file": "../../x.safetensors"}]), "loras[1].path"),
    (_with({"loras": [{"path": SECRET}]}), "entities[0].loras[0].path"),
    (_with({"loras": [{"path": ALLOWED_LORA}, {"path": "evil/loras/x.safetensors"}]}), "entities[0].loras[1].path"),
    (_with(transformer=SECRET), "transformer"),
    (_with(model="/srv/models/other"), "model"),
]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the process opens and fetches from the hub during the test."""
    fetched: list[str] = []
    monkeypatch.setattr(hub, "fetch", lambda repo, file, *a, **k: fetched.append(f"{repo}/{file}"))
    OPENED.clear()
    RECORDING.set()
    yield fetched
    RECORDING.clear()


@pytest.mark.parametrize(("layout", "field"), HOSTILE, ids=[f for _, f in HOSTILE])
def test_a_path_not_uploaded_nor_allowed_is_a_400_naming_its_field_and_is_never_opened(
        client: TestClient, recorded: list[str], layout: dict[str, Any], field: str) -> None:
    for path in ("/api/check", "/api/generate", "/api/yaml"):
        body = _refused(client.post(path, json={"mode": "generate", "layout": layout}), 400, "layout", field)
        assert body["field"] == field
    assert recorded == [] and not [p for p in OPENED if "etc" in p or "ssh" in p or p.endswith(".bin")], OPENED


def test_edits_and_uploaded_yaml_name_no_server_file_either(client: TestClient, recorded: list[str]) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (9, 9, 9)).save(buffer, format="PNG")
    files = [{"name": "photo.png", "data": base64.b64encode(buffer.getvalue()).decode()}]
    image = client.post("/api/image", json={"files": files}).json()["image"]
    edits = _with({"box": None, "mask": SECRET})
    body = _refused(client.post("/api/check", json={"mode": "inpaint", "image": image, "layout": edits}), 400,
                    "layout", "entities[0].mask")
    assert "--allow-file" in body["message"]
    scene = "prompt: a red circle\nip_adapter: {path: /etc/passwd, image: /etc/hostname}\n" \
            "entities: [{prompt: a red circle, box: [4, 4, 30, 30]}]\n"
    files = [{"name": "scene.yaml", "data": base64.b64encode(scene.encode()).decode()}]
    body = _refused(client.post("/api/restore", json={"files": files, "mode": "generate"}), 400, "layout",
                    "ip_adapter.path")
    assert recorded == [] and not [p for p in OPENED if p.startswith("/etc")], OPENED


def test_an_allowed_file_is_used_and_the_page_lists_the_allowed_loras(
        client: TestClient, allowed_mask: Path, recorded: list[str]) -> None:
    layout = _with({"box": None, "mask": str(allowed_mask)}, loras=[{"path": "someone/loras",
                                                                      "file": "style.safetensors"}])
    answer = client.post("/api/check", json={"mode": "generate", "layout": layout})
    assert answer.status_code == 200, answer.text
    width, height = default_size("shapes")
    token = 2 * scale_factor("shapes")  # px a token spans: the VAE's factor times the 2x2 packing
    grid = width // token
    quarter = [y * grid + x for y in range(height // token // 2) for x in range(grid // 2)]  # top-left quarter
    assert answer.json()["cells"] == [quarter]
    assert str(allowed_mask) in OPENED and recorded == []  # checking a layout fetches no LoRA
    assert client.get("/api/info").json()["loras"] == [ALLOWED_LORA]


# ---------- work limits ----------

def _check(client: TestClient, layout: dict[str, Any]) -> Any:
    return client.post("/api/check", json={"mode": "generate", "layout": layout})


def test_steps_seeds_entities_and_size_are_bounded_with_a_400_naming_the_field(client: TestClient) -> None:
    from eligen.studio.limits import MAX_ENTITIES, MAX_STEPS, max_pixels

    assert _check(client, {**LAYOUT, "steps": MAX_STEPS}).status_code == 200
    for steps in (MAX_STEPS + 1, 1_000_000):
        body = _refused(_check(client, {**LAYOUT, "steps": steps}), 400, "layout", f"at most {MAX_STEPS} steps")
        assert body["field"] == "steps"
        _refused(client.post("/api/generate", json={"mode": "generate", "layout": {**LAYOUT, "steps": steps}}),
                 400, "layout", "steps")
    body = _refused(_check(client, {**LAYOUT, "seed": list(range(17))}), 400, "layout", "at most 16 seeds")
    assert body["field"] == "seed"
    many = [{"prompt": "a red circle", "box": [0, 0, 8, 8]}] * (MAX_ENTITIES + 1)
    body = _refused(_check(client, {**LAYOUT, "entities": many}), 400, "layout", f"at most {MAX_ENTITIES} entities")
    assert body["field"] == "entities"
    width, height = default_size("shapes")
    assert max_pixels("shapes") == 4 * width * height  # the size the shapes model declares, four times over
    assert _check(client, {**LAYOUT, "size": [2 * width, 2 * height]}).status_code == 200
    body = _refused(_check(client, {**LAYOUT, "size": [2 * width, 2 * height + 16]}), 400, "layout",
                    f"at most {4 * width * height} pixels")
    assert body["field"] == "size"
    body = _refused(_check(client, {**LAYOUT, "size": [4096, 64]}), 400, "layout", "got 4096x64 = 262144")


def test_an_image_too_large_for_the_model_is_refused_in_inpaint_mode(client: TestClient) -> None:
    from PIL import Image

    width, height = default_size("shapes")
    buffer = io.BytesIO()
    Image.new("RGB", (4 * width, 4 * height), (9, 9, 9)).save(buffer, format="PNG")  # 16x the model's pixels
    files = [{"name": "big.png", "data": base64.b64encode(buffer.getvalue()).decode()}]
    image = client.post("/api/image", json={"files": files}).json()["image"]
    body = _refused(client.post("/api/check", json={"mode": "inpaint", "image": image, "layout": LAYOUT}), 400,
                    "layout", f"at most {4 * width * height} pixels")
    assert body["field"] == "(image)"


def test_attention_steps_are_bounded(client: TestClient) -> None:
    job = client.post("/api/generate", json={"mode": "generate", "layout": {**LAYOUT, "steps": 2, "seed": 1}}).json()
    deadline = time.monotonic() + WAIT
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
        job = client.get(f"/api/jobs/{job['id']}").json()
    result = job["results"][0]["id"]
    body = _refused(client.post("/api/attention", json={"result": result, "steps": [1] * 17}), 400, "layout",
                    "1 to 16 step numbers")
    assert body["field"] == "steps"


def test_each_client_may_queue_only_a_few_jobs_and_others_are_still_served(studio: Studio) -> None:
    from eligen.studio.limits import MAX_ACTIVE_JOBS, MAX_STEPS

    long = {"mode": "generate", "layout": {**LAYOUT, "steps": MAX_STEPS, "seed": list(range(16))}}
    app = make_app(studio, allowed_hosts("127.0.0.1"))
    jobs = []
    with TestClient(app, base_url=BASE, client=("10.0.0.1", 1)) as greedy, \
            TestClient(app, base_url=BASE, client=("10.0.0.2", 2)) as other:
        try:
            for _ in range(MAX_ACTIVE_JOBS):
                answer = greedy.post("/api/generate", json=long)
                assert answer.status_code == 200, answer.text
                jobs.append(answer.json()["id"])
            _refused(greedy.post("/api/generate", json=long), 429, "queue", f"at most {MAX_ACTIVE_JOBS} jobs queued")
            answer = other.post("/api/generate", json=long)  # another client still gets its turn
            assert answer.status_code == 200, answer.text
            jobs.append(answer.json()["id"])
        finally:
            for job in jobs:
                greedy.post(f"/api/jobs/{job}/cancel", json={})
        deadline = time.monotonic() + WAIT
        while any(greedy.get(f"/api/jobs/{job}").json()["state"] in ("queued", "running") for job in jobs):
            assert time.monotonic() < deadline, "cancelled jobs still running"
            time.sleep(0.1)
        assert greedy.post("/api/generate", json={**long, "layout": {**LAYOUT, "steps": 1}}).status_code == 200


def test_progress_streams_as_server_sent_events_until_the_job_ends(client: TestClient) -> None:
    job = client.post("/api/generate", json={"mode": "generate", "layout": {**LAYOUT, "steps": 3, "seed": [5, 6]}})
    assert job.status_code == 200, job.text
    states = []
    with client.stream("GET", f"/api/jobs/{job.json()['id']}/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        for line in events.iter_lines():
            if line.startswith("data: "):
                states.append(json.loads(line.removeprefix("data: ")))
    assert states[-1]["state"] == "done" and [r["seed"] for r in states[-1]["results"]] == [5, 6]
    progress = [s["image"] * s["steps"] + s["step"] for s in states if s["state"] == "running"]
    assert progress == sorted(progress) and len({json.dumps(s) for s in states}) == len(states)  # only changes
    missing = client.get("/api/jobs/0123456789abcdef/events")
    _refused(missing, 404, "missing", "no such job")


def test_a_canvas_that_does_not_fit_in_free_memory_is_refused(client: TestClient,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the pixel limit, a size is still refused when what it needs beside the loaded model is more than the
    device has free (the weights, already loaded, are not counted again)."""
    from eligen.pipeline import memory_estimate

    layout = {**LAYOUT, "size": [128, 128]}
    assert client.post("/api/check", json={"mode": "generate", "layout": layout}).status_code == 200
    needed = memory_estimate.estimate_memory(parse_layout({**layout, "model": "shapes"}))
    beside = needed.total - needed.weights
    monkeypatch.setattr(memory_estimate, "available_memory", lambda device=None: (beside // 2, "the test device"))
    body = _refused(client.post("/api/check", json={"mode": "generate", "layout": layout}), 400, "layout",
                    "the test device has")
    assert body["field"] == "size"
    monkeypatch.setattr(memory_estimate, "available_memory", lambda device=None: (beside * 2, "the test device"))
    assert client.post("/api/check", json={"mode": "generate", "layout": layout}).status_code == 200
