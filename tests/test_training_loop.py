import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lacunes.checkpoint import load_network
from lacunes.training import get_preset
from lacunes.training.config import TrainConfig
from lacunes.training.loop import ConfigMismatchError, train

from .conftest import write_subject


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    write_subject(d, "sub-001", lesions=((20, 18, 10), (10, 10, 8)))
    write_subject(d, "sub-002", seed=1, lesions=())
    return d


def rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_a_run_folder_and_a_usable_checkpoint(dataset, tmp_path):
    cfg = get_preset("smoke")
    final = train(cfg, dataset, tmp_path / "run", progress=False)
    assert final.is_file()
    assert (tmp_path / "run" / "config.json").is_file() and (tmp_path / "run" / "progress.png").is_file()
    assert list((tmp_path / "run").glob("train-*.log"))
    r = rows(tmp_path / "run")
    assert [int(x["epoch"]) for x in r] == [1, 2]
    assert all(np.isfinite(float(x["loss"])) for x in r)
    net, payload = load_network(final)
    assert payload["metadata"]["train_config"]["name"] == "smoke"
    assert payload["metadata"]["normalization"]["method"] == "quantile"
    assert payload["metadata"]["input_sets"] == ["T1+T2+FLAIR"]  # no channel dropout: all three only
    assert "training_state" not in payload
    out = net(torch.zeros(1, 3, 32, 32, 16))
    assert out.shape == (1, 1, 32, 32, 16)
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, dataset, tmp_path / "run", progress=False)


