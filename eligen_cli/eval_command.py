"""`eligen eval`: generate a benchmark's items over seeds and score them, on one process or many.

A benchmark is any eligen layouts (files or folders) or COCO-MIG's own files. The work, the scorers and the
report are in `eligen.pipeline.bench`; this module reads options, loads the pipeline, splits the work over
processes (accelerate) and prints the tables. No model math here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from eligen import __version__
from eligen.pipeline.layout import LayoutError

from .agent_commands import (
    MllmDeviceOpt,
    MllmFamilyOpt,
    MllmLocalOpt,
    MllmMaxPixelsOpt,
    MllmRetriesOpt,
    MllmTimeoutOpt,
)
from .bench_scorers import SCORER_NAMES, ScorerOptions, auto_scorers, build_scorers
from .common import DeviceOpt, EntityTokensOpt, OverwriteOpt, entity_tokens_value, err, fail, user_errors
from .launching import cuda_available, launch_self, launched
from .sources import LayoutSource, load_source
from .terminal import status, step_progress

if TYPE_CHECKING:
    from PIL import Image

    from eligen.pipeline.bench.items import BenchItem
    from eligen.pipeline.bench.report import Report
    from eligen.pipeline.bench.run import Shard, ShardStats
    from eligen.pipeline.render import Render

RUN_FILE = "run.json"  # what a run's images were generated with; a resumed run must match it
SHOWN = {"success": ("success", "{:.1%}"), "miou": ("mIoU", "{:.3f}"), "iou": ("mIoU", "{:.3f}"),
         "mask_iou": ("mask IoU", "{:.3f}"),
         "coverage": ("coverage", "{:.1%}"), "colour_ok": ("colour", "{:.1%}"),
         "clip_entity": ("entity CLIP", "{:.2f}"), "judge_correct": ("MLLM success", "{:.1%}")}
SHOWN_IMAGE = {"image_success": ("images all right", "{:.1%}"), "clip_global": ("global CLIP", "{:.2f}"),
               "pick_score": ("PickScore", "{:.2f}")}


def _layout_paths(paths: list[Path]) -> list[Path]:
    """Files as given; folders as their *.yaml files, sorted."""
    found = []
    for path in paths:
        inside = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        if not inside:
            raise LayoutError(str(path), "(folder)", "expected layout files (*.yaml) in this folder, it holds none")
        found += inside
    return found


def _check_scorable(src: LayoutSource) -> None:
    """Scorers look at boxes, masks and polygons (not colour-mask regions): refuse others before loading."""
    for i, entity in enumerate(src.layout.entities):
        if entity.color is not None:
            raise LayoutError(src.source, f"entities[{i}]", "expected a box, polygon or mask to score, got a color",
                              "give the region as a mask PNG")
    if not src.layout.entities:
        raise LayoutError(src.source, "entities", "expected at least one entity to score")


def _layout_items(paths: list[Path], overrides: dict[str, Any]) -> tuple[list[BenchItem], dict[str, Any]]:
    """Layout files as items, checked against their models, and what results.json says of the benchmark."""
    from eligen.pipeline.bench.layout_items import item_ids, layout_item
    from eligen.pipeline.layout_warnings import check_layout
    from eligen.pipeline.model_info import scale_factor
    from eligen.pipeline.regions import entity_masks

    files = _layout_paths(paths)
    items = []
    for item_id, path in zip(item_ids(files), files, strict=True):
        src = load_source(path, overrides)
        _check_scorable(src)
        masks = entity_masks(src.layout, src.base_dir, src.source)
        check_layout(src.layout, masks, scale_factor(src.layout.model), src.source)
        items.append(layout_item(item_id, src.layout, masks, src.base_dir, src.source))
    from eligen.pipeline.bench.coco_mig import files_sha256

    return items, {"kind": "layouts", "files": [str(p) for p in files], "sha256": files_sha256(files)}


def _coco_mig_items(path: Path, overrides: dict[str, Any]) -> tuple[list[BenchItem], dict[str, Any]]:
    from eligen.pipeline.bench.coco_mig import benchmark_files, files_sha256, read_coco_mig
    from eligen.pipeline.layout_warnings import check_layout
    from eligen.pipeline.model_info import scale_factor
    from eligen.pipeline.regions import entity_masks

    from .sources import cli_overrides

    items = read_coco_mig(path, cli_overrides(overrides))
    for item in items[:1]:  # every item shares the model and size: one check says what needs saying
        check_layout(item.layout, entity_masks(item.layout, item.base_dir, item.source),
                     scale_factor(item.layout.model), item.source)
    files = benchmark_files(path)
    return items, {"kind": "coco-mig", "files": [str(p) for p in files], "sha256": files_sha256(files)}


def _check_memory(items: list[BenchItem], device: str | None) -> None:
    """The item with the most entities (the largest regional mask) fits where it would run (before any loading)."""
    from eligen.pipeline.memory_estimate import check_memory

    largest = max(items, key=lambda item: (item.layout.size[0] * item.layout.size[1], len(item.layout.entities)))
    check_memory(largest.layout, device, largest.source)


def _items(sources: list[Path], overrides: dict[str, Any]) -> tuple[list[BenchItem], dict[str, Any]]:
    from eligen.pipeline.bench.coco_mig import is_coco_mig
    from eligen.pipeline.bench.layoutsam import is_layoutsam

    own = [p for p in sources if is_coco_mig(p) or is_layoutsam(p)]
    if own and len(sources) > 1:
        raise LayoutError(str(own[0]), "(benchmark)", "expected a benchmark (COCO-MIG, LayoutSAM-Eval) alone, got it "
                          "with other sources", "run each benchmark with its own -o folder")
    if own and is_layoutsam(own[0]):
        from .eval_layoutsam import layoutsam_items

        return layoutsam_items(own[0], overrides)
    return _coco_mig_items(own[0], overrides) if own else _layout_items(sources, overrides)


class _Renderer:
    """Generates items' images with one pipeline per (model, transformer), loaded on first use; an item is prepared
    once for all its seeds (a shard holds every seed of its items, in a row)."""

    def __init__(self, device: str | None, global_only: bool) -> None:
        self.device, self.global_only, self.pipes = device, global_only, {}
        self.prepared: tuple[str, Render] | None = None  # the last item's, by id

    def _prepare(self, item: BenchItem) -> Render:
        from eligen.pipeline.devices import use_threads
        from eligen.pipeline.generate import EligenPipeline
        from eligen.pipeline.render import prepare_render

        if self.prepared is not None and self.prepared[0] == item.id:
            return self.prepared[1]
        key = (item.layout.model, item.layout.transformer)
        if key not in self.pipes:
            with status(f"loading {key[0]}"):
                self.pipes[key] = EligenPipeline.from_pretrained(key[0], transformer=key[1], device=self.device)
                use_threads(None, self.pipes[key].device, self.pipes[key].transformer)  # one for small models
        shown = item.layout.model_copy(update={"entities": []}) if self.global_only else item.layout
        self.prepared = item.id, prepare_render(self.pipes[key], shown, base_dir=item.base_dir, source=item.source,
                                                extra_metadata={"benchmark_item": item.id})
        return self.prepared[1]

    def __call__(self, item: BenchItem, seed: int) -> tuple[Image.Image, dict[str, Any]]:
        result = self._prepare(item).image(seed)
        return result.image, result.metadata


def _state(device: str | None) -> Any:
    """accelerate's state of this launched process (gloo on CPUs, one GPU a process otherwise)."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not cuda_available())


