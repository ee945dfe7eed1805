"""``napari-wsl-al infer``: CAM, foreground/background and uncertainty maps of slides into a project."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "infer"
HELP = "compute CAM, foreground/background and uncertainty maps of slides (OME-Zarr in a project)"


def _region(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(round(float(v))) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h in level-0 pixels, got {text!r}") from error
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h with w, h > 0, got {text!r}")
    return values


def _maps(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the sub-command."""
    parser.add_argument("slides", nargs="+", type=Path, metavar="SLIDE",
                        help="slide files, or folders of patches (each patch inferred as one "
                        "image; its class goes to maps/<folder>.patches.csv)")
    parser.add_argument("--model", default="default",
                        help="'default' (the shipped model) or a checkpoint file (.pt)")
    parser.add_argument("--project", type=Path, required=True,
                        help="project folder (study.wslal); created when missing")
    resolution = parser.add_mutually_exclusive_group()
    resolution.add_argument("--mpp", type=float, help="resolution in microns per pixel "
                            "(default: the model's, when known)")
    resolution.add_argument("--level", type=int, help="read this slide level as is")
    parser.add_argument("--slide-mpp", type=_positive, metavar="UM_PER_PX",
                        help="the slides' own resolution (level 0, microns per pixel), for files "
                        "that do not record it: folders of patches, plain images (files that "
                        "record one keep theirs); the project keeps it for later runs and napari "
                        "(e.g. 0.5 at 20x, 0.25 at 40x)")
    parser.add_argument("--region", type=_region, help="level-0 box x,y,w,h (default: all tissue)")
    parser.add_argument("--maps", type=_maps, default=("cam", "fg", "bg", "probs", "seg", "uncertainty"),
                        help="comma-separated maps: cam, fg, bg, probs, seg (segmentation head "
                        "of a round's model), uncertainty, entropy, margin, ovr_entropy, "
                        "mc_variance (default: cam,fg,bg,probs,seg,uncertainty)")
    parser.add_argument("--mc-passes", type=int, default=0,
                        help="MC-dropout passes for the mc_variance map (0: none)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--tile-size", type=int, default=512, help="tile side in pixels")
    parser.add_argument("--overlap", type=int, default=128,
                        help="tile overlap in pixels (wide enough to blend away tile edges)")
    parser.add_argument("--map-stride", type=int, default=None, metavar="PIXELS",
                        help="side of a map pixel in pixels at the model's resolution "
                        "(default: the model's output stride, at most 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per batch")
    parser.add_argument("--tissue-threshold", type=float, default=0.05,
                        help="least tissue fraction of a processed tile (0: all tiles)")
    parser.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    parser.add_argument("--fg-class", default=None, metavar="CLASS",
                        help="CAM models: show this class's map as the foreground on every "
                             "image, or 'predicted' for each image's predicted class (default: "
                             "the model's own choice; the shipped model's is malignant)")
    parser.add_argument("--scheduler", help="dask.distributed scheduler address: one task per slide")
    parser.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long to wait for another run writing the same slide's maps "
                        "before giving up on that slide (default: 10)")


def _positive(text: str) -> float:
    from ..core.project import is_mpp

    try:
        value = float(text)
    except ValueError:
        value = None
    if not is_mpp(value):
        raise argparse.ArgumentTypeError(f"a positive number of microns per pixel, not {text!r}")
    return value


def _config(args: argparse.Namespace):
    from ..core.infer import InferenceConfig

    return InferenceConfig(
        mpp=args.mpp, level=args.level, tile_size=args.tile_size, overlap=args.overlap,
        map_stride=args.map_stride, batch_size=args.batch_size, device=args.device, amp=not args.no_amp, maps=args.maps,
        mc_passes=args.mc_passes, tissue_threshold=args.tissue_threshold,
    )


def _project(args: argparse.Namespace, model_classes):
    from ..core.project import PROJECT_FILE, Project

    if (args.project / PROJECT_FILE).exists():
        project = Project.open(args.project)
        project.check_model_classes(model_classes, f"model {args.model}")
        return project
    return Project.create(args.project, classes=list(model_classes))


