"""`eligen studio`: draw entities in the browser, generate, inpaint and chat, on one loaded model."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import typer

from ..agent_commands import MllmFamilyOpt, MllmModelOpt, MllmTimeoutOpt, MllmUrlOpt
from ..common import DeviceOpt, DtypeOpt, OffloadOpt, QuantizeOpt, TransformerOpt, err, fail, user_errors
from .guard import LOOPBACK_NAMES
from .paths import Allowed, allowed_name, model_loras, names_in


def page_info(model: str, loras: list[str], chat: bool, initial: dict[str, Any] | None,
              no_attention_maps: str | None = None) -> dict[str, Any]:
    """What the page needs once: the model, the CLI's defaults, the LoRAs it may use, the vocabulary, and why the
    model has no attention maps (None when it has them)."""
    from eligen.pipeline.layout import Edits, Layout, parse_layout
    from eligen.pipeline.model_defaults import with_model_defaults
    from eligen.pipeline.model_info import known_words
    from eligen.pipeline.preview import PALETTE

    native = with_model_defaults(parse_layout({"model": model, "prompt": "-"}), model)  # as `eligen generate` fills
    fields = {**Layout.model_fields, **Edits.model_fields}
    defaults = {key: getattr(native, key) if key in Layout.model_fields else fields[key].default for key in (
        "negative_prompt", "steps", "cfg", "guidance", "schedule", "entity_tokens", "attention",
        "regions_on_negative", "fusion", "dilate", "feather")}
    return {"model": model, "defaults": {**defaults, "size": list(native.size)}, "words": known_words(model),
            "loras": loras, "chat": chat, "initial": initial, "no_attention_maps": no_attention_maps,
            "palette": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in PALETTE]}


def _has_layout(path: Path) -> bool:
    """Whether `path` is a PNG written by `eligen generate` (its layout embedded)."""
    from eligen.pipeline.outputs import read_png_metadata

    try:
        return path.suffix.lower() == ".png" and "layout" in (read_png_metadata(path) or {})
    except (OSError, ValueError):
        return False


def _initial(path: Path | None) -> tuple[dict[str, Any] | None, str | None, str | None, Allowed]:
    """The layout given on the command line for the page to open with, its model, transformer and the files it names
    (which the page may then use), or the image to repaint."""
    from eligen.pipeline.layout import LayoutError
    from eligen.pipeline.references import with_absolute_paths
    from eligen.pipeline.regions import entity_masks

    from ..sources import load_source
    from .inputs import layout_json

    if path is None:
        return None, None, None, Allowed()
    if path.suffix.lower() in (".yaml", ".yml") or _has_layout(path):
        src = load_source(path, {})
        masks = entity_masks(src.layout, src.base_dir, src.source)
        names = names_in(src.layout, src.base_dir)
        layout = with_absolute_paths(src.layout, src.base_dir)
        if layout.loras:
            named = zip(layout.loras, names.loras, strict=True)
            loras = [spec.model_copy(update={"path": name, "file": None}) for spec, name in named]
            layout = layout.model_copy(update={"loras": loras})
        return ({"kind": "layout", "layout": layout_json(layout, masks)}, src.layout.model, src.layout.transformer,
                names)
    if not path.is_file():
        raise LayoutError(str(path), "(file)", "expected a layout YAML or an image file")
    return {"image": path}, None, None, Allowed()


def _auth(value: str | None) -> str | None:
    if value is not None and (":" not in value or not value.split(":", 1)[0] or not value.split(":", 1)[1]):
        raise typer.BadParameter("expected user:password", param_hint="--auth")
    return value


def _is_local(host: str) -> bool:
    try:
        return host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def studio(
    file: Annotated[Path | None, typer.Argument(
        help="A layout YAML or a PNG written by eligen to open, or an image to repaint.")] = None,
    model: Annotated[str | None, typer.Option(
        help="Diffusers FLUX or Qwen-Image folder, hub id or built-in name: shapes, shapes-base [default: the "
        "file's model, else black-forest-labs/FLUX.1-dev]. The browser cannot change it.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but 127.0.0.1 exposes the studio "
                                      "to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 7860,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Another name the browser may reach the studio by (a host name or address, e.g. behind "
        "a proxy); the loopback names and the --host address are always accepted; repeat.")] = None,
    auth: Annotated[str | None, typer.Option(help="Require HTTP basic authentication: user:password.")] = None,
    lora: Annotated[list[str] | None, typer.Option(
        "--lora", help="A LoRA the page may use: a local .safetensors or hub-repo-id/path/in/repo.safetensors; "
        "repeat.")] = None,
    allow_file: Annotated[list[str] | None, typer.Option(
        "--allow-file", help="A file the page may name in a layout: an IP-Adapter, its image encoder, a reference "
        "image or a mask (a local file or folder, or a hub name repo-id/path/in/repo); repeat. The studio opens no "
        "other file for the browser.")] = None,
    transformer: TransformerOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offload: OffloadOpt = "none",
    quantize: QuantizeOpt = "none",
    mllm_url: MllmUrlOpt = None,
    mllm_model: MllmModelOpt = None,
    mllm_family: MllmFamilyOpt = None,
    mllm_timeout: MllmTimeoutOpt = None,
) -> None:
    """A local web app: draw entities (boxes, polygons, brush, masks), see their token cells, generate with
    progress, inpaint, save and restore layouts, and chat with an MLLM (--mllm-url).

    \b
    Examples:
      eligen studio --model shapes                     # open http://127.0.0.1:7860/
      eligen studio layouts/shapes.yaml                # start from a layout (or a PNG eligen wrote)
      eligen studio --model shapes photo.png           # repaint regions of an image
    """
    from eligen.pipeline.layout import DEFAULT_MODEL
    from eligen.pipeline.model_info import resolve_model

    from ..sources import resolve_transformer
    from .api import Studio
    from .chat import StudioChat
    from .engine import Engine
    from .guard import allowed_hosts
    from .inputs import Upload, source_image
    from .server import listen, make_app, serve

    auth = _auth(auth)
    with user_errors():
        initial, file_model, file_transformer, opened = _initial(file)
        chosen = resolve_model(model, Path.cwd(), "--model", "--model") if model else file_model or DEFAULT_MODEL
        transformer = resolve_transformer(transformer, Path.cwd(), "--transformer", "--transformer") \
            if transformer else file_transformer  # as `eligen generate`: the option, else the file's
        allowed = Allowed(
            tuple(dict.fromkeys([*(allowed_name(spec, "--lora") for spec in lora or []), *opened.loras,
                                 *model_loras(chosen)])),
            tuple(dict.fromkeys([*(allowed_name(spec, "--allow-file") for spec in allow_file or []),
                                 *opened.files])))
        chat = None
        if mllm_url:
            from eligen.agent.backends import make_backend
            from eligen.agent.config import load_settings

            settings = load_settings({"url": mllm_url, "model": mllm_model, "family": mllm_family,
                                      "timeout": mllm_timeout})
            chat = StudioChat(make_backend(settings), settings.family, chosen)
        from eligen.pipeline.devices import use_threads
        from eligen.pipeline.generate import EligenPipeline

        with err.status(f"loading {chosen}" + (f" with transformer {transformer}" if transformer else "")):
            pipe = EligenPipeline.from_pretrained(chosen, transformer=transformer, device=device, dtype=dtype,
                                                  offload=offload, quantize=quantize)
        use_threads(None, pipe.device, pipe.transformer)  # one thread for a small model on the CPU
        engine = Engine(pipe, chosen, transformer)
        if initial is not None and "image" in initial:
            path: Path = initial["image"]
            image = source_image(Upload(path.name, path.read_bytes()))
            initial = {"image": {"image": engine.add_image(image), "name": image.name,
                                 "size": list(image.image.size)}}
    studio_api = Studio(engine, page_info(chosen, list(allowed.loras), chat is not None, initial,
                                          engine.no_attention_maps), allowed, chat)
    app = make_app(studio_api, allowed_hosts(host, allow_host or []), auth)
    try:
        sock = listen(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})", 1) from None
    if not _is_local(host):
        err.print(f"warning: listening on {host}: anyone who can reach this machine can use the studio"
                  + ("" if auth else "; consider --auth user:password"))
        if host in ("0.0.0.0", "::") and not allow_host:
            err.print("note: browsers must reach it as localhost or by a name given with --allow-host NAME")
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    err.print(f"eligen studio: http://{shown}:{bound_port}/ (model {chosen}; Ctrl+C stops it)")
    try:
        serve(app, sock)
    finally:
        sock.close()
    err.print("stopped")


def register(app: typer.Typer) -> None:
    """Add `eligen studio` to the `eligen` app."""
    app.command()(studio)
