"""Measure every number docs/shapes.md gives for the built-in `shapes` model, in one command.

    python scripts/shapes_claims.py [--model shapes] [--transformer FILE] [--runs shapes-claims] [--size 128]
        [--jobs 1] [--threads 1] [--skip PARTS] [--contact docs/images/shapes-contact.png] [--figures docs/images]
        [--quick]

Every step writes into the work folder RUNS (its output in RUNS/logs/) and is skipped when its result is there, so
the same command continues an interrupted run (`eligen eval` itself resumes an unfinished one image by image):

1. layout sets (`eligen data shapes --size SIZE --layouts ...`): the held-out set of the page's protocol
   (`--n 64 --seed 999 --entities 2-3`), the same scenes with `--regions polygon` and `--regions mask`, 4 entities
   (`--n 64 --seed 997 --entities 4`) and 5-6 entities (`--n 32 --seed 998 --entities 5-6`), in RUNS/layouts/;
2. `eligen eval` on each, at the model's own steps and CFG (its `eligen.json`), into RUNS/eval/NAME: `protocol`,
   `polygon`, `mask`, `four`, `many` (seeds 0-3), `seeds8` (the held-out set over seeds 0-7: it starts from the
   protocol run's images and generates seeds 4-7 only) and `auto` (`--entity-tokens auto`, seeds 0-3);
3. `inpaint`: scripts/shapes_inpaint_eval.py (32 scenes, seeds 0-3, 24 steps) into RUNS/inpaint.json;
4. `figures`: scripts/shapes_figures.py (layouts/shapes.yaml over seeds 0-7, the inpainting figure) into the
   `--figures` folder, its detector counts into RUNS/figures.json;
5. `contact`: the contact sheet of the first 16 held-out layouts x seeds 0-1 from the protocol run's images,
   drawn as `eligen eval`'s contact.png draws them, at `--contact`;
6. the summary: per-shape rates (scripts/shapes_eval_summary.py) of every run and each target met or not (2-3
   entities: success >= 85%, mIoU >= 0.70, each shape >= 75%; 4 entities, polygon and mask regions >= 75%;
   inpainting: the new entity >= 80% with every pixel outside kept), printed as markdown and written to
   RUNS/summary.md and RUNS/summary.json.

`--skip polygon,mask,four,many,seeds8,auto,inpaint,figures,contact` leaves parts out (the protocol run is always
made). `--quick` tries everything on tiny sets (4 layouts, 1 seed, 4 steps) into RUNS, the images too.
`--jobs N` runs N steps side by side, each a process with `--threads` torch threads (default OMP_NUM_THREADS, else
1: on this small model one thread per process is fastest, and two threads on a busy CPU are many times slower).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from shapes_eval_summary import summary

from eligen.pipeline.bench.layout_items import item_ids, layout_item
from eligen.pipeline.bench.report import Report, ScoredImage, contact_sheet
from eligen.pipeline.layout import load_layout
from eligen.pipeline.model_info import declaration, default_size, model_folder
from eligen.pipeline.outputs import save_png, write_atomic
from eligen.pipeline.regions import entity_masks

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PARTS = ("polygon", "mask", "four", "many", "seeds8", "auto", "inpaint", "figures", "contact")
CONTACT_LAYOUTS, CONTACT_SEEDS, CONTACT_CELL = 16, 2, 320  # the docs' contact sheet: 4 layouts x 2 seeds a row


@dataclass(frozen=True)
class LayoutSet:
    n: int
    seed: int
    entities: str
    regions: str = "box"


@dataclass(frozen=True)
class EvalRun:
    layouts: str  # a LayoutSet's name
    seeds: int
    options: tuple[str, ...] = ()


SETS = {"heldout": LayoutSet(64, 999, "2-3"), "polygon": LayoutSet(64, 999, "2-3", "polygon"),
        "mask": LayoutSet(64, 999, "2-3", "mask"), "four": LayoutSet(64, 997, "4"), "many": LayoutSet(32, 998, "5-6")}
EVALS = {"protocol": EvalRun("heldout", 4), "polygon": EvalRun("polygon", 4), "mask": EvalRun("mask", 4),
         "four": EvalRun("four", 4), "many": EvalRun("many", 4), "seeds8": EvalRun("heldout", 8),
         "auto": EvalRun("heldout", 4, ("--entity-tokens", "auto"))}
QUICK_N, QUICK_STEPS = 4, 4
TARGETS = [  # (what, run, key, threshold); a key of the run's summary
    ("2-3 entities: success >= 85%", "protocol", "success", 0.85),
    ("2-3 entities: mIoU >= 0.70", "protocol", "mIoU", 0.70),
    ("circles >= 75%", "protocol", "circles", 0.75),
    ("squares >= 75%", "protocol", "squares", 0.75),
    ("triangles >= 75%", "protocol", "triangles", 0.75),
    ("4 entities: success >= 75%", "four", "success", 0.75),
    ("polygon regions: success >= 75%", "polygon", "success", 0.75),
    ("mask regions: success >= 75%", "mask", "success", 0.75),
]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class Steps:
    """Runs the steps' commands, each with its output in RUNS/logs/STEP.log and OMP_NUM_THREADS=`threads`, and keeps
    their wall times in RUNS/timings.json (added up across resumed runs)."""

    def __init__(self, runs: Path, threads: int) -> None:
        self.path, self.logs = runs / "timings.json", runs / "logs"
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.seconds: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.lock = threading.Lock()

    def run(self, step: str, command: list[str]) -> None:
        """Run a command; RuntimeError (with its log's end) when it fails."""
        log_file = self.logs / f"{step.replace(' ', '-')}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log(f"{step}: {' '.join(command)} (output in {log_file})")
        start = time.perf_counter()
        with log_file.open("w", encoding="utf-8") as output:
            code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=self.env).returncode
        if code != 0:
            tail = "\n".join(log_file.read_text(encoding="utf-8").splitlines()[-15:])
            raise RuntimeError(f"{step} failed (exit {code}): {' '.join(command)}\n{tail}")
        seconds = time.perf_counter() - start
        log(f"{step}: done in {seconds:.0f} s")
        with self.lock:
            self.seconds[step] = self.seconds.get(step, 0.0) + seconds
            write_text(self.path, json.dumps(self.seconds, indent=1) + "\n")


