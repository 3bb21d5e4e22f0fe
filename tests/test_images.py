"""The one image opener: EXIF orientation applied and transparency composited on white, the same in every command
that reads an image a person gives (inpaint's source, transfer's target, references, training samples, the agent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from eligen.pipeline.images import BACKGROUND, open_rgb, to_rgb
from eligen.pipeline.layout import LayoutError
from eligen.pipeline.references import open_reference
from eligen.pipeline.transfer_canvas import read_transfer

EXIF_ORIENTATION = 0x0112


def _rotated(path: Path, stored: tuple[int, int]) -> Path:
    """A PNG stored `stored` (w, h), left half red, with EXIF orientation 6 (shown rotated 90 degrees clockwise)."""
    pixels = np.zeros((stored[1], stored[0], 3), np.uint8)
    pixels[:, : stored[0] // 2] = (255, 0, 0)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(pixels).save(path, exif=exif.tobytes())
    return path


def _transparent(path: Path) -> Path:
    """A 4x2 RGBA PNG: fully transparent red on the left (the colour stored under the alpha), opaque blue on the
    right."""
    pixels = np.zeros((2, 4, 4), np.uint8)
    pixels[:, :2] = (255, 0, 0, 0)
    pixels[:, 2:] = (0, 0, 255, 255)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = open_rgb(_transparent(tmp_path / "a.png"), "a.png", "(image)")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == BACKGROUND == (255, 255, 255)  # not the red stored under alpha 0
    assert image.getpixel((3, 1)) == (0, 0, 255)
    half = to_rgb(Image.new("RGBA", (1, 1), (0, 0, 0, 128)))
    assert half.getpixel((0, 0)) == (127, 127, 127)  # 255 * (1 - 128/255), rounded down by alpha_composite
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 255, 0, 255, 0, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1  # palette entry 1 (red) is transparent
    assert [to_rgb(palette).getpixel((x, 0)) for x in (0, 1)] == [(0, 255, 0), BACKGROUND]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = open_rgb(_rotated(tmp_path / "r.png", (40, 20)), "r.png", "(image)")
    assert image.size == (20, 40)
    assert image.getpixel((10, 5)) == (255, 0, 0) and image.getpixel((10, 35)) == (0, 0, 0)  # red on top, as shown


@pytest.mark.parametrize(("content", "words"), [
    (None, "there is no file at this path"),
    (b"\x89PNG not really", "expected a readable image"),
])
def test_a_missing_or_broken_file_names_the_field(content: bytes | None, words: str, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LayoutError, match=f"layout.yaml: ip_adapter.image: .*{words}"):
        open_rgb(path, "layout.yaml", "ip_adapter.image")


def test_transfer_reads_its_target_as_displayed(tmp_path: Path) -> None:
    """A target stored 80x40 with EXIF orientation 6 is shown 40x80: a box in its lower half is inside it."""
    _rotated(tmp_path / "target.png", (80, 40))
    data = {"model": "black-forest-labs/FLUX.1-dev", "target": "target.png", "prompt": "a tote",
            "entities": [{"prompt": "a logo", "box": [0, 50, 40, 80]}]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data))
    spec, target = read_transfer(tmp_path / "t.yaml")
    assert target.size == (40, 80) and target.getpixel((20, 10)) == (255, 0, 0)
    assert spec.entities[0].box == (0, 50, 40, 80)


def test_references_and_sources_share_the_opener(tmp_path: Path) -> None:
    from eligen_cli.sources import read_source_image

    _transparent(tmp_path / "a.png")
    reference = open_reference("a.png", tmp_path, "layout.yaml", "ip_adapter.image")
    source, _ = read_source_image(tmp_path / "a.png")
    assert reference.getpixel((0, 0)) == source.getpixel((0, 0)) == BACKGROUND


def test_the_studio_reads_uploads_as_the_commands_read_files(tmp_path: Path) -> None:
    from eligen.studio.inputs import Upload, open_image

    upload = Upload("a.png", _transparent(tmp_path / "a.png").read_bytes())
    assert open_image(upload).getpixel((0, 0)) == open_rgb(tmp_path / "a.png", "a.png", "(image)").getpixel((0, 0))
    assert open_image(upload).getpixel((0, 0)) == BACKGROUND
    exif_upload = Upload("r.png", _rotated(tmp_path / "r.png", (6, 4)).read_bytes())
    assert open_image(exif_upload).size == (4, 6)