def run(args: argparse.Namespace) -> int:
    """Infer every slide and print where its maps were written."""
    from ..core.errors import WslAlError
    from ..core.infer import load_inference_model

    try:
        config = _config(args)
    except ValueError as error:
        raise SystemExit(f"napari-wsl-al infer: error: {error}") from error
    model_choice = args.model if args.model == "default" else Path(args.model)
    # loaded once: run here, or read for its classes when the workers load their own
    model = load_inference_model(model_choice, "cpu" if args.scheduler else config.device)
    if args.fg_class is not None:
        import functools

        from ..core.infer.loading import load_with_foreground_class, set_foreground_class

        try:  # checked here, before any slide is read or a task is sent
            set_foreground_class(model, args.fg_class)
        except ValueError as error:
            raise SystemExit(f"napari-wsl-al infer: error: {error}") from None
        model_choice = functools.partial(load_with_foreground_class, model_choice, args.fg_class)
    if args.scheduler:
        from ..core.infer.distributed import infer_slides_distributed

        project = _project(args, model.classes)
        summaries = infer_slides_distributed(args.slides, model_choice, project, config,
                                             args.scheduler, region=args.region,
                                             lock_timeout=args.lock_timeout,
                                             slide_mpp=args.slide_mpp)
        for summary in summaries:
            unit = "tiles" if summary["patches_csv"] is None else "patches"
            print(f"{summary['slide']}: maps written to {summary['maps']} "
                  f"({summary['tiles_computed']} of {summary['tiles_total']} {unit} computed, "
                  f"{summary['seconds']:.1f} s on {summary['device']})")
            if summary["patches_csv"] is not None:
                print(patch_summary(summary["patches"], summary["patches_csv"]))
        return 0

    project = _project(args, model.classes)
    outcomes = []  # (slide, "done" | "reused" | "failed", detail)
    for path in args.slides:
        try:
            result = _infer_one(path, project, model, config, args.region, args.lock_timeout,
                                args.slide_mpp)
        except WslAlError as error:
            print(f"napari-wsl-al infer: {path}: error: {error}", file=sys.stderr)
            outcomes.append((path, "failed", str(error)))
            continue
        unit = "tiles" if result.patches_csv is None else "patches"
        print(f"{path}: maps written to {result.path} ({result.tiles_computed} of "
              f"{result.tiles_total} {unit} computed, {result.seconds:.1f} s on {result.device}): "
              f"{', '.join(result.maps)}")
        if result.patches_csv is not None:
            print(patch_summary(result.patches, result.patches_csv))
        state = "reused" if result.tiles_computed == 0 and result.tiles_total else "done"
        outcomes.append((path, state, f"{result.tiles_computed} of {result.tiles_total} tiles"))
    failed = [outcome for outcome in outcomes if outcome[1] == "failed"]
    if len(outcomes) > 1:
        counts = {state: sum(1 for o in outcomes if o[1] == state)
                  for state in ("done", "reused", "failed")}
        print(f"{len(outcomes)} slides: {counts['done']} done, {counts['reused']} reused "
              f"(already computed), {counts['failed']} failed")
        for path, _, reason in failed:
            print(f"  failed: {path}: {reason}")
    return 1 if failed else 0


def patch_summary(patches, table) -> str:
    """Lines saying how many patches each class got, the least confident ones and the CSV."""
    if not patches:
        return f"  no patch finished; classes will be in {table}"
    counts: dict[str, list[float]] = {}
    for patch in patches:
        counts.setdefault(patch.prediction, []).append(patch.confidence)
    classes = [name for name in patches[0].classes if name in counts]
    parts = [f"{len(counts[name])} {name} (mean confidence {sum(counts[name]) / len(counts[name]):.2f})"
             for name in classes]
    lines = [f"  {len(patches)} patches: {', '.join(parts)}; per-patch classes in {table}"]
    unsure = sorted(patches, key=lambda patch: patch.confidence)[:3]
    lines.append("  least confident: " + ", ".join(
        f"{patch.name} {patch.prediction} {patch.confidence:.2f}" for patch in unsure))
    return "\n".join(lines)


def resolution_warning(reader, model, config) -> str:
    """Why the model cannot read ``reader`` at its own resolution ("" when it can): the slide
    or folder has no µm per pixel, and no target resolution or level was given."""
    from ..core.infer.session import resolution_warning as warning

    return warning(reader, model, config, fix=(
        "Give it with --slide-mpp (the project keeps it); --level 0 runs on the pixels "
        "without this warning.")) or ""


def _infer_one(path, project, model, config, region, lock_timeout=None, slide_mpp=None):
    """Maps of one slide into the project, with a progress bar; the engine's result. A slide
    whose file does not record its resolution is read at ``slide_mpp`` µm per pixel when given
    (recorded in the project), else at the resolution the project records for it."""
    from tqdm import tqdm

    from ..core.infer import MapStore, infer_slide
    from ..core.io import open_slide

    with open_slide(path) as reader:
        if slide_mpp is not None and reader.mpp is not None:
            print(f"napari-wsl-al infer: {path}: the file records its own resolution "
                  f"({reader.mpp[0]:.4g} µm/px): --slide-mpp left out for it", file=sys.stderr)
            slide_mpp = None
        name = project.add_slide(path, mpp=slide_mpp)
        recorded = project.slide_mpp(name)
        if recorded is not None:
            reader.set_mpp(recorded)
        warning = resolution_warning(reader, model, config)
        if warning:
            print(f"napari-wsl-al infer: {path}: warning: {warning}", file=sys.stderr)
        store = MapStore(project.maps_path(name), lock_timeout=lock_timeout)
        job = infer_slide(reader, model, config, store, region=region)
        with tqdm(desc=name, unit="tile", dynamic_ncols=True) as bar:
            while True:
                try:
                    progress = next(job)
                except StopIteration as stop:
                    return stop.value
                bar.total = progress.total
                bar.n = progress.step
                # while another run writes the same maps: "waiting for another run ..."
                bar.set_description(progress.message if "waited_s" in progress.metrics else name)
                bar.set_postfix(tiles_per_s=f"{progress.metrics.get('tiles_per_s', 0):.1f}")
                bar.refresh()
