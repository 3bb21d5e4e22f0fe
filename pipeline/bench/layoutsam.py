"""LayoutSAM-Eval (CreatiLayout, Zhang et al. 2024) as eligen benchmark items, read from the benchmark's own
parquet files (the Hugging Face dataset `HuiZhang0812/LayoutSAM-eval`, split `test`, 5,000 rows in
`data/test-*.parquet`; eligen ships none of it, docs/bench.md says how to get it), or from the Arrow files the
`datasets` library keeps in its cache after `load_dataset` or writes with `save_to_disk`.

Each row has `image_id` (an integer, the item's id here), `global_caption`, three columns that hold Python
list literals as strings: `region_captions` (a short name per region), `detail_region_captions` (a detailed
description per region) and `bbox_list` (per region `[x1, y1, x2, y2]` in pixels of the source image), then the
source image's `width` and `height`, `file_name` (the name the benchmark's own scripts give the generated
image) and the source `image` itself (not read here).

As the benchmark's dataset class does, every box is divided by the source image's width and height and rounded
to 3 decimals; the item's layout is the global caption with each detailed description in its box as a fraction
of the generated image, as its generation script passes them. The files are checked whole before anything is
generated: a missing column, a string that is not a list literal of the expected shape (or nests deeper),
lists of different lengths, a box outside its image, a repeated `image_id` or `file_name` is a LayoutError
naming the file, the row and the field.
"""

from __future__ import annotations

import ast
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..layout import LayoutError, parse_layout
from ..model_defaults import with_model_defaults
from .items import BenchItem, Instance

DATASET_ID = "HuiZhang0812/LayoutSAM-eval"
SPLIT = "test"
SUFFIXES = (".parquet", ".arrow")  # the hub's files; the datasets library's cache and save_to_disk
COLUMNS = ("image_id", "global_caption", "region_captions", "detail_region_captions", "bbox_list", "width",
           "height", "file_name")
LEVEL = "LayoutSAM-Eval"
MAX_LITERAL_CHARS = 200_000  # a row's list literal; the benchmark's are a few kB
MAX_REGIONS = 100
DECIMALS = 3  # the benchmark's dataset class rounds every normalised coordinate to 3 decimals


class DownloadError(RuntimeError):
    """The benchmark could not be fetched from the hub; the message says what to do instead."""


@dataclass(frozen=True)
class Row:
    """One checked row of the benchmark."""

    image_id: int
    global_caption: str
    region_captions: tuple[str, ...]
    detail_region_captions: tuple[str, ...]
    boxes: tuple[tuple[float, float, float, float], ...]  # fractions of the image, rounded as the benchmark does
    file_name: str


def is_layoutsam(path: Path) -> bool:
    """Whether `path` is LayoutSAM-Eval: a parquet or Arrow file, a folder holding such files (at any depth), or
    the dataset's hub id when no such local path exists."""
    if path.is_file():
        return path.suffix in SUFFIXES
    if path.is_dir():
        return any(next(path.rglob(f"*{suffix}"), None) is not None for suffix in SUFFIXES)
    return str(path) == DATASET_ID


def benchmark_files(path: Path) -> list[Path]:
    """The parquet (else Arrow) files of a file or folder, sorted by their path inside it."""
    if path.is_file():
        return [path]
    for suffix in SUFFIXES:
        found = sorted(path.rglob(f"*{suffix}"), key=lambda p: p.relative_to(path).as_posix())
        if found:
            return found
    return []


