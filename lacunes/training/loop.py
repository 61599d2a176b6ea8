"""The training loop: run folder (config, timestamped log, metrics CSV, progress plot, checkpoints),
``--resume``, mixed precision on CUDA (bfloat16 autocast) and several GPUs/nodes through ``torchrun`` (DDP).

The data come from a folder (:class:`lacunes.training.pipeline.FolderSource`, subjects read once) or from
phantoms generated while training runs (:class:`lacunes.training.generated.GeneratedSource`); either way
the subjects are held as tensors (on the GPU where they fit) and each batch is cropped and augmented on
the network's device (:class:`lacunes.training.pipeline.DeviceBatcher`). ``metrics.csv`` records, per
epoch, the seconds spent getting batches (waiting for generated subjects included) next to the total."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lacunes.checkpoint import read_checkpoint, save_checkpoint, sha256_of
from lacunes.conform import ModelSpace
from lacunes.device import resolve_device
from lacunes.losses import BlobLoss, DiceBCELoss, LossTerms
from lacunes.network import build_network
from lacunes.training.config import TrainConfig
from lacunes.training.data import load_training_set
from lacunes.training.pipeline import DeviceBatcher, FolderSource, hold, holding_device, subject_bytes

logger = logging.getLogger(__name__)

LAST = "last.pt"
FINAL = "final.pt"
METRICS = "metrics.csv"
_RANGER_ATTRS = ("lookahead_step", "current_iter", "epoch_count", "current_lr", "warmup_complete",
                 "warmdown_displayed", "warmup_curr_pct")


class ConfigMismatchError(ValueError):
    """``--resume`` on a run folder whose stored config differs from the requested one."""


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def make_optimizer(config: TrainConfig, params, batches_per_epoch: int) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr)
    from ranger21 import Ranger21

    # Ranger21 prints its settings to stdout; keep them in the log instead.
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        opt = Ranger21(params, lr=config.lr, num_epochs=config.epochs, num_batches_per_epoch=batches_per_epoch)
    logger.debug("Ranger21: %s", buf.getvalue())
    step = opt.step

    def logged_step(*args, **kwargs):
        """Ranger21's step, its prints (warm-up and warm-down notices) sent to the run's log."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            result = step(*args, **kwargs)
        text = " ".join(out.getvalue().split())
        if text:
            logger.info("Ranger21: %s", text)
        return result

    opt.step = logged_step
    return opt


def _optimizer_state(opt: torch.optim.Optimizer) -> dict:
    return {"state_dict": opt.state_dict(), "attrs": {a: getattr(opt, a) for a in _RANGER_ATTRS if hasattr(opt, a)}}


def _restore_optimizer(opt: torch.optim.Optimizer, state: dict) -> None:
    opt.load_state_dict(state["state_dict"])
    for a, v in state.get("attrs", {}).items():
        setattr(opt, a, v)


def cpu_bf16_supported() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AMX or AVX-512 BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _finite_gradients(net: torch.nn.Module) -> bool:
    norms = [p.grad.detach().norm() for p in net.parameters() if p.grad is not None]
    return not norms or bool(torch.isfinite(torch.stack(norms)).all())


def mine_hard_negatives(net: torch.nn.Module, subjects, indices, device: torch.device,
                        bf16: bool = False) -> dict[str, int]:
    """Predict the training subjects ``indices`` with the current network (the ``fast`` inference
    setting) and store the centres of their false positives (components that touch no label) as
    their ``hard`` crop centres. Returns the count per subject; the network is left in train mode."""
    from lacunes.inference import Predictor
    from lacunes.postprocessing import RAW
    from lacunes.settings import FAST
    from lacunes.training.sampling import false_positive_centres

    # PyTorch, not a compiled backend: converting the live training network each round costs seconds, and
    # with OpenVINO's conversion in the loop a resumed fine-tuning run (tests/test_training_loop.py) met NaN
    # in Ranger21 in 3 of 7 tries, against 0 of 8 with PyTorch (why the conversion disturbs it: not known)
    settings = FAST.replace(progress=False, device=str(device), precision="bfloat16" if bf16 else "auto",
                            backend="torch")
    predictor = Predictor(net, settings, operating_point=RAW)  # the raw map: p >= 0.5, no mask
    found = {}
    try:
        for i in indices:
            s = subjects[i]
            prob, _ = predictor.predict_normalized(s.image)
            s.candidates.hard = false_positive_centres(prob, s.label[0])
            found[s.subject_id] = len(s.candidates.hard)
    finally:
        net.train()
    return found