def _shard(device: str | None) -> Shard:
    """This process's shard: all the work, or under accelerate its share."""
    from eligen.pipeline.bench.run import Shard

    if not launched():
        return Shard()
    state = _state(device)
    return Shard(state.process_index, state.num_processes)


def _barrier(device: str | None) -> None:
    if launched():
        _state(device).wait_for_everyone()


def _process_device(device: str | None) -> str | None:
    """`--device`, else under accelerate this process's own device (one GPU each), else the best available."""
    if device is not None or not launched():
        return device
    return str(_state(device).device)


def _summary_table(report: Report, title: str) -> Table:
    """The shown means per level and in total."""
    from eligen.pipeline.bench.report import summary

    levels = {level: summary(images) for level, images in report.levels().items()}
    keys = [k for k in SHOWN if any(k in s["instance_means"] for s in levels.values())]
    shown = {**SHOWN, "iou": ("best IoU", "{:.3f}")} if "miou" in keys else SHOWN  # COCO-MIG: its own mIoU rule
    image_keys = [k for k in SHOWN_IMAGE if any(k in s["image_means"] for s in levels.values())]
    table = Table(title=title)
    for column in ("level", "images", "instances", *(shown[k][0] for k in keys),
                   *(SHOWN_IMAGE[k][0] for k in image_keys)):
        table.add_column(column, justify="left" if column == "level" else "right")
    for level, s in levels.items():
        cells = [shown[k][1].format(s["instance_means"][k]) if k in s["instance_means"] else "-" for k in keys]
        cells += [SHOWN_IMAGE[k][1].format(s["image_means"][k]) if k in s["image_means"] else "-"
                  for k in image_keys]
        table.add_row(level, str(s["images"]), str(s["instances"]), *cells)
    return table


