"""``lacunes predict | evaluate | synth | train``: argument parsing only; the work is in the library.

Heavy imports (torch, MONAI, SimpleITK) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("lacunes")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    from lacunes.synthetic import generate_dataset

    ids = generate_dataset(Path(args.out), args.n, args.seed, first_id=args.first_id, preview=args.preview,
                           progress=not args.no_progress)
    print(f"wrote {len(ids)} subject(s) to {args.out}: {ids[0]} … {ids[-1]}")
    return 0


# ---------------------------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from lacunes.training import get_preset
    from lacunes.training.config import LossMode
    from lacunes.training.loop import train

    config = get_preset(args.preset)
    changes = {}
    for name in ("epochs", "batch_size", "batches_per_epoch", "lr", "seed", "threads", "num_workers", "optimizer",
                 "alpha", "beta", "label_mode", "connectivity", "pos_fraction"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.loss is not None:
        changes["loss"] = LossMode(args.loss)
    if args.crop_size is not None:
        changes["crop_size"] = tuple(args.crop_size)
    if args.no_amp:
        changes["amp"] = False
    config = config.replace(**changes)
    provenance = {"folder": str(args.data)}
    if args.data_note:
        provenance["note"] = args.data_note
    final = train(config, args.data, args.run, resume=args.resume, device=args.device,
                  progress=not args.no_progress, data_provenance=provenance)
    print(f"final checkpoint: {final}")
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lacunes", description="Lacune segmentation for brain MRI (VALDO Task 3).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="generate synthetic subjects with lacunes and mimics (VALDO layout)")
    p.add_argument("--n", type=int, required=True, help="number of subjects")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0); a subject depends on seed and id")
    p.add_argument("--first-id", type=int, default=1, help="number of the first subject (sub-001 by default)")
    p.add_argument("--preview", action="store_true", help="also write a PNG of orthogonal slices per subject")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model (run folder with log, metrics, plot, checkpoints)")
    p.add_argument("--data", required=True, help="VALDO-layout folder with Rater1/Rater2 labels")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--preset", default="valdo", help="valdo (the publication), cpu or smoke")
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument("--loss", choices=["blob", "dicebce"], help="dicebce = beta 0, the ablation")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--batches-per-epoch", type=int)
    p.add_argument("--crop-size", type=int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--pos-fraction", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["ranger21", "adamw"])
    p.add_argument("--alpha", type=float)
    p.add_argument("--beta", type=float)
    p.add_argument("--label-mode", choices=["union", "mean", "rater1", "intersection"])
    p.add_argument("--connectivity", type=int, choices=[6, 18, 26])
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--num-workers", type=int, help="data loader workers")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-note", help="free text recorded as the data's provenance in checkpoints")
    p.add_argument("--no-progress", action="store_true")
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