def download(repo_id: str = DATASET_ID) -> Path:
    """The dataset's parquet files fetched from the Hugging Face hub into its cache (only the `data/` folder);
    the folder they are in."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=[f"data/{SPLIT}-*.parquet"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise DownloadError(f"cannot download {repo_id} from the Hugging Face hub ({exc}); download its data/ "
                            f"folder elsewhere (huggingface-cli download --repo-type dataset {repo_id}) and pass "
                            "that folder") from None


def _shape_error(node: ast.AST, depth: int) -> str | None:
    """None when `node` is a list nested exactly `depth` deep whose leaves are constants, else what is wrong."""
    if depth == 0:
        return None if isinstance(node, ast.Constant) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant)
        ) else f"a {type(node).__name__.lower()} where a plain value belongs"
    if not isinstance(node, ast.List):
        return f"a {type(node).__name__.lower()} where a list belongs"
    for element in node.elts:
        problem = _shape_error(element, depth - 1)
        if problem:
            return problem
    return None


def literal_list(text: Any, depth: int, source: str, field: str) -> list[Any]:
    """A list literal of the benchmark (`['a', 'b']` or `[[1, 2, 3, 4], ...]`), nested exactly `depth` deep,
    parsed without evaluating anything: the parser refuses deep nesting, and only list and constant nodes pass."""
    if not isinstance(text, str):
        raise LayoutError(source, field, f"expected a string holding a list, got {type(text).__name__}")
    if len(text) > MAX_LITERAL_CHARS:
        raise LayoutError(source, field, f"expected a list literal of at most {MAX_LITERAL_CHARS} characters, "
                          f"got {len(text)}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        detail = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
        raise LayoutError(source, field, f"expected a list literal like {_EXAMPLE[depth]}, it does not parse "
                          f"({detail})") from None
    problem = _shape_error(tree.body, depth)
    if problem:
        raise LayoutError(source, field, f"expected a list literal like {_EXAMPLE[depth]}, found {problem}")
    return ast.literal_eval(tree.body)


_EXAMPLE = {1: "['a cat', 'a dog']", 2: "[[x1, y1, x2, y2], ...]"}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _side(value: Any, source: str, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LayoutError(source, field, f"expected a positive integer, got {value!r}")
    return value


def _text(value: Any, source: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LayoutError(source, field, "expected a non-empty string")
    return value


def image_format(file_name: str) -> str | None:
    """The format PIL saves a file of this name in (as the benchmark's generation script saves its images), or
    None when PIL cannot write one."""
    found = Image.registered_extensions().get(Path(file_name).suffix.lower())
    return found if found in Image.SAVE else None


def _file_name(value: Any, source: str, field: str) -> str:
    name = _text(value, source, field)
    if name in (".", "..") or any(c in name for c in "/\\\0") or len(name) > 255:
        raise LayoutError(source, field, f"expected a plain file name (no folders), got {name[:80]!r}")
    if image_format(name) is None:
        raise LayoutError(source, field, f"expected an image file name (.jpg, .png, ...), got {name[:80]!r}")
    return name


def _boxes(value: Any, width: int, height: int, source: str, field: str) -> list[tuple[float, float, float, float]]:
    boxes = []
    for i, box in enumerate(literal_list(value, 2, source, field)):
        if len(box) != 4 or not all(_number(v) for v in box):
            raise LayoutError(source, f"{field}[{i}]", f"expected [x1, y1, x2, y2] of 4 finite numbers, got {box!r}")
        x1, y1, x2, y2 = box
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise LayoutError(source, f"{field}[{i}]", f"expected a box inside the {width}x{height} image with "
                              f"x1 < x2 and y1 < y2, got {box!r}")
        boxes.append((round(x1 / width, DECIMALS), round(y1 / height, DECIMALS), round(x2 / width, DECIMALS),
                      round(y2 / height, DECIMALS)))
    return boxes


def check_row(data: dict[str, Any], source: str, where: str) -> Row:
    """One row as the benchmark's dataset class reads it, or a LayoutError naming `where` (its row) and the field."""
    image_id = data["image_id"]
    if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id < 0:
        raise LayoutError(source, f"{where}.image_id", f"expected a non-negative integer, got {image_id!r}")
    where = f"{where} (image_id {image_id})"
    width, height = _side(data["width"], source, f"{where}.width"), _side(data["height"], source, f"{where}.height")
    names = [_text(v, source, f"{where}.region_captions[{i}]")
             for i, v in enumerate(literal_list(data["region_captions"], 1, source, f"{where}.region_captions"))]
    details = [_text(v, source, f"{where}.detail_region_captions[{i}]") for i, v in enumerate(
        literal_list(data["detail_region_captions"], 1, source, f"{where}.detail_region_captions"))]
    boxes = _boxes(data["bbox_list"], width, height, source, f"{where}.bbox_list")
    if not 1 <= len(boxes) <= MAX_REGIONS:
        raise LayoutError(source, f"{where}.bbox_list", f"expected 1 to {MAX_REGIONS} boxes, got {len(boxes)}")
    if not len(names) == len(details) == len(boxes):
        raise LayoutError(source, where, "expected as many region_captions and detail_region_captions as boxes, "
                          f"got {len(names)}, {len(details)} and {len(boxes)}")
    return Row(image_id, _text(data["global_caption"], source, f"{where}.global_caption"), tuple(names),
               tuple(details), tuple(boxes), _file_name(data["file_name"], source, f"{where}.file_name"))


def _columns(path: Path) -> dict[str, list[Any]]:
    """The benchmark's columns of one parquet or Arrow file (the source images are never decoded)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise LayoutError(str(path), "(file)", "reading LayoutSAM-Eval's files needs pyarrow",
                          "pip install 'eligen[layoutsam]'") from None

    def check(names: list[str]) -> None:
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise LayoutError(str(path), missing[0], f"expected LayoutSAM-Eval's columns {', '.join(COLUMNS)}; "
                              f"{', '.join(missing)} missing")

    kind = "parquet" if path.suffix == ".parquet" else "Arrow (as the datasets library saves)"
    try:
        if path.suffix == ".parquet":
            parquet = pq.ParquetFile(path)
            check(parquet.schema_arrow.names)
            table = parquet.read(columns=list(COLUMNS))
        else:
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_stream(source)
                check(reader.schema.names)
                table = pa.Table.from_batches([batch.select(list(COLUMNS)) for batch in reader])
    except (pa.ArrowException, OSError) as exc:
        raise LayoutError(str(path), "(file)", f"expected a readable {kind} file ({exc})") from None
    return {name: table.column(name).to_pylist() for name in COLUMNS}


def _table_rows(path: Path) -> Iterable[dict[str, Any]]:
    """The rows of one file, the benchmark's columns only."""
    columns = _columns(path)
    for index in range(len(columns[COLUMNS[0]])):
        yield {name: columns[name][index] for name in COLUMNS}


def read_rows(files: list[Path]) -> list[tuple[Row, str]]:
    """Every row of the files in order, checked, with the file it came from; ids and file names unique."""
    if not files:
        raise LayoutError("(benchmark)", "(files)", "expected LayoutSAM-Eval's parquet files, found none")
    rows: list[tuple[Row, str]] = []
    seen_ids: dict[int, str] = {}
    seen_names: dict[str, str] = {}
    for path in files:
        for index, data in enumerate(_table_rows(path)):
            where = f"row {index}"
            row = check_row(data, str(path), where)
            here = f"{path.name} {where}"
            if row.image_id in seen_ids:
                raise LayoutError(str(path), f"{where}.image_id", f"expected unique ids, {row.image_id} is also "
                                  f"{seen_ids[row.image_id]}")
            if row.file_name in seen_names:
                raise LayoutError(str(path), f"{where}.file_name", f"expected unique file names, {row.file_name!r} "
                                  f"is also {seen_names[row.file_name]}'s")
            seen_ids[row.image_id], seen_names[row.file_name] = here, here
            rows.append((row, str(path)))
    return rows


def row_item(row: Row, source: str, overrides: dict[str, Any] | None = None) -> BenchItem:
    """A row as an item: the global caption, each detailed description in its box (fractions); `overrides`
    (model, steps, size, ...) apply, and what they leave out comes from the model's defaults."""
    data = {"prompt": row.global_caption, "units": "fraction",
            "entities": [{"prompt": detail, "box": list(box)} for detail, box in zip(
                row.detail_region_captions, row.boxes, strict=True)]}
    where = f"{source}: image_id {row.image_id}"
    try:
        layout = with_model_defaults(parse_layout({**data, **(overrides or {})}, where))
    except LayoutError as exc:  # e.g. a box rounded to no width: name the row
        raise LayoutError(where, exc.field, exc.expected, exc.hint) from None
    width, height = layout.size
    instances = tuple(Instance(detail, (x1 * width, y1 * height, x2 * width, y2 * height), category=name)
                      for name, detail, (x1, y1, x2, y2) in zip(
                          row.region_captions, row.detail_region_captions, row.boxes, strict=True))
    return BenchItem(id=str(row.image_id), level=LEVEL, layout=layout, instances=instances,
                     base_dir=Path(source).parent, source=source)


@dataclass(frozen=True)
class LayoutSam:
    """The benchmark as read: its items, the file name of each item's image, and the files read."""

    items: list[BenchItem]
    file_names: dict[str, str]  # item id -> the `file_name` the benchmark's scripts give its generated image
    files: list[Path]


def read_layoutsam(path: Path, overrides: dict[str, Any] | None = None) -> LayoutSam:
    """The benchmark's rows as items, in the files' order (the files sorted by path)."""
    files = benchmark_files(path)
    rows = read_rows(files)
    return LayoutSam([row_item(row, source, overrides) for row, source in rows],
                     {str(row.image_id): row.file_name for row, _ in rows}, files)


def file_digests(files: list[Path]) -> tuple[dict[str, str], str]:
    """Each file's SHA-256, and one over all their bytes in order (as `coco_mig.files_sha256`), read in chunks."""
    total = hashlib.sha256()
    digests = {}
    for path in files:
        one = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                one.update(chunk)
                total.update(chunk)
        digests[str(path)] = one.hexdigest()
    return digests, total.hexdigest()