def _setup_logging(run_dir: Path, rank: int) -> logging.Handler | None:
    if rank != 0:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    handler = logging.FileHandler(run_dir / f"train-{stamp}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("lacunes").addHandler(handler)
    logging.getLogger("lacunes").setLevel(logging.INFO)
    return handler


def plot_progress(run_dir: Path) -> Path | None:
    """``progress.png`` from ``metrics.csv``: total, main and blob loss per epoch."""
    path = run_dir / METRICS
    if not path.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "main", "blob"):
        values = [float(r[key]) if r[key] not in ("", "nan") else np.nan for r in rows]
        ax.plot(epochs, values, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "progress.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


@dataclass(frozen=True)
class _Hardware:
    """Where this process trains: its device, rank and precision."""

    device: torch.device
    rank: int
    world: int
    use_amp: bool  # autocast on CUDA
    amp_dtype: torch.dtype
    cpu_bf16: bool  # bfloat16 autocast on a CPU that has it

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _set_up_hardware(config: TrainConfig, device: str) -> _Hardware:
    """The process group under ``torchrun``, the device, threads, seed and precision."""
    rank, local_rank, world = _dist_info()
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
        dev = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
    else:
        dev = resolve_device(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed + rank)
    use_amp = config.amp and dev.type == "cuda"
    # bfloat16 needs no loss scaling; float16 (GPUs without bfloat16) does.
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    cpu_bf16 = config.cpu_amp and dev.type == "cpu" and cpu_bf16_supported()
    if config.cpu_amp and dev.type == "cpu" and not cpu_bf16:
        logger.warning("cpu_amp: this CPU has no native bfloat16 (AMX / AVX-512 BF16); training in float32")
    return _Hardware(dev, rank, world, use_amp, amp_dtype, cpu_bf16)


def _tear_down(source, hw: _Hardware | None, handler: logging.Handler | None) -> None:
    if source is not None:
        source.close()
    if hw is not None and hw.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if handler is not None:
        logging.getLogger("lacunes").removeHandler(handler)
        handler.close()


def _data_source(config: TrainConfig, data_dir, generated, payload: dict | None, hw: _Hardware, progress: bool):
    """The subjects to train on, held where they fit: returns ``(source, batches_per_epoch)``."""
    if generated is None:
        subjects = load_training_set(Path(data_dir), config, progress=progress and hw.rank == 0)
        batches_per_epoch = config.batches_per_epoch or -(-len(subjects) // (config.batch_size * hw.world))
        where = holding_device(sum(subject_bytes(sub) for sub in subjects), hw.device)
        pin = hw.device.type == "cuda" and where.type == "cpu"
        source = FolderSource([hold(sub, where, pin) for sub in subjects], config.batch_size,
                              config.batches_per_epoch, hw.rank, hw.world, config.seed)
        logger.info("training subjects held on %s", where)
        return source, batches_per_epoch
    from lacunes.training.generated import GeneratedSource

    batches_per_epoch = config.batches_per_epoch or -(-generated.size // (config.batch_size * hw.world))
    stream = (payload or {}).get("training_state", {}).get("generated") or {}
    if stream and stream.get("seed") != generated.seed:
        raise ConfigMismatchError(f"the run to resume was trained on phantoms of seed {stream.get('seed')}, "
                                  f"not {generated.seed}")
    source = GeneratedSource(generated, config, hw.device, batches_per_epoch, hw.rank, hw.world,
                             start=stream.get("next_k", 0), progress=progress and hw.rank == 0)
    if stream:
        logger.info("generated phantoms continue at k = %d (seed %d)", stream["next_k"], generated.seed)
    return source, batches_per_epoch


def _network(config: TrainConfig, hw: _Hardware) -> torch.nn.Module:
    """The network to train, from ``config.init_from``'s weights when given, on the device."""
    net = build_network(config.network)
    if config.init_from:
        from lacunes.checkpoint import load_network

        start_net, start_payload = load_network(config.init_from)
        if start_payload["network"] != config.network.to_dict():
            raise ConfigMismatchError(f"{config.init_from} holds another network: {start_payload['network']}")
        net.load_state_dict(start_net.state_dict())
        logger.info("starting from the weights of %s", config.init_from)
        calibrated = [k for k in ("operating_point", "rescorer") if start_payload.get("metadata", {}).get(k)]
        if calibrated and hw.rank == 0:
            logger.warning("%s is calibrated (%s); the checkpoints of this run are not, and predict at p >= 0.5 "
                           "with no second stage until calibrated again on labelled subjects "
                           "(lacunes calibrate)", config.init_from, " and ".join(calibrated).replace("_", " "))
    return net.to(hw.device)


def _metadata(config: TrainConfig, data_dir, generated, source, data_provenance, hw: _Hardware) -> dict:
    """What every checkpoint of the run records besides its weights."""
    if data_provenance:
        data = data_provenance
    elif generated is None:
        data = {"folder": str(data_dir), "subjects": [s.subject_id for s in source.subjects]}
    else:
        data = {"generated": generated.to_dict()}
    return {
        "train_config": config.to_dict(),
        "normalization": {"method": "quantile", "lower": config.normalization.lower,
                          "upper": config.normalization.upper},
        "data": data,
        "model_space": ModelSpace().to_dict(),  # where the training subjects are (lacunes.conform)
        "input_sets": config.input_sets,  # the sets of contrasts it was trained for (channel_dropout)
        "init_from": ({"path": str(config.init_from), "sha256": sha256_of(config.init_from)}
                      if config.init_from else None),
        "hardware": {"device": str(hw.device.type), "world_size": hw.world, "cpu_bf16": hw.cpu_bf16,
                     "name": torch.cuda.get_device_name(hw.device) if hw.device.type == "cuda" else "cpu"},
    }


@dataclass
class _Trainer:
    """The pieces one epoch needs, built once by :func:`train`."""

    config: TrainConfig
    hw: _Hardware
    net: torch.nn.Module  # the weights (what checkpoints hold)
    model: torch.nn.Module  # what the batches go through (``net`` or its DDP wrapper)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: BlobLoss
    source: object
    batcher: DeviceBatcher
    batches_per_epoch: int
    skipped_steps: int = 0  # batches whose gradients were not finite (:meth:`step`)

    def resume(self, payload: dict) -> tuple[int, float]:
        """Weights, optimizer, scaler and mined crop centres from ``payload``; returns ``(epoch, elapsed_s)``."""
        self.net.load_state_dict(payload["state_dict"])
        state = payload["training_state"]
        _restore_optimizer(self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        by_id = {sub.subject_id: sub for sub in self.source.subjects}
        for sid, centres in state.get("hard_centres", {}).items():
            if sid in by_id:
                by_id[sid].candidates.hard = np.asarray(centres, np.int64).reshape(-1, 3)
        return state["epoch"], state["elapsed_s"]

    def mining_due(self, epoch: int) -> bool:
        """Mine before epoch ``epoch`` (0-based): every ``mine_every`` epochs, and before the first
        epoch when the run starts from trained weights."""
        every = self.config.mine_every
        return every > 0 and epoch % every == 0 and (epoch > 0 or bool(self.config.init_from))

    def mine(self, epoch: int) -> tuple[int, float]:
        """Hard negatives on a rotating subset of subjects (the same on every process): ``(count, seconds)``."""
        t0 = time.time()
        subjects = self.source.subjects
        k = min(self.config.mine_subjects, len(subjects))
        rounds = epoch // self.config.mine_every
        indices = [(rounds * k + j) % len(subjects) for j in range(k)]
        found = mine_hard_negatives(self.net, subjects, indices, self.hw.device, bf16=self.hw.cpu_bf16)
        seconds = time.time() - t0
        logger.info("mined %d false positive(s) on %d subject(s) in %.0f s: %s", sum(found.values()), len(found),
                    seconds, found)
        return sum(found.values()), seconds

    def step(self, batch: dict) -> LossTerms:
        """One optimizer step on one batch."""
        image, label, instances = batch["image"], batch["label"].float(), batch["instances"].long()
        self.optimizer.zero_grad(set_to_none=True)
        if self.hw.cpu_bf16:
            autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        else:
            autocast = torch.autocast(device_type=self.hw.device.type, dtype=self.hw.amp_dtype, enabled=self.hw.use_amp)
        with autocast:
            logits = self.model(image)
        terms = self.loss_fn.terms(logits.float(), label, instances)
        self.scaler.scale(terms.total).backward()
        if not self.scaler.is_enabled() and not _finite_gradients(self.net):
            # float16's scaler skips such a step itself; elsewhere Ranger21 would stop the run ("hit nan for
            # variance_normalized"): one batch's overflow (e.g. instance norm over the few voxels of a tiny
            # crop's deepest level) skips that batch instead
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            logger.warning("non-finite gradients (loss %.4g): step skipped (%d so far)", float(terms.total.detach()),
                           self.skipped_steps)
            return terms
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return terms

    def epoch(self, epoch: int, progress: bool) -> dict:
        """Mining when due, then one pass over the epoch's batches; returns the ``metrics.csv`` row."""
        from tqdm import tqdm

        self.model.train()
        self.batcher.set_epoch(epoch)
        t0 = time.time()
        mined, mining_seconds = self.mine(epoch) if self.mining_due(epoch) else ("", 0.0)
        loss_sum = main_sum = blob_sum = 0.0
        n_blob = n_batches = n_crops = 0
        data_seconds = 0.0
        bar = tqdm(total=self.batches_per_epoch, desc=f"epoch {epoch + 1}/{self.config.epochs}",
                   disable=not progress or self.hw.rank != 0, leave=False)
        batches = self.source.epoch(epoch)
        while True:
            t_data = time.perf_counter()
            held = next(batches, None)
            if held is None:
                break
            batch = self.batcher(held)
            data_seconds += time.perf_counter() - t_data
            terms = self.step(batch)
            loss_sum += float(terms.total.detach())
            main_sum += terms.main
            if terms.blob is not None:
                blob_sum += terms.blob
                n_blob += 1
            n_batches += 1
            n_crops += batch["image"].shape[0]
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.4f}")
        bar.close()
        lr = getattr(self.optimizer, "current_lr", self.optimizer.param_groups[0]["lr"])
        return {"epoch": epoch + 1, "loss": loss_sum / max(n_batches, 1), "main": main_sum / max(n_batches, 1),
                "blob": blob_sum / n_blob if n_blob else float("nan"), "lr": lr,
                "seconds": round(time.time() - t0, 2), "crops": n_crops * self.hw.world, "mined_fp": mined,
                "mining_seconds": round(mining_seconds, 1), "data_seconds": round(data_seconds, 2)}

    def training_state(self, epoch: int, elapsed: float) -> dict:
        """What ``--resume`` needs besides the weights."""
        state = {"epoch": epoch, "elapsed_s": elapsed, "optimizer": _optimizer_state(self.optimizer),
                 "scaler": self.scaler.state_dict(),
                 "hard_centres": {sub.subject_id: sub.candidates.hard.tolist() for sub in self.source.subjects
                                  if len(sub.candidates.hard)}}
        if hasattr(self.source, "state"):  # generated phantoms: where the stream stands
            state["generated"] = self.source.state()
        return state


METRIC_COLUMNS = ("epoch", "loss", "main", "blob", "lr", "seconds", "crops", "mined_fp", "mining_seconds",
                  "data_seconds")


def _record_epoch(run_dir: Path, row: dict, config: TrainConfig, batcher: DeviceBatcher) -> None:
    with open(run_dir / METRICS, "a", newline="") as f:
        csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])
    logger.info("epoch %d/%d loss %.4f main %.4f blob %.4f lr %.2e %.1fs (getting batches %.1fs); "
                "crops by kind so far: %s%s", row["epoch"], config.epochs, row["loss"], row["main"], row["blob"],
                row["lr"], row["seconds"], row["data_seconds"], batcher.kind_counts,
                f"; by set of contrasts: {batcher.set_counts}" if config.channel_dropout else "")


def _trainer(config: TrainConfig, hw: _Hardware, source, batches_per_epoch: int, rank: int) -> _Trainer:
    """The network (wrapped for distributed training where it is), its optimizer, loss and batcher."""
    net = _network(config, hw)
    model = net
    if hw.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[hw.device.index] if hw.device.type == "cuda" else None)
    return _Trainer(
        config, hw, net, model, make_optimizer(config, model.parameters(), batches_per_epoch),
        torch.amp.GradScaler("cuda", enabled=hw.use_amp and hw.amp_dtype == torch.float16),
        BlobLoss(main_criterion=DiceBCELoss(batch=config.batch_dice), alpha=config.alpha,
                 beta=config.effective_beta, connectivity=config.connectivity),
        source, DeviceBatcher(config, hw.device, seed=config.seed * 1000 + rank), batches_per_epoch)


