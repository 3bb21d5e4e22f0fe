"""The IP-Adapter options of the rendering commands (`--ip-adapter FILE --ip-image IMAGE`), as a layout's
`ip_adapter` (docs/styled-entities.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

IPAdapterOpt = Annotated[str | None, typer.Option(
    "--ip-adapter", metavar="FILE", help="IP-Adapter file (InstantX or XLabs FLUX format, told from the file): a local "
    "file or hub-repo-id/path/in/repo (replaces the file's `ip_adapter`).")]
IPImageOpt = Annotated[Path | None, typer.Option(
    "--ip-image", metavar="IMAGE", help="Global reference image of --ip-adapter.")]
IPScaleOpt = Annotated[float | None, typer.Option(
    "--ip-scale", metavar="SCALE", help="Scale of the --ip-image reference, 0 turns it off [default: 1.0].")]
IPEncoderOpt = Annotated[str | None, typer.Option(
    "--ip-encoder", metavar="MODEL", help="Image encoder folder or hub id [default: the adapter format's own: "
    "google/siglip-so400m-patch14-384 for InstantX, openai/clip-vit-large-patch14 for XLabs].")]


def ip_adapter_override(path: str | None, image: Path | None, scale: float | None, encoder: str | None
                        ) -> dict[str, Any] | None:
    """The options as a layout's `ip_adapter` (local paths made absolute), or None when --ip-adapter is not given."""
    if path is None:
        given = [name for name, value in (("--ip-image", image), ("--ip-scale", scale), ("--ip-encoder", encoder))
                 if value is not None]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} given without --ip-adapter", param_hint="--ip-adapter")
        return None
    spec: dict[str, Any] = {"path": str(Path(path).resolve()) if Path(path).is_file() else path}
    if image is not None:
        spec["image"] = str(image.resolve())
    if scale is not None:
        spec["scale"] = scale
    if encoder is not None:
        spec["image_encoder"] = str(Path(encoder).resolve()) if Path(encoder).is_dir() else encoder
    return spec
