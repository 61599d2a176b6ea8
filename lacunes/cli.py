"""``lacunes predict | report | evaluate | synth | train``: argument parsing only; the work is in the library.

Heavy imports (torch, MONAI, SimpleITK) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from lacunes import options

logger = logging.getLogger("lacunes")


def _setup_logging(verbose: bool) -> None:
    # the project's own INFO lines; other libraries' only from WARNING (all of them with --verbose)
    from lacunes.logs import setup

    setup(logging.DEBUG if verbose else logging.WARNING, "%(levelname)s %(name)s: %(message)s",
          logging.DEBUG if verbose else logging.INFO)


# ---------------------------------------------------------------------------------------------- predict


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` (1-based) → (i, N)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/N (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard i/N needs 1 <= i <= N, got {text!r}")
    return i, n


#: What each optional part of the command line needs beyond the runtime, and the extra that installs it.
EXTRAS = {"qc": ("matplotlib",), "synth": ("nibabel", "nilearn")}


def require_extra(what: str, extra: str) -> None:
    """Refuse ``what`` in one line, naming the extra to install, when a package it needs is missing (a plain
    ``pip install lacunes``, or the container: it carries the runtime only)."""
    import importlib.util

    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{what} needs {', '.join(missing)}, which is not installed: pip install 'lacunes[{extra}]' "
                         f"(or pip install {' '.join(missing)}); the container leaves it out, so run {what} from "
                         "such an installation")


def select_participants(items: list, labels: list[str], source) -> list:
    """The subjects of ``items`` whose ``sub-`` label is one of ``labels`` (``01`` or ``sub-01``; all their
    sessions), as BIDS Apps' ``--participant-label``; a label without any subject is an error naming it."""
    import re

    wanted = {label.removeprefix("sub-") for label in labels}
    label_of = {id(e): (re.match(r"^sub-([^_]+)", e.subject_id) or [None, e.subject_id])[1] for e in items}
    unknown = sorted(wanted - set(label_of.values()))
    if unknown:
        raise ValueError(f"--participant-label: no subject {', '.join('sub-' + u for u in unknown)} in {source} "
                         f"(its subjects: {', '.join(sorted({'sub-' + v for v in label_of.values()})) or 'none'})")
    return [e for e in items if label_of[id(e)] in wanted]


def require_matplotlib(what: str) -> None:
    require_extra(what, "qc")


def default_model_path() -> Path:
    from lacunes.checkpoint import bundled_checkpoint

    return bundled_checkpoint()


