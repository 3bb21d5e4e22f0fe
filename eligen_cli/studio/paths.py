"""Which files a layout from the browser may name: uploaded files (inline PNGs) and the names the person listed
when starting the studio (`--lora`, `--allow-file`). Every path field of a posted layout is checked here, before
the layout is parsed, so that nothing else on the server is ever opened or fetched from the hub for a browser:

* `entities[i].mask`, `color_mask`: an inline PNG (`data:image/png;base64,...`, what the page and its uploads send)
  or an allowed file;
* `entities[i].reference.image`, `ip_adapter.path`, `ip_adapter.image`, `ip_adapter.image_encoder`: an allowed file;
* `loras[i]`, `entities[i].loras[j]`: a LoRA the studio was started with (`path`, or `path` and `file` joined as
  `repo-id/path/in/repo`);
* `model` and `transformer`: the studio's own (or absent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eligen.pipeline.layout import DATA_URL_PREFIX, Layout, LayoutError

HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*")  # repo-id or repo-id/path/in/repo


@dataclass(frozen=True)
class Allowed:
    """The names a browser's layout may use: LoRAs (`--lora`) and other files (`--allow-file`), each an absolute
    local path or a hub name, exactly as the page lists them."""

    loras: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


def allowed_name(spec: str, option: str) -> str:
    """A name given on the command line as the page will use it: an existing local file or folder as its absolute
    path, else a hub name (`repo-id` or `repo-id/path/in/repo`); anything else is a LayoutError naming `option`."""
    local = Path(spec).expanduser()
    if local.exists():
        return str(local.resolve())
    if HUB_NAME.fullmatch(spec) and ".." not in spec.split("/"):
        return spec
    raise LayoutError(option, spec, "expected an existing file or folder, or a hub name (repo-id/path/in/repo)")


def model_loras(model: str) -> tuple[str, ...]:
    """The LoRAs a model uses when a layout names none (the EliGen LoRA of FLUX.1-dev and Qwen-Image), as the page
    sends them back from a result it restores: the studio's own choice, so always allowed."""
    from eligen.pipeline.hub import DEFAULT_LORAS

    return tuple(f"{spec.path}/{spec.file}" if spec.file else spec.path for spec in DEFAULT_LORAS.get(model, []))


def names_in(layout: Layout, base_dir: Path) -> Allowed:
    """The files a layout opened from the command line names (its LoRAs, IP-Adapter, image encoder and reference
    images), as the page will send them back: the person chose them, so the page may use them."""
    from eligen.pipeline.references import with_absolute_paths

    layout = with_absolute_paths(layout, base_dir)
    loras = []
    for spec in [*(layout.loras or []), *(s for e in layout.entities for s in e.loras or [])]:
        local = (base_dir / Path(spec.path).expanduser()).resolve()
        loras.append(str(local) if spec.file is None and local.is_file()
                     else f"{spec.path}/{spec.file}" if spec.file else spec.path)
    adapter = layout.ip_adapter
    files = [adapter.path, adapter.image, adapter.image_encoder] if adapter is not None else []
    files += [e.reference.image for e in layout.entities if e.reference is not None]
    return Allowed(tuple(loras), tuple(f for f in files if f is not None))


def _refuse(source: str, field: str, value: str, allowed: tuple[str, ...], option: str, inline: bool) -> LayoutError:
    what = "an inline PNG uploaded from the page or " if inline else ""
    listed = ", ".join(allowed) or "none"
    return LayoutError(source, field, f"expected {what}a file the studio was started with ({option}), got "
                       f"{value[:80]!r}", f"the studio reads no other file on the server; its {option} list: {listed}")


def _file(data: Any, key: str, field: str, allowed: Allowed, source: str, inline: bool = False) -> None:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str):
        return  # absent, or a type the layout schema explains
    if inline and value.startswith(DATA_URL_PREFIX):
        return
    if value not in allowed.files:
        raise _refuse(source, field, value, allowed.files, "--allow-file", inline)


def _loras(data: dict[str, Any], allowed: Allowed, source: str, field: str = "loras") -> dict[str, Any]:
    """The LoRAs of a layout or of one entity (`field` names them) checked against the allowed ones;
    `repo-id/path/in/repo.safetensors` becomes `path: repo-id` with `file:` as the pipeline reads a hub LoRA."""
    loras = data.get("loras")
    if not isinstance(loras, list):
        return data
    checked = []
    for i, spec in enumerate(loras):
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str) \
                or not isinstance(spec.get("file", ""), str):
            checked.append(spec)  # the schema explains what is wrong
            continue
        name = f"{spec['path']}/{spec['file']}" if spec.get("file") else spec["path"]
        if name not in allowed.loras:
            raise _refuse(source, f"{field}[{i}].path", name, allowed.loras, "--lora", False)
        parts = name.split("/")
        if not Path(name).is_absolute() and len(parts) >= 3:
            spec = {**spec, "path": "/".join(parts[:2]), "file": "/".join(parts[2:])}
        checked.append(spec)
    return {**data, "loras": checked}


def checked_paths(data: dict[str, Any], allowed: Allowed, model: str, transformer: str | None, source: str
                  ) -> dict[str, Any]:
    """Layout data whose every path is an inline PNG or an allowed name (a LayoutError naming the first field that
    is not), on the studio's model and transformer."""
    for key, own in (("model", model), ("transformer", transformer)):
        if key in data and data[key] != own:
            raise LayoutError(source, key, f"expected the studio's own {key} ({own or 'none'}) or no {key}, got "
                              f"{str(data[key])[:80]!r}", f"the {key} is chosen when the studio starts")
    _file(data, "color_mask", "color_mask", allowed, source, inline=True)
    entities = data.get("entities")
    checked_entities = []
    for i, entity in enumerate(entities if isinstance(entities, list) else []):
        if isinstance(entity, dict):
            _file(entity, "mask", f"entities[{i}].mask", allowed, source, inline=True)
            _file(entity.get("reference"), "image", f"entities[{i}].reference.image", allowed, source)
            entity = _loras(entity, allowed, source, f"entities[{i}].loras")
        checked_entities.append(entity)
    if isinstance(entities, list):
        data = {**data, "entities": checked_entities}
    adapter = data.get("ip_adapter")
    for key in ("path", "image", "image_encoder"):
        _file(adapter, key, f"ip_adapter.{key}", allowed, source)
    return _loras(data, allowed, source)