def weights_sha256(model: str, transformer: Path | None) -> str:
    """The transformer weights measured: the --transformer file, else the model folder's safetensors."""
    files = [transformer] if transformer else sorted((Path(model_folder(model)) / "transformer").glob("*.safetensors"))
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def check_runs(runs: Path, setup: dict[str, Any]) -> str | None:
    """RUNS keeps what it measured (setup.json). Another run's folder is refused (the message), as its finished steps
    would be skipped and their numbers reported as these weights'."""
    path = runs / "setup.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in setup if before.get(k) != setup[k]]
        if changed:
            return (f"--runs {runs} holds measurements of other weights or options ({changed[0]}: "
                    f"{before.get(changed[0])!r} there, {setup[changed[0]]!r} now); choose another --runs folder")
    runs.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(setup, indent=1) + "\n")
    return None


def make_sets(runs: Path, size: int, quick: bool, wanted: set[str], steps: Steps) -> None:
    for name in (n for n in SETS if n in wanted):
        spec = SETS[name]
        data, layouts = runs / "data" / name, runs / "layouts" / name
        if (data / "metadata.jsonl").is_file():  # written last: the set is complete
            continue
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(layouts, ignore_errors=True)
        steps.run(f"data {name}", [
            sys.executable, "-m", "eligen", "data", "shapes", "-o", str(data), "--n", str(QUICK_N if quick else spec.n),
            "--seed", str(spec.seed), "--entities", spec.entities, "--size", str(size), "--layouts", str(layouts),
            "--regions", spec.regions])