def _stats_line(stats: ShardStats, count: int) -> str:
    where = f"process {stats.process + 1}/{count}: " if count > 1 else ""
    skipped = f" ({stats.skipped} already there)" if stats.skipped else ""
    return f"{where}{stats.stage}d {stats.done} images in {stats.seconds:.1f} s, {stats.per_second:.2f} images/s" + \
        skipped


@contextmanager
def _output_folder(output: Path | None) -> Iterator[Path]:
    """The run's folder: `-o`, else a temporary one removed afterwards."""
    if output is not None:
        yield output
        return
    folder = Path(tempfile.mkdtemp(prefix="eligen-eval-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check_run(out: Path, run: dict[str, Any], overwrite: bool, score_only: bool) -> None:
    """Resume only a run of the same benchmark and options; `--overwrite` starts it again."""
    import json

    from eligen.pipeline.outputs import OutputError

    path = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; -o names a folder for the run")
    if not path.is_file():
        if score_only:
            raise OutputError(f"{out} holds no run ({RUN_FILE}); --score-only scores the images of an earlier run")
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    changed = [k for k in run if before.get(k) != run[k]]
    if changed and not overwrite:
        key = changed[0]
        raise OutputError(f"{out} holds a run with other options ({key}: {before.get(key)!r} there, {run[key]!r} "
                          "now); choose another -o folder, or pass --overwrite to generate it again")
    if changed or (overwrite and not score_only):
        for sub in ("images", "scores"):
            for file in (out / sub).glob("s*_*.*"):
                file.unlink()
        path.unlink()
    for stale in (out / "processes").glob("score-*.json" if score_only else "*.json"):  # from an earlier run
        stale.unlink()


def _reconstructed_args(ctx: typer.Context) -> list[str]:
    """This command's arguments from its parsed values, without --num-processes (for the launched processes)."""
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name in ("num_processes",) or value is None or value is False or value == []:
            continue
        if param.param_type_name == "argument":
            args += [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        elif getattr(param, "is_flag", False):
            args.append(param.opts[-1])
        else:
            for v in value if isinstance(value, list | tuple) else [value]:
                args += [param.opts[-1], str(v)]
    return args


def eval_command(
    ctx: typer.Context,
    sources: Annotated[list[Path], typer.Argument(
        metavar="BENCHMARK", help="Layout YAML files or folders of them (box, polygon or mask regions), a "
        "COCO-MIG folder (MIGC's bench_file/ with mig_bench_anno.yaml, or MIG_Bench's "
        "sample_prompt_color_split.json), or LayoutSAM-Eval (its parquet files, a folder of them, or its hub id "
        "HuiZhang0812/LayoutSAM-eval).")],
    model: Annotated[str | None, typer.Option(
        metavar="MODEL", help="Model folder, hub id or built-in name (overrides the files).")] = None,
    seeds: Annotated[int | None, typer.Option(
        min=1, help="Seeds 0..N-1 per item [default: as the benchmark: 8 for COCO-MIG, 1 for LayoutSAM-Eval; 4 for "
        "layouts].")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    steps: Annotated[int | None, typer.Option(
        help="Sampling steps [default: the file's, else the model's: 16 for shapes, 50 for FLUX.1-dev, 40 for "
        "Qwen-Image].")] = None,
    cfg: Annotated[float | None, typer.Option(
        metavar="SCALE", help="True CFG scale [default: the file's, else the model's: 3.0 for FLUX, 4.0 for "
        "Qwen-Image].")] = None,
    size: Annotated[str | None, typer.Option(
        metavar="WxH", help="Image size [default: the file's, else the model's native size].")] = None,
    transformer: Annotated[str | None, typer.Option(
        metavar="FILE", help="Single-file transformer checkpoint replacing the model's (e.g. a `eligen train --full` "
        "result).")] = None,
    lora: Annotated[str | None, typer.Option(
        metavar="FILE", help="A LoRA to use (replaces the files' `loras`).")] = None,
    entity_tokens: EntityTokensOpt = None,
    global_only: Annotated[bool, typer.Option(
        "--global-only", help="Generate from the global prompt alone (no entities); score against the layout.")]
    = False,
    scorer: Annotated[list[str] | None, typer.Option(
        metavar="|".join(SCORER_NAMES), help="Scorers (repeat for several) [default: auto: the shapes detector for "
        "shapes layouts, coco-mig and clip for COCO-MIG, layoutsam (its VLM questions, --mllm-*), clip and pick "
        "for LayoutSAM-Eval, else clip].")] = None,
    detector_model: Annotated[str | None, typer.Option(
        metavar="ID", help="GroundingDINO weights for coco-mig [default: the benchmark's].")] = None,
    sam_model: Annotated[str | None, typer.Option(metavar="ID", help="SAM weights for coco-mig.")] = None,
    clip_model: Annotated[str | None, typer.Option(metavar="ID", help="CLIP weights for clip.")] = None,
    pick_model: Annotated[str | None, typer.Option(
        metavar="ID", help="PickScore weights and processor for pick [default: yuvalkirstain/PickScore_v1 with "
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K's processor].")] = None,
    mllm_url: Annotated[str | None, typer.Option(
        metavar="URL", help="OpenAI-compatible server of the MLLM judge (judge, layoutsam), e.g. vLLM serving "
        "Qwen2-VL or MiniCPM-V-2.6.")] = None,
    mllm_model: Annotated[str | None, typer.Option(metavar="NAME", help="The judge's model name.")] = None,
    mllm_family: MllmFamilyOpt = None,
    mllm_local: MllmLocalOpt = None,
    mllm_device: MllmDeviceOpt = None,
    mllm_timeout: MllmTimeoutOpt = None,
    mllm_retries: MllmRetriesOpt = None,
    mllm_max_pixels: MllmMaxPixelsOpt = None,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Run folder: images/, scores/, results.json, contact.png; an unfinished run in it "
        "resumes [default: a temporary folder, nothing kept].")] = None,
    score_only: Annotated[bool, typer.Option(
        "--score-only", help="Score the images already in -o (generated elsewhere); generate nothing.")] = False,
    num_processes: Annotated[int, typer.Option(
        min=1, help="Processes to split generation and scoring over (accelerate; one GPU each).")] = 1,
    device: DeviceOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate each benchmark item over several seeds, score every instance, report per level.

    \b
    Examples:
      eligen eval layouts/shapes.yaml --model shapes --seeds 8
      eligen eval heldout-layouts --model shapes --seeds 4 -o eval-out
      eligen eval heldout-layouts --model shapes-base --global-only   # the baseline without entities
      eligen eval MIGC/bench_file -o coco-mig --num-processes 8       # COCO-MIG on 8 GPUs (docs/bench.md)
      eligen eval MIGC/bench_file -o coco-mig --score-only --scorer judge --mllm-url http://127.0.0.1:8000/v1
      eligen eval LayoutSAM-eval/data -o layoutsam --size 512x512 --mllm-url http://127.0.0.1:8000/v1
    """
    if output is None and (score_only or num_processes > 1):
        raise fail("--score-only and --num-processes need -o (the run's folder)", 2)
    overrides: dict[str, Any] = {
        "model": model, "transformer": transformer, "steps": steps, "cfg": cfg,
        "entity_tokens": entity_tokens_value(entity_tokens), "size": _size(size),
        "loras": [{"path": str(Path(lora).resolve()) if Path(lora).is_file() else lora}] if lora else None}
    shard = _shard(device)
    with user_errors():
        items, benchmark = _items(sources, overrides)
        items = items[:limit] if limit else items
        _check_memory(items, device)
        seed_list = list(range(seeds or {"coco-mig": 8, "layoutsam": 1}.get(benchmark["kind"], 4)))
        names = list(scorer or ["auto"])
        mllm = {"family": mllm_family, "local": mllm_local, "device": mllm_device, "timeout": mllm_timeout,
                "retries": mllm_retries, "max_pixels": mllm_max_pixels}
        options = ScorerOptions(detector_model, sam_model, clip_model, mllm_url, mllm_model,
                                _process_device(device), mllm, benchmark.get("file_names", {}), pick_model)
        scorers = build_scorers(auto_scorers(names, items, benchmark["kind"]), options)
        if num_processes > 1 and not launched():  # every input checked once, here, before the processes start
            launch_self("eval", _reconstructed_args(ctx), num_processes, device)
            return
        run = {"benchmark_sha256": benchmark["sha256"], "model": items[0].layout.model, "seeds": len(seed_list),
               "steps": items[0].layout.steps, "cfg": items[0].layout.cfg, "size": list(items[0].layout.size),
               "entity_tokens": items[0].layout.entity_tokens, "global_only": global_only,
               "transformer": items[0].layout.transformer, "lora": lora}
        with _output_folder(output) as out:
            if shard.index == 0:
                _check_run(out, run, overwrite, score_only)
            _barrier(device)
            if not score_only:
                _generate(items, seed_list, out, shard, _Renderer(_process_device(device), global_only), run, device)
                if benchmark["kind"] == "layoutsam":
                    from .eval_layoutsam import export_layoutsam

                    export_layoutsam(items, seed_list, out, shard, benchmark["file_names"])
                    _barrier(device)
            _score(items, seed_list, out, shard, scorers, device)
            if shard.index != 0:
                return
            _report(items, seed_list, out, scorers, {"eligen_version": __version__, "benchmark": benchmark,
                    "options": {**run, "limit": limit},
                    "scorers": [{"name": s.name, **s.describe()} for s in scorers],
                    "processes": shard.count}, output is not None, global_only)


def _size(value: str | None) -> list[int] | None:
    if value is None:
        return None
    width, _, height = value.lower().partition("x")
    if not (width.isdigit() and (height or width).isdigit()):
        raise typer.BadParameter(f"expected WIDTH x HEIGHT like 512x512, got {value!r}", param_hint="--size")
    return [int(width), int(height or width)]


def _generate(items: list[BenchItem], seeds: list[int], out: Path, shard: Shard, render: _Renderer,
              run: dict[str, Any], device: str | None) -> None:
    from eligen.pipeline.bench.run import generate_shard, write_json

    if shard.index == 0:
        write_json(out / RUN_FILE, run)
    where = f" (process {shard.index + 1}/{shard.count})" if shard.count > 1 else ""
    total = len(shard.pairs(items, seeds))
    with step_progress(f"generating{where}", total, "image") as progress:
        stats = generate_shard(items, seeds, out, render, shard, progress)
    err.print(_stats_line(stats, shard.count))
    write_json(out / "processes" / f"generate-{shard.index}.json", {**vars(stats), "per_second": stats.per_second})
    _barrier(device)


def _score(items: list[BenchItem], seeds: list[int], out: Path, shard: Shard, scorers: list, device: str | None
           ) -> None:
    from eligen.pipeline.bench.run import score_shard, write_json

    where = f" (process {shard.index + 1}/{shard.count})" if shard.count > 1 else ""
    try:
        with step_progress(f"scoring{where}", len(shard.pairs(items, seeds)), "image") as progress:
            stats = score_shard(items, seeds, out, scorers, shard, progress)
    except FileNotFoundError as exc:
        raise fail(exc, 1) from None
    except OSError as exc:  # a scorer's weights not found or not downloadable (transformers raises OSError)
        raise fail(f"a scorer could not load its model: {exc}\nthe generated images are kept in {out / 'images'}; "
                   "once the model is reachable, run the same command with --score-only", 1) from None
    if stats.done:
        err.print(_stats_line(stats, shard.count))
    write_json(out / "processes" / f"score-{shard.index}.json", {**vars(stats), "per_second": stats.per_second})
    _barrier(device)


def _report(items: list[BenchItem], seeds: list[int], out: Path, scorers: list, header: dict[str, Any],
            keep: bool, global_only: bool) -> None:
    from eligen.pipeline.bench.report import collect, contact_sheet, results
    from eligen.pipeline.bench.run import write_json
    from eligen.pipeline.outputs import save_png

    report = collect(items, seeds, out, scorers)
    title = f"{len(items)} items x {len(seeds)} seeds" + (", global prompt only" if global_only else "")
    console = Console()
    console = console if console.is_terminal else Console(width=160)  # a log: no wrap
    console.print(_summary_table(report, title))
    if any(s.name == "layoutsam-vqa" for s in scorers):
        from .eval_layoutsam import layoutsam_table

        header["layoutsam"] = layoutsam_table(report, console, title)
    if not keep:
        return
    stats = sorted((out / "processes").glob("*.json"))
    header["throughput"] = [json.loads(p.read_text(encoding="utf-8")) for p in stats]
    write_json(out / "results.json", results(report, header))
    save_png(contact_sheet(report, out, columns=len(seeds) * max(1, 8 // len(seeds))), out / "contact.png")
    err.print(f"wrote {out / 'results.json'} and {out / 'contact.png'}")


def register(app: typer.Typer) -> None:
    """Add `eval` to the app."""
    app.command("eval")(eval_command)