def cmd_predict(args: argparse.Namespace) -> int:
    from lacunes.inference import Predictor
    from lacunes.layouts import cohort_items
    from lacunes.runner import run_cohort
    from lacunes.settings import PRESETS

    if args.qc:
        require_matplotlib("--qc")
    explicit = {m: getattr(args, m.lower()) for m in options.MODALITIES if getattr(args, m.lower())}
    if bool(explicit) == bool(args.input):
        raise ValueError("give either --input DIR (VALDO or BIDS layout) or --t1/--t2/--flair")
    if explicit:
        options.input_set_name(explicit)  # a set a model takes (T1+FLAIR, ...), else the message naming them
    if args.threads is not None:
        cores = os.cpu_count() or 1
        if not 1 <= args.threads <= 4 * cores:
            raise ValueError(f"--threads must be between 1 and {4 * cores} (4 × this machine's {cores} cores), "
                             f"got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)  # the OpenVINO backend takes the same count
    changes = {"device": args.device, "progress": not args.no_progress and args.subject_progress}
    for name in ("overlap", "sw_batch_size", "tta", "uncertainty", "memory_gb", "precision", "backend"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.roi is not None:
        changes["roi_size"] = tuple(args.roi)
    if args.no_conform:
        changes["conform"] = False
    settings = PRESETS[args.preset].replace(**changes)
    shard_i, shard_n = parse_shard(args.shard)

    if not str(args.output).strip():
        raise ValueError("--output is empty: give the folder the maps go to")
    out = Path(args.output)
    items = cohort_items(Path(args.input) if args.input else None,
                         {m: Path(f) for m, f in explicit.items()} if explicit else None, args.subject_id)
    if args.participant_label:
        items = select_participants(items, args.participant_label, args.input)
    model = Path(args.model) if args.model else default_model_path()
    predictor = Predictor.from_checkpoint(model, settings, args.threshold, args.min_volume)
    op = predictor.release.operating_point
    print(f"{len(items[shard_i - 1::shard_n])} subject(s) (shard {shard_i}/{shard_n}), model {model}, preset {args.preset}, "
          f"{predictor.variants} TTA variant(s), device {predictor.device}, {predictor.precision}, "
          f"backend {predictor.backend}, "
          f"operating point: probability >= {op.threshold:g}, lesions >= {op.min_volume_mm3:g} mm³")
    print(f"model: {predictor.release.data_statement}; {predictor.release.input_sets_statement}")
    print(f"calibration: {predictor.release.calibration_statement}")
    if not args.no_regions:
        from lacunes.regions import statement

        print(f"regions: {statement()} (--no-regions leaves them out)")
    if predictor.device.type == "cpu" and predictor.variants > 1:
        print(f"note: the {args.preset} setting runs {predictor.variants} TTA variants at overlap "
              f"{settings.overlap:g}: on a CPU that is minutes a subject (the sample case, 153x189x159 voxels, on an "
              "idle 2-core Xeon: 88 s with OpenVINO, 238 s with PyTorch, longer on a busy machine; benchmarks/"
              "RESULTS.md, 'Inference speed'); --preset fast runs one variant at overlap 0.25 (8 and 16 s there)")
    reports = run_cohort(predictor, items, out, overwrite=args.overwrite,
                         extras_dir=Path(args.extras_dir) if args.extras_dir else None, write_mask=args.mask,
                         write_table=args.table, resample=args.resample, qc=args.qc, progress=not args.no_progress,
                         shard=(shard_i, shard_n), modalities=args.modalities, prepare=not args.no_preprocess,
                         place=not args.no_regions)
    from lacunes.report import COHORT_TABLE

    print(f"cohort table: {out / COHORT_TABLE} (every subject of the folder, this run's and earlier ones')")
    if args.qc:
        print(f"quality control: {out / 'report.html'}")
    failed = [r for r in reports if r.status == "failed"]
    print(f"{'subject':<16} {'status':<8} {'lesions':>7} {'seconds':>8}")
    for r in reports:
        print(f"{r.subject_id:<16} {r.status:<8} {r.lesions if r.status != 'failed' else '':>7} "
              f"{r.seconds:>8.1f}")
    done = sum(r.status == "done" for r in reports)
    skipped = sum(r.status == "skipped" for r in reports)
    extras = sum(r.extras_from_maps for r in reports)
    print(f"{done} done, {skipped} skipped (use --overwrite to redo)"
          + (f", extras of {extras} made from their saved maps" if extras else "") + f", {len(failed)} failed")
    for r in failed:
        print(f"  {r.subject_id}: {r.error}")
    for r in (r for r in reports if r.flags):
        print(f"  {r.subject_id} to review: {'; '.join(r.flags)}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from lacunes.report import report_folder

    require_matplotlib("lacunes report")
    page = report_folder(Path(args.output), progress=not args.no_progress)
    print(f"quality control: {page}")
    if args.screenshot:
        from lacunes.report import screenshot

        print(f"screenshot (headless Chromium): {screenshot(page, Path(args.screenshot))}")
    return 0


# ---------------------------------------------------------------------------------------------- evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lacunes.evaluation import evaluate_pair, format_summary, pair_subjects, write_reports

    pairs = pair_subjects(Path(args.pred), Path(args.ref))
    results = [evaluate_pair(p, args.matching, args.max_distance_mm)
               for p in tqdm(pairs, desc="evaluating", unit="subject", disable=args.no_progress)]
    print(format_summary(results))
    missing = [p.subject_id for p in pairs if p.prediction is None]
    out = Path(args.out) if args.out else Path(args.pred) / "evaluation"
    paths = write_reports(results, out)
    print(f"reports: {', '.join(str(p) for p in paths.values())}")
    if missing:
        print(f"{len(missing)} subject(s) without a prediction, scored as empty predictions: {', '.join(missing)}")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    require_extra("lacunes synth", "synth")
    from lacunes.synthetic import SynthConfig, generate_dataset

    try:
        config = SynthConfig.from_options(acquisitions=args.acquisitions, lacune_shapes=args.lacune_shapes,
                                          mimics=args.mimics, anatomy_variation=args.anatomy_variation,
                                          lacune_free=args.lacune_free, broad_tissues=args.broad_tissues)
    except ValueError as exc:
        raise SystemExit(f"lacunes synth: {exc}") from None
    ids = generate_dataset(Path(args.out), args.n, args.seed, first_id=args.first_id, preview=args.preview,
                           config=config, progress=not args.no_progress)
    print(f"wrote {len(ids)} subject(s) to {args.out}: {ids[0]} … {ids[-1]}")
    return 0


# ---------------------------------------------------------------------------------------------- train


def parse_channel_dropout(text: str) -> tuple[tuple[str, float], ...]:
    """``"T1+FLAIR=0.2,T1+T2=0.1"`` → ``(("T1+FLAIR", 0.2), ("T1+T2", 0.1))`` (``--channel-dropout``)."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            pairs.append((options.look_up_option(name.strip(), options.INPUT_SETS, "set of contrasts"), float(value)))
        except ValueError as exc:
            raise ValueError(f"--channel-dropout {text!r}: {exc if sep else 'each item is SET=PROBABILITY'}") from None
    return tuple(pairs)


def cmd_train(args: argparse.Namespace) -> int:
    from lacunes.training import get_preset
    from lacunes.training.config import LossMode
    from lacunes.training.loop import train

    config = get_preset(args.preset)
    changes = {}
    for name in ("epochs", "batch_size", "batches_per_epoch", "lr", "seed", "threads", "optimizer",
                 "alpha", "beta", "label_mode", "connectivity", "pos_fraction", "edge_fraction", "fluid_fraction",
                 "hard_fraction", "mimic_fraction", "mine_every", "mine_subjects", "init_from"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.loss is not None:
        changes["loss"] = LossMode(args.loss)
    if args.crop_size is not None:
        changes["crop_size"] = tuple(args.crop_size)
    if args.no_amp:
        changes["amp"] = False
    if args.channel_dropout:
        changes["channel_dropout"] = parse_channel_dropout(args.channel_dropout)
    config = config.replace(**changes)
    if (args.data is None) == (args.synthetic is None):
        raise SystemExit("lacunes train: give --data FOLDER or --synthetic N (one of them)")
    generated = None
    if args.synthetic is not None:
        from lacunes.training.generated import GeneratedData

        try:
            generated = GeneratedData(args.synthetic, seed=options.TRAINING_SEED if args.seed is None else args.seed,
                                      uses=args.subject_uses, workers=args.workers, acquisitions=args.acquisitions,
                                      lacune_shapes=args.lacune_shapes, mimics=args.mimics,
                                      anatomy_variation=args.anatomy_variation, broad_tissues=args.broad_tissues)
        except ValueError as exc:
            raise SystemExit(f"lacunes train --synthetic: {exc}") from None
        provenance = {"generated": generated.to_dict()}
    else:
        provenance = {"folder": str(args.data)}
    if args.data_note:
        provenance["note"] = args.data_note
    final = train(config, args.data, args.run_dir, resume=args.resume, device=args.device,
                  progress=not args.no_progress, data_provenance=provenance, generated=generated)
    print(f"final checkpoint: {final}")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lacunes", description="Lacune segmentation for brain MRI (VALDO Task 3).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    from lacunes import __version__

    parser.add_argument("--version", action="version", version=f"lacunes {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="probability and uncertainty maps for one subject or a cohort")
    p.add_argument("-i", "--input", help="folder of subjects in the VALDO layout")
    for m in options.MODALITIES:  # --t1 --t2 --flair
        p.add_argument(f"--{m.lower()}", help=f"{m} file (with the other contrasts' files) instead of --input")
    p.add_argument("--modalities", choices=list(options.INPUT_SETS),
                   help="the set of contrasts to segment from (default: every contrast a subject has); a set the "
                        "model does not accept (its input_sets) is refused unless named here")
    p.add_argument("--subject-id", help="id for --t1/--t2/--flair (default: the T1's name up to '_')")
    p.add_argument("-o", "--output", required=True, help="output folder for <prefix>prediction/uncertaintymap.nii.gz")
    p.add_argument("--model", help="checkpoint (default: the bundled model, model/lacunes.pt in a checkout)")
    p.add_argument("--threads", type=int, help="CPU threads for the network (default: torch's, all cores)")
    p.add_argument("--preset", choices=options.INFERENCE_PRESETS, default=options.DEFAULT_INFERENCE_PRESET,
                   help="full = the published recipe (default); fast = no TTA, overlap 0.25 (CPU)")
    p.add_argument("--tta", choices=options.option_values(options.TTAMode), help="override the preset's TTA plan")
    p.add_argument("--overlap", type=float, help="override the window overlap")
    p.add_argument("--roi", type=int, nargs=3, metavar=("X", "Y", "Z"), help="override the window size")
    p.add_argument("--sw-batch-size", type=int, help="windows per network call (default 7 on GPU, 1 on CPU)")
    p.add_argument("--memory-gb", type=float, help="host memory the network may use on the CPU (default 6)")
    p.add_argument("--uncertainty", choices=options.option_values(options.UncertaintyMode),
                   help="which uncertainty map to write (default inverse-logit: the publication's)")
    p.add_argument("--threshold", type=float,
                   help="probability from which a voxel is a lacune (default: the model's operating point); "
                        "the written map is recalibrated so that its 0.5 cut means this threshold")
    p.add_argument("--min-volume", type=float, metavar="MM3",
                   help="remove predicted lesions smaller than this, in mm³ (default: the model's operating point)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--precision", choices=options.option_values(options.Precision),
                   help="network arithmetic (default auto: tf32 on CUDA, float32 on the CPU); float16 is the "
                        "fastest on a GPU, bfloat16 on CPUs with AMX; both move probabilities (benchmarks/RESULTS.md)")
    p.add_argument("--backend", choices=options.option_values(options.Backend),
                   help="where the network runs (default auto: OpenVINO on the CPU when installed, about 3x faster "
                        "at the same float32 output; PyTorch otherwise and on a GPU)")
    p.add_argument("--no-preprocess", action="store_true",
                   help="take the inputs as given: by default T2 and FLAIR on another grid than the T1 are registered "
                        "onto it (rigid, about 20 s each) and the brain is extracted where the T1 carries the skull "
                        "(deepbet, about 10 s); with this flag the inputs must be skull-stripped and on the T1's grid "
                        "(or --resample)")
    p.add_argument("--no-regions", action="store_true",
                   help="leave out where each lesion lies: by default a subject with lesions is registered onto the "
                        "ICBM 2009a template (affine and demons, 15-40 s on 2 cores) and each lesion named by a coarse region "
                        "(AAL and JHU atlases of Debian's mricron-data) with its MNI centre, in the lesion table, "
                        "the sidecar and the report")
    p.add_argument("--resample", action="store_true",
                   help="with --no-preprocess: resample T2 and FLAIR onto the T1's grid (linear) when they are on "
                        "another grid but cover the same physical space (registered, not resampled); outputs are on "
                        "the T1's grid")
    p.add_argument("--no-conform", action="store_true",
                   help="give the network the arrays as stored (default: each subject is reoriented to the model's "
                        "array order and resampled to its voxel size, and the maps brought back onto its grid)")
    p.add_argument("--shard", default="1/1", help="i/N: process every N-th subject starting at the i-th")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="only these subjects (01 or sub-01, all their sessions), as a BIDS App's option")
    p.add_argument("--overwrite", action="store_true", help="redo subjects whose outputs exist")
    p.add_argument("--mask", action="store_true", help="also write a binary mask (extras folder)")
    p.add_argument("--table", action="store_true", help="also write a lesion table CSV (extras folder)")
    p.add_argument("--extras-dir", help="folder for --mask/--table (default OUTPUT/extras)")
    p.add_argument("--qc", action="store_true",
                   help="quality control: a picture of each subject's lesions (OUTPUT/qc/) and OUTPUT/report.html")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--subject-progress", action="store_true", help="also a progress bar over windows")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("report", help="quality-control pictures and report.html for a finished predict run")
    p.add_argument("output", help="the output folder of 'lacunes predict' (holds run.json)")
    p.add_argument("--screenshot", metavar="PNG", help="also a headless-Chromium screenshot of the page (needs chromium)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="VALDO Task 3 metrics of predictions against rater labels")
    p.add_argument("--pred", required=True, help="folder of <sid>_*prediction.nii.gz (+ *uncertaintymap)")
    p.add_argument("--ref", required=True, help="folder of <sid>_*desc-Rater{1,2}_Lacunes.nii.gz (or one *Lacunes file)")
    p.add_argument("--out", help="report folder (default PRED/evaluation)")
    p.add_argument("--matching", choices=options.option_values(options.Matching), default=options.Matching.CENTRE.value,
                   help="centre: nearest centre of mass within --max-distance-mm (the challenge's); overlap: any voxel")
    p.add_argument("--max-distance-mm", type=float, default=options.MAX_DISTANCE_MM,
                   help=f"centre matching threshold (default {options.MAX_DISTANCE_MM:g} mm)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    from lacunes import calibration

    p = sub.add_parser("calibrate", help="fit the second stage and choose the operating point on labelled subjects",
                       description=calibration.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    calibration.build_parser(p)
    p.set_defaults(func=calibration.run)

    p = sub.add_parser("synth", help="generate synthetic subjects with lacunes and mimics (VALDO layout)")
    p.add_argument("--n", type=int, required=True, help="number of subjects")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0); a subject depends on seed and id")
    p.add_argument("--first-id", type=int, default=1, help="number of the first subject (sub-001 by default)")
    p.add_argument("--preview", action="store_true", help="also write a PNG of orthogonal slices per subject")
    p.add_argument("--acquisitions", action="store_true",
                   help="randomize each subject's acquisition (voxel size, thick-slice T2/FLAIR, contrasts, bias, "
                        "noise), conformed back to 1 mm as inference does; the labels stay exact")
    p.add_argument("--lacune-shapes", action="store_true",
                   help="lobulated lacunes (5 mm and larger, 60 %%) and hyperintensities against some (40 %%) "
                        "instead of ellipsoids only; the lacunes sit where they do without it")
    p.add_argument("--mimics", action="store_true",
                   help="lacune mimics as varied as real brains hold them (perivascular spaces of 1-5 mm along the "
                        "vessels, fluid pockets at the ventricles' horns, the choroid fissure, the insular cistern, "
                        "sulci, a cavum septi) and tissue intensities drawn per structure; the lacunes sit where "
                        "they do without it")
    p.add_argument("--lacune-free", action="store_true",
                   help="subjects without any lacune (default: 30 %% of them), e.g. for measuring how many "
                        "lacune-free subjects an operating point flags (lacunes calibrate --max-flagged-share)")
    p.add_argument("--anatomy-variation", action="store_true",
                   help="the template deformed further: displacement of 2.5-6 mm and a scaling per axis drawn per "
                        "subject, ventricles and sulci widened over wider ranges; every other draw as without it")
    p.add_argument("--broad-tissues", action="store_true",
                   help="with --mimics: tissue means drawn from broad ranges, fluid of less contrast included (T1 "
                        "fluid up to 0.55 of white matter, FLAIR fluid suppressed to 0.36 only, T2 fluid down to "
                        "0.62); every other draw as without it")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model (run folder with log, metrics, plot, checkpoints)")
    p.add_argument("--data", help="VALDO-layout folder with Rater1/Rater2 labels")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="instead of --data: train on phantoms generated in worker processes while training runs, "
                        f"N held at once (an epoch = N subjects); --seed is the generator's seed (default "
                        f"{options.TRAINING_SEED})")
    p.add_argument("--subject-uses", type=int, default=1, metavar="K",
                   help="with --synthetic: batches each phantom is drawn for (default 1: never twice; 0 = until a "
                        "newer one replaces it, so that training never waits for the generator)")
    p.add_argument("--workers", type=int,
                   help="with --synthetic: generating processes per training process (default: CPU cores - 1)")
    p.add_argument("--acquisitions", action="store_true",
                   help="with --synthetic: randomize each phantom's acquisition (voxel size 0.7-1.5 mm, thick-slice "
                        "T2/FLAIR, contrasts, bias, noise), conformed to 1 mm as inference does")
    p.add_argument("--lacune-shapes", action="store_true",
                   help="with --synthetic: lobulated lacunes and hyperintensities against some (lacunes synth "
                        "--lacune-shapes)")
    p.add_argument("--mimics", action="store_true",
                   help="with --synthetic: lacune mimics as varied as real brains hold them and per-structure "
                        "tissue intensities (lacunes synth --mimics)")
    p.add_argument("--anatomy-variation", action="store_true",
                   help="with --synthetic: the template deformed further (lacunes synth --anatomy-variation)")
    p.add_argument("--broad-tissues", action="store_true",
                   help="with --synthetic --mimics: tissue means from broad ranges, fluid of less contrast "
                        "included (lacunes synth --broad-tissues)")
    p.add_argument("--run-dir", required=True, help="run folder (config, log, metrics.csv, progress.png, checkpoints/)")
    p.add_argument("--preset", default=options.DEFAULT_TRAIN_PRESET, choices=list(options.TRAIN_PRESETS),
                   help="; ".join(f"{k}: {v}" for k, v in options.TRAIN_PRESETS.items())
                   + f" (default {options.DEFAULT_TRAIN_PRESET})")
    p.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--loss", choices=options.option_values(options.LossMode),
                   help="blob (the preset's) or dicebce = beta 0, the ablation")
    p.add_argument("--channel-dropout", metavar="SET=P,...",
                   help="show each crop as a smaller set of contrasts with these probabilities (e.g. "
                        "T1+FLAIR=0.2,T1+T2=0.1,T2+FLAIR=0.1; the missing channels zero), so that one model takes "
                        "subjects without a T2, a FLAIR or a T1 (default: all three always)")
    p.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    p.add_argument("--batch-size", type=int, help="subjects per batch (each gives the preset's crops per subject)")
    p.add_argument("--batches-per-epoch", type=int, help="batches in one epoch")
    p.add_argument("--crop-size", type=int, nargs=3, metavar=("X", "Y", "Z"), help="training crop size, voxels")
    p.add_argument("--pos-fraction", type=float, help="share of crops centred on a lesion")
    p.add_argument("--edge-fraction", type=float, help="share of crops centred within 3 mm of the brain's edge")
    p.add_argument("--fluid-fraction", type=float, help="share of crops centred on fluid-like brain voxels")
    p.add_argument("--hard-fraction", type=float, help="share of crops centred on the network's false positives")
    p.add_argument("--mimic-fraction", type=float,
                   help="share of crops centred on a generated phantom's recorded mimics (--synthetic --mimics)")
    p.add_argument("--mine-every", type=int, help="mine false positives every N epochs (0 = never)")
    p.add_argument("--mine-subjects", type=int, help="training subjects predicted per mining round")
    p.add_argument("--lr", type=float, help="peak learning rate (the recipe: 1e-3)")
    p.add_argument("--optimizer", choices=options.option_values(options.OptimizerName), help="ranger21 (the recipe's) or adamw")
    p.add_argument("--alpha", type=float, help="weight of the main Dice + BCE term (the recipe: 0.66)")
    p.add_argument("--beta", type=float, help="weight of the blob term (the recipe: 0.33; 0 = no blob loss)")
    p.add_argument("--label-mode", choices=options.option_values(options.LabelMode),
                   help="how the two raters make one training label (default union)")
    p.add_argument("--connectivity", type=int, choices=[6, 18, 26],
                   help="voxel connectivity of a lesion instance for the blob term (default 26)")
    p.add_argument("--seed", type=int, help="the run's seed (crops, augmentation; with --synthetic the generator's)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N")
    p.add_argument("--data-note", help="free text recorded as the data's provenance in checkpoints")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