def test_training_on_generated_phantoms_needs_no_data_folder_and_resumes(tmp_path, monkeypatch):
    import lacunes.training.loop as loop
    from lacunes.cli import main

    run = tmp_path / "run"
    argv = ["train", "--synthetic", "1", "--preset", "smoke", "--run-dir", str(run), "--workers", "1",
            "--seed", "3", "--no-progress", "--channel-dropout", "T1+FLAIR=0.5"]
    monkeypatch.setattr(loop, "plot_progress", lambda run_dir: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # stopped right after the first epoch's checkpoint
        main(argv)
    monkeypatch.undo()
    stopped = load_network(run / "checkpoints" / "last.pt")[1]["training_state"]["generated"]
    assert stopped["seed"] == 3 and stopped["next_k"] >= 2  # the pool's fill and the first epoch's 2 batches
    assert main(argv + ["--resume"]) == 0
    r = rows(run)
    assert [int(x["epoch"]) for x in r] == [1, 2] and all(np.isfinite(float(x["loss"])) for x in r)
    assert all(float(x["data_seconds"]) <= float(x["seconds"]) for x in r)
    net, payload = load_network(run / "checkpoints" / "final.pt")
    assert payload["metadata"]["data"]["generated"]["size"] == 1
    assert payload["metadata"]["input_sets"] == ["T1+T2+FLAIR", "T1+FLAIR"]
    assert net(torch.zeros(1, 3, 32, 32, 16)).shape == (1, 1, 32, 32, 16)
    log = "".join(p.read_text() for p in run.glob("train-*.log"))
    assert f"continue at k = {stopped['next_k']}" in log
    assert "by set of contrasts: {'T1+T2+FLAIR': " in log
    with pytest.raises(SystemExit, match="one of them"):
        main(["train", "--preset", "smoke", "--run-dir", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="held-out"):
        main(["train", "--synthetic", "2", "--seed", "7777", "--run-dir", str(tmp_path / "y")])


def test_resume_continues_where_it_stopped(dataset, tmp_path, monkeypatch):
    import lacunes.training.loop as loop

    cfg = get_preset("smoke").replace(epochs=3)
    calls = []

    def crash(run_dir):
        calls.append(run_dir)
        raise KeyboardInterrupt  # stopped right after the first epoch's checkpoint

    monkeypatch.setattr(loop, "plot_progress", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, dataset, tmp_path / "run", progress=False)
    monkeypatch.undo()
    assert [int(x["epoch"]) for x in rows(tmp_path / "run")] == [1]
    with pytest.raises(ConfigMismatchError):
        train(cfg.replace(lr=0.5), dataset, tmp_path / "run", resume=True, progress=False)
    train(cfg, dataset, tmp_path / "run", resume=True, progress=False)
    assert [int(x["epoch"]) for x in rows(tmp_path / "run")] == [1, 2, 3]
    log = "".join(p.read_text() for p in (tmp_path / "run").glob("train-*.log"))
    assert "resumed from" in log and "at epoch 1" in log


def test_two_process_gloo_run(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lacunes.cli", "train", "--data", str(dataset), "--run-dir", str(tmp_path / "ddp"),
           "--preset", "smoke", "--device", "cpu", "--no-progress", "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    r = rows(tmp_path / "ddp")
    assert len(r) == 2
    assert int(r[0]["crops"]) == 2 * 2  # 2 processes × 2 batches × 1 subject × 1 crop
    _, payload = load_network(tmp_path / "ddp" / "checkpoints" / "final.pt")
    assert payload["metadata"]["hardware"]["world_size"] == 2


def test_fine_tuning_with_mining_and_resume_keeps_the_mined_centres(dataset, tmp_path, monkeypatch):
    import lacunes.training.loop as loop

    start = train(get_preset("smoke").replace(epochs=1), dataset, tmp_path / "start", progress=False)
    payload = torch.load(start, weights_only=True)  # as if calibrated: fine-tuning has to say it is no more
    payload["metadata"]["operating_point"] = {"threshold": 0.9}
    torch.save(payload, start)
    cfg = get_preset("smoke").replace(epochs=3, init_from=str(start), mine_every=2, mine_subjects=2,
                                      hard_fraction=0.5, pos_fraction=0.3, edge_fraction=0.1, batch_dice=True,
                                      cpu_amp=True)
    seen = []
    real = loop.mine_hard_negatives

    def mine(net, subjects, indices, device, bf16=False):
        found = real(net, subjects, indices, device, bf16)
        for i in indices:  # a known false positive, so that resuming has something to restore
            subjects[i].candidates.hard = np.array([[5, 6, 7]])
        seen.append(list(indices))
        return found

    monkeypatch.setattr(loop, "mine_hard_negatives", mine)

    def stop(run_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "plot_progress", stop)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, dataset, tmp_path / "ft", progress=False)
    assert seen == [[0, 1]]  # before the first epoch, since the run starts from trained weights
    state = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)["training_state"]
    assert state["hard_centres"] == {"sub-001": [[5, 6, 7]], "sub-002": [[5, 6, 7]]}
    monkeypatch.setattr(loop, "plot_progress", lambda run_dir: None)
    final = train(cfg, dataset, tmp_path / "ft", resume=True, progress=False)
    assert seen == [[0, 1], [0, 1]]  # epoch 3 (index 2): the next round
    r = rows(tmp_path / "ft")
    assert [x["mined_fp"] != "" for x in r] == [True, False, True]
    _, payload = load_network(final)
    assert payload["metadata"]["init_from"]["path"] == str(start)
    log = "".join(p.read_text() for p in (tmp_path / "ft").glob("train-*.log"))
    assert "starting from the weights of" in log and "crops by kind" in log
    assert "is calibrated (operating point); the checkpoints of this run are not" in log


def test_ranger21_notices_go_to_the_log_not_to_stdout(capsys, caplog):
    import torch

    from lacunes.training.loop import make_optimizer

    caplog.set_level("INFO", logger="lacunes")
    param = torch.nn.Parameter(torch.randn(4))
    opt = make_optimizer(TrainConfig(optimizer="ranger21", lr=1e-3, epochs=2), [param], batches_per_epoch=5)
    for _ in range(10):  # through warm-up and warm-down, where Ranger21 prints its notices
        opt.zero_grad()
        (param**2).sum().backward()
        opt.step()
    assert capsys.readouterr().out == ""
    assert "Ranger21: ** Ranger21 update: Warmdown starting now." in caplog.text


def test_a_batch_with_non_finite_gradients_is_skipped_not_fatal(caplog):
    import lacunes.training.loop as loop
    from lacunes.losses import BlobLoss, DiceBCELoss
    from lacunes.network import build_network

    from .conftest import TINY

    cfg = get_preset("smoke").replace(network=TINY)
    hw = loop._set_up_hardware(cfg, "cpu")
    net = build_network(TINY)
    trainer = loop._Trainer(cfg, hw, net, net, loop.make_optimizer(cfg, net.parameters(), 2),
                            torch.amp.GradScaler("cuda", enabled=False), BlobLoss(DiceBCELoss()), None, None, 2)
    label = torch.zeros(1, 1, 32, 32, 32)
    label[..., 12:18, 12:18, 12:18] = 1
    batch = {"image": torch.rand(1, 3, 32, 32, 32), "label": label, "instances": label.long()}
    bad = {**batch, "image": batch["image"].clone()}
    bad["image"][0, 0, 3, 3, 3] = float("nan")
    before = [p.detach().clone() for p in net.parameters()]
    trainer.step(bad)
    assert trainer.skipped_steps == 1 and "non-finite gradients" in caplog.text
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters()))  # nothing moved
    trainer.step(batch)  # the next batch trains as usual
    assert trainer.skipped_steps == 1 and any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