def train(
    config: TrainConfig,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    resume: bool = False,
    device: str = "auto",
    progress: bool = True,
    data_provenance: dict | None = None,
    generated=None,
) -> Path:
    """Train a model; returns the path of the final checkpoint (``checkpoints/final.pt``).

    Args:
        config: the recipe (see :mod:`lacunes.training.config`).
        data_dir: a VALDO-layout folder with rater labels (None with ``generated``).
        run_dir: where the config, log, metrics, plot and checkpoints go.
        resume: continue from ``checkpoints/last.pt`` of ``run_dir`` (the config must be the same).
        device: ``auto``, ``cpu``, ``cuda``...; under ``torchrun`` each process takes its local GPU.
        progress: show a progress bar (rank 0 only).
        data_provenance: recorded in the checkpoints (e.g. the generator's seed).
        generated: a :class:`lacunes.training.generated.GeneratedData`: train on phantoms generated
            while training runs instead of a folder.

    Raises:
        FileExistsError: ``run_dir`` holds a run and ``resume`` is False.
        ConfigMismatchError: ``resume`` with a different config.
    """
    if (data_dir is None) == (generated is None):
        raise ValueError("train on a data folder or on generated phantoms (exactly one of them)")
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / LAST
    if last.exists() and not resume:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another folder")
    rank = _dist_info()[0]
    if rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(run_dir, rank)
    hw = source = None
    try:
        hw = _set_up_hardware(config, device)
        if rank == 0:
            (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        payload = read_checkpoint(last) if resume and last.exists() else None
        if payload is not None and payload["metadata"].get("train_config") != config.to_dict():
            raise ConfigMismatchError(f"{last} was trained with another config; compare {run_dir / 'config.json'}")
        source, batches_per_epoch = _data_source(config, data_dir, generated, payload, hw, progress)
        trainer = _trainer(config, hw, source, batches_per_epoch, rank)
        net = trainer.net
        start_epoch, elapsed = 0, 0.0
        if payload is not None:
            start_epoch, elapsed = trainer.resume(payload)
            logger.info("resumed from %s at epoch %d", last, start_epoch)
        metadata = _metadata(config, data_dir, generated, source, data_provenance, hw)
        if rank == 0 and start_epoch == 0:
            with open(run_dir / METRICS, "w", newline="") as f:
                csv.writer(f).writerow(METRIC_COLUMNS)
        logger.info("training %s: %d epochs × %d batches, %d process(es) on %s",
                    config.name, config.epochs, batches_per_epoch, hw.world, hw.device)
        for epoch in range(start_epoch, config.epochs):
            row = trainer.epoch(epoch, progress)
            elapsed += row["seconds"]
            if rank != 0:
                continue
            _record_epoch(run_dir, row, config, trainer.batcher)
            if (epoch + 1) % config.checkpoint_every == 0 or epoch + 1 == config.epochs:
                save_checkpoint(last, net, config.network, {**metadata, "epoch": epoch + 1, "training_seconds": elapsed},
                                extra_state=trainer.training_state(epoch + 1, elapsed))
                plot_progress(run_dir)
        final = ckpt_dir / FINAL
        if rank == 0:
            save_checkpoint(final, net, config.network, {**metadata, "epoch": config.epochs, "training_seconds": elapsed})
            logger.info("done in %.0f s: %s", elapsed, final)
        return final
    finally:
        _tear_down(source, hw, handler)
