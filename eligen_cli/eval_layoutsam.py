"""What `eligen eval` does for LayoutSAM-Eval alone: read (or download) the benchmark, write its images as the
benchmark's own scripts name them, and print its per-dimension table. The reading, the protocol and the judge are
in `eligen.pipeline.bench.layoutsam*` and `eligen.agent.layoutsam_judge`; no model math here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from .common import err, fail
from .sources import cli_overrides
from .terminal import status

if TYPE_CHECKING:
    from eligen.pipeline.bench.items import BenchItem
    from eligen.pipeline.bench.report import Report
    from eligen.pipeline.bench.run import Shard

ALL_YES_WARNING = 20  # usable answers, all yes, from which the judge itself is doubted


def layoutsam_items(path: Path, overrides: dict[str, Any]) -> tuple[list[BenchItem], dict[str, Any]]:
    """The benchmark's items (a missing local path is its hub id: downloaded first), and what results.json says
    of it: its files with their SHA-256 and each item's image file name."""
    from eligen.pipeline.bench.layoutsam import DATASET_ID, DownloadError, download, file_digests, read_layoutsam
    from eligen.pipeline.layout_warnings import check_layout
    from eligen.pipeline.model_info import scale_factor
    from eligen.pipeline.regions import entity_masks

    if not path.exists():
        try:
            with status(f"downloading {path} from the Hugging Face hub"):
                path = download(str(path))
        except DownloadError as exc:
            raise fail(exc, 1) from None
    bench = read_layoutsam(path, cli_overrides(overrides))
    for item in bench.items[:1]:  # every item shares the model and size
        check_layout(item.layout, entity_masks(item.layout, item.base_dir, item.source),
                     scale_factor(item.layout.model), item.source)
    digests, total = file_digests(bench.files)
    return bench.items, {"kind": "layoutsam", "dataset": DATASET_ID, "files": [str(p) for p in bench.files],
                         "sha256": total, "files_sha256": digests, "file_names": bench.file_names}


def export_layoutsam(items: list[BenchItem], seeds: list[int], out: Path, shard: Shard,
                     file_names: dict[str, str]) -> None:
    """This process's images again, named and encoded as the benchmark's own scripts expect
    (layoutsam-images/s<seed>/<file_name>)."""
    from eligen.pipeline.bench.layoutsam_protocol import export_images

    export_images(items, seeds, out, file_names, shard)


def layoutsam_table(report: Report, console: Console, title: str) -> dict[str, Any]:
    """Print the four scores (yes over all regions, in %) with the counts behind them; return them."""
    from eligen.pipeline.bench.layoutsam_protocol import aggregate

    summary = aggregate([row for image in report.images for row in image.instances])
    table = Table(title=f"LayoutSAM-Eval, {title}")
    for column in ("dimension", "score", "yes", "no", "failed", "not asked", "regions"):
        table.add_column(column, justify="left" if column == "dimension" else "right")
    for dimension, s in summary.items():
        score = "-" if s["score"] is None else f"{s['score']:.2f}"
        table.add_row(dimension, score, *(str(s[k]) for k in ("yes", "no", "failed", "not asked", "regions")))
    console.print(table)
    failed = sum(s["failed"] for s in summary.values())
    if failed:
        err.print(f"warning: {failed} LayoutSAM-Eval answers failed (unusable or no answer) and count as not yes; "
                  "results.json has each one's answers and error")
    usable = sum(s["yes"] + s["no"] for s in summary.values())
    if usable >= ALL_YES_WARNING and all(s["no"] == 0 for s in summary.values()):
        err.print(f"warning: the judge answered yes to all {usable} usable answers; check it on images that should "
                  "fail before trusting these scores")
    return summary