def start_from(protocol: Path, out: Path, seeds: int) -> None:
    """Start `out`, the held-out run over more seeds, from the protocol run's images and scores (hard links): `eligen
    eval` then generates only the missing seeds. Its run.json is the protocol's with the new seed count, so eval
    refuses to resume if any other option of the two runs differs."""
    if not (protocol / "results.json").is_file():
        raise RuntimeError(f"eval seeds8 needs the finished protocol run in {protocol}")
    if (out / "run.json").is_file():
        return
    for sub in ("images", "scores"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for file in (protocol / sub).iterdir():
            target = out / sub / file.name
            if not target.exists():
                try:
                    os.link(file, target)
                except OSError:  # another file system
                    shutil.copy2(file, target)
    before = json.loads((protocol / "run.json").read_text(encoding="utf-8"))
    write_text(out / "run.json", json.dumps({**before, "seeds": seeds}, indent=1) + "\n")


def run_eval(args: argparse.Namespace, model_args: list[str], name: str, steps: Steps,
             protocol_done: threading.Event) -> None:
    spec, out = EVALS[name], args.runs / "eval" / name
    seeds = seed_count(spec.seeds, args.quick)
    try:
        if name == "seeds8":
            protocol_done.wait()
            start_from(args.runs / "eval" / "protocol", out, seeds)
        steps.run(f"eval {name}", [
            sys.executable, "-m", "eligen", "eval", str(args.runs / "layouts" / spec.layouts), *model_args,
            "--seeds", str(seeds), *(["--steps", str(QUICK_STEPS)] if args.quick else []), "--device", "cpu",
            "-o", str(out), *spec.options])
    finally:
        if name == "protocol":
            protocol_done.set()


def seed_count(seeds: int, quick: bool) -> int:
    return seeds // 4 if quick else seeds  # quick: 1 seed, and 2 for the run over more seeds


def write_contact(args: argparse.Namespace, path: Path) -> None:
    """The first held-out layouts x seeds of the protocol run, as `eligen eval`'s contact.png draws them."""
    protocol = args.runs / "eval" / "protocol"
    files = sorted((args.runs / "layouts" / "heldout").glob("*.yaml"))
    seeds = range(min(CONTACT_SEEDS, seed_count(EVALS["protocol"].seeds, args.quick)))
    images = []
    for item_id, file in list(zip(item_ids(files), files, strict=True))[:CONTACT_LAYOUTS]:
        layout = load_layout(file, {"model": args.model})
        item = layout_item(item_id, layout, entity_masks(layout, file.parent, str(file)), file.parent, str(file))
        images += [ScoredImage(item, seed, [], {}) for seed in seeds]
    columns = 4 * len(seeds)
    save_png(contact_sheet(Report(images), protocol, columns=columns, cell=CONTACT_CELL), path)
    log(f"wrote {path}")


def eval_summary(out: Path) -> dict[str, Any]:
    """A run's per-shape and per-seed summary, its levels and its generation speed."""
    report = json.loads((out / "results.json").read_text(encoding="utf-8"))
    levels = {level: {"images": v["images"], "entities": v["instances"],
                      **{k: v["instance_means"][k] for k in ("success", "iou", "mask_iou", "coverage")
                         if k in v["instance_means"]}}
              for level, v in report["levels"].items()}
    generated = [t for t in report.get("throughput", []) if t["stage"] == "generate" and t["done"]]
    seconds = sum(t["seconds"] for t in generated)
    return {"options": report["options"], **summary(report["per_image"]), "levels": levels,
            "generated": sum(t["done"] for t in generated), "generate_s": seconds}


def pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def num(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def seed_range(summary: dict[str, Any]) -> str:
    seeds = summary["options"]["seeds"]
    return "seed 0" if seeds == 1 else f"seeds 0-{seeds - 1}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def markdown(results: dict[str, Any]) -> str:
    evals, setup = results["evals"], results["setup"]
    lines = [f"# The shapes model's claims: `{setup['model']}`" +
             (f" with `{setup['transformer']}`" if setup["transformer"] else ""), "",
             f"{setup['size']}x{setup['size']} scenes, {setup['steps']} steps, the model's CFG; measured "
             f"{results['finished']}{' (--quick: tiny sets, not the protocol)' if setup['quick'] else ''}.", ""]
    if "protocol" in evals:
        p = evals["protocol"]
        lines += [f"## Held-out layouts (2-3 entities, seed 999), {seed_range(p)}", ""]
        lines += table(["", "model", "mIoU", "success", "circles", "squares", "triangles"], [
            ["(c)", f"`{setup['model']}`", num(p["mIoU"]), pct(p["success"]), pct(p.get("circles")),
             pct(p.get("squares")), pct(p.get("triangles"))]])
        lines += table(["level", "images", "entities", "mIoU", "success"], [
            [level, str(v["images"]), str(v["entities"]), num(v["iou"]), pct(v["success"])]
            for level, v in p["levels"].items()])
    region_rows = [[label, num(evals[name]["mIoU"]), pct(evals[name]["success"]),
                    num(evals[name]["levels"]["all"].get("mask_iou")),
                    pct(evals[name]["levels"]["all"].get("coverage"))]
                   for name, label in (("protocol", "boxes (row c)"), ("polygon", "polygons (outlines)"),
                                       ("mask", "masks (exact)")) if name in evals]
    if len(region_rows) > 1:
        lines += ["## Region shapes (trained on boxes)", ""]
        lines += table(["regions", "mIoU", "success", "mask IoU", "coverage"], region_rows)
    more = [[f"{title}: {level}", str(v["images"]), str(v["entities"]), num(v["iou"]), pct(v["success"])]
            for name, title in (("four", "4 entities (seed 997)"), ("many", "5-6 entities (seed 998)"))
            if name in evals for level, v in evals[name]["levels"].items() if len(evals[name]["levels"]) > 2 or
            level != "all"]
    if more:
        lines += ["## More entities than trained", ""]
        lines += table(["layouts", "images", "entities", "mIoU", "success"], more)
    if "seeds8" in evals:
        s = evals["seeds8"]
        lines += [f"## Seed robustness (held-out layouts, {seed_range(s)})", "",
                  f"success {pct(s['success'])}, mIoU {num(s['mIoU'])}; the success rate of single seeds varies with a "
                  f"standard deviation of {100 * s['success std over seeds']:.1f} points; "
                  f"{pct(s['layouts all right, mean over seeds'])} of the layouts have every entity right on average "
                  f"over the seeds, {pct(s['layouts all right in >= half the seeds'])} in at least half of them.", ""]
    if "auto" in evals and "protocol" in evals:
        lines += ["## `entity_tokens`", ""]
        lines += table(["entity_tokens", "mIoU", "success"], [
            ["`max` (row c)", num(evals["protocol"]["mIoU"]), pct(evals["protocol"]["success"])],
            ["`auto`", num(evals["auto"]["mIoU"]), pct(evals["auto"]["success"])]])
    if "inpaint" in results:
        i = results["inpaint"]
        lines += ["## Inpainting", "",
                  f"{i['scenes']} held-out scenes x {i['seeds']} seeds, {i['steps']} steps, fusion {i['fusion']}, "
                  f"dilate {i['dilate']} px, feather {i['feather']} px: the new entity right in "
                  f"{pct(i['new_entity_right'])}; the other shapes all still right in {pct(i['others_all_right'])}; "
                  f"pixels farther than dilate + feather from the region kept exactly: {i['kept_mean']:.2%} on "
                  f"average, {i['kept_min']:.2%} at least.", ""]
    if "figures" in results:
        g, f = results["figures"]["generate"], results["figures"]["inpaint"]
        lines += ["## Figures", "",
                  f"layouts/shapes.yaml over seeds 0-{g['seeds'] - 1}: {g['right']} of {g['entities']} entities right. "
                  f"The inpainting figure: the green circle right in {f['new_right']}/{f['seeds']} seeds, the other "
                  f"two shapes intact in {f['others_intact']}/{f['seeds']}, the left {f['left_columns']} columns the "
                  f"source's (last seed): {f['left_columns_kept_last_seed']}.", ""]
    lines += ["## Targets", ""]
    lines += table(["target", "measured", ""], [[t["target"], t["measured"], "met" if t["met"] else "**not met**"]
                                                for t in results["targets"]])
    lines += ["## Wall time", ""]
    lines += table(["step", "s"], [[step, f"{s:.0f}"] for step, s in results["timings"].items()])
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    evals, out = results["evals"], []
    for what, name, key, threshold in TARGETS:
        if name in evals and key in evals[name]:
            value = evals[name][key]
            out.append({"target": what, "measured": num(value) if key == "mIoU" else pct(value),
                        "value": value, "met": value >= threshold})
    if "inpaint" in results:
        i = results["inpaint"]
        out.append({"target": "inpainting: new entity right >= 80%, every pixel outside kept",
                    "measured": f"{pct(i['new_entity_right'])}, kept {i['kept_min']:.2%} at least",
                    "value": i["new_entity_right"], "met": i["new_entity_right"] >= 0.8 and i["kept_min"] == 1.0})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="model folder or built-in name")
    parser.add_argument("--transformer", type=Path, help="single-file transformer replacing the model's")
    parser.add_argument("--runs", type=Path, default=Path("shapes-claims"), help="work folder")
    parser.add_argument("--size", type=int, default=128, help="the scenes' side in pixels (the model's world)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {','.join(PARTS)}")
    parser.add_argument("--contact", type=Path, help="the contact sheet [default: docs/images/shapes-contact.png; "
                        "RUNS/shapes-contact.png with --quick]")
    parser.add_argument("--figures", type=Path, help="folder for shapes_figures.py's PNGs [default: docs/images; "
                        "RUNS/figures with --quick]")
    parser.add_argument("--jobs", type=int, default=1, help="steps run side by side (each its own process)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="torch threads of each step's process [default: OMP_NUM_THREADS, else 1]")
    parser.add_argument("--quick", action="store_true", help="tiny sets, 1 seed, 4 steps: to try the script")
    args = parser.parse_args()
    skip = {p for p in args.skip.split(",") if p}
    if skip - set(PARTS):
        parser.error(f"--skip: expected some of {','.join(PARTS)}, got {','.join(sorted(skip - set(PARTS)))}")
    model = str(Path(args.model).resolve()) if Path(args.model).is_dir() else args.model
    declared = default_size(model)
    if declared != (args.size, args.size):
        parser.error(f"--model {args.model} declares size {declared[0]}x{declared[1]} (its eligen.json), not "
                     f"{args.size}x{args.size}: give --size {declared[0]}")
    if args.transformer is not None and not args.transformer.is_file():
        parser.error(f"--transformer {args.transformer}: expected a .safetensors file, it does not exist")
    args.model = model
    model_args = ["--model", model] + (["--transformer", str(args.transformer.resolve())] if args.transformer else [])
    images = args.runs if args.quick else REPO / "docs" / "images"
    contact = args.contact or images / "shapes-contact.png"
    figures = args.figures or (images / "figures" if args.quick else images)
    setup = {"model": model, "transformer": str(args.transformer.resolve()) if args.transformer else None,
             "weights_sha256": weights_sha256(model, args.transformer), "size": args.size, "quick": args.quick,
             "steps": QUICK_STEPS if args.quick else declaration(model).steps}
    refused = check_runs(args.runs, setup)
    if refused:
        parser.error(refused)

    steps = Steps(args.runs, args.threads)
    evals = ["protocol", *(e for e in EVALS if e != "protocol" and e not in skip)]
    make_sets(args.runs, args.size, args.quick, {EVALS[e].layouts for e in evals}, steps)
    protocol_done = threading.Event()
    if (args.runs / "eval" / "protocol" / "results.json").is_file():
        protocol_done.set()
    jobs: list[Callable[[], None]] = [partial(run_eval, args, model_args, name, steps, protocol_done) for name in evals
                                      if not (args.runs / "eval" / name / "results.json").is_file()]
    quick = ["--n", "2", "--seeds", "1", "--steps", str(QUICK_STEPS)] if args.quick else []
    if "inpaint" not in skip and not (args.runs / "inpaint.json").is_file():
        jobs.append(partial(steps.run, "inpaint", [sys.executable, str(HERE / "shapes_inpaint_eval.py"), *model_args,
                                                   *quick, "--json", str(args.runs / "inpaint.json")]))
    if "figures" not in skip and not (args.runs / "figures.json").is_file():
        jobs.append(partial(steps.run, "figures", [
            sys.executable, str(HERE / "shapes_figures.py"), *model_args, "--out", str(figures),
            "--seeds", "2" if args.quick else "8", "--json", str(args.runs / "figures.json")]))
    with ThreadPoolExecutor(args.jobs) as pool:  # the protocol run first: the seeds8 run waits for it
        futures = [pool.submit(job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except RuntimeError as exc:
            pool.shutdown(cancel_futures=True)
            sys.exit(str(exc))
    if "contact" not in skip:
        write_contact(args, contact)

    results: dict[str, Any] = {
        "setup": {**setup, "skipped": sorted(skip)},
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "evals": {name: eval_summary(args.runs / "eval" / name) for name in evals}, "timings": steps.seconds}
    for part in ("inpaint", "figures"):
        if (args.runs / f"{part}.json").is_file() and part not in skip:
            results[part] = json.loads((args.runs / f"{part}.json").read_text(encoding="utf-8"))
    results["targets"] = targets(results)
    text = markdown(results)
    write_text(args.runs / "summary.json", json.dumps(results, indent=1) + "\n")
    write_text(args.runs / "summary.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
