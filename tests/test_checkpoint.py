from pathlib import Path

import pytest
import torch

from lacunes.checkpoint import load_network, read_checkpoint, save_checkpoint, weights_sha256, write_sha256
from lacunes.network import build_network

from .conftest import TINY


def test_damaged_weights_are_refused_with_or_without_a_sidecar(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(TINY), TINY, {"note": 1}, half=True)
    payload = read_checkpoint(path)
    assert payload["weights_sha256"] == weights_sha256(payload["state_dict"])
    load_network(path)
    # one weight changed inside an otherwise valid file (the file's own sha256 sidecar absent)
    key = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][key].view(-1)[0] += 1.0
    torch.save(payload, path)
    with pytest.raises(ValueError, match="do not match the hash stored with them"):
        load_network(path)
    # a sidecar is checked too, first
    save_checkpoint(path, build_network(TINY), TINY)
    write_sha256(path)
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="does not match"):
        read_checkpoint(path)


def test_a_checkpoint_written_over_one_with_a_sidecar_reads_back(tmp_path):
    path = tmp_path / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build_network(TINY), TINY, {"note": 1})
    write_sha256(path)
    torch.manual_seed(1)
    save_checkpoint(path, build_network(TINY), TINY, {"note": 2})
    assert not path.with_name("m.pt.sha256").exists()  # the old file's hash is not left to refuse the new one
    assert load_network(path)[1]["metadata"] == {"note": 2}
    write_sha256(path)
    read_checkpoint(path)


def test_a_failed_write_keeps_the_old_checkpoint_and_its_sidecar(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(TINY), TINY, {"note": 1})
    write_sha256(path)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_checkpoint(path, build_network(TINY), TINY, {"note": 2})
    assert path.with_name("m.pt.sha256").exists()
    assert read_checkpoint(path)["metadata"] == {"note": 1}


def test_a_failed_sidecar_write_keeps_the_old_sidecar_whole(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, build_network(TINY), TINY)
    old = write_sha256(path).read_text()

    def killed_mid_write(self, text, *args, **kwargs):  # the first bytes reach the disk, then the process dies
        with open(self, "w") as f:
            f.write(text[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        write_sha256(path)
    assert path.with_name("m.pt.sha256").read_text() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.sha256"]  # no temporary left
    monkeypatch.undo()
    read_checkpoint(path)


def test_checkpoints_without_the_hash_still_load(tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint(path, build_network(TINY), TINY)
    payload = read_checkpoint(path)
    del payload["weights_sha256"]
    torch.save(payload, path)
    load_network(path)


def test_checkpoints_that_do_not_fit_are_refused_at_load_with_the_reason(tmp_path):
    import dataclasses

    from lacunes.inference import Predictor

    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    # settings that do not match the weights (the weights of a wider network)
    wider = dataclasses.replace(TINY, features=(8, 8, 8, 8, 16, 8))
    save_checkpoint(path, build_network(wider), TINY)
    with pytest.raises(ValueError, match="weights do not fit the network"):
        load_network(path)
    # a network of another shape: one channel in, or two out
    for shape in ({"in_channels": 1}, {"out_channels": 2}):
        other = dataclasses.replace(TINY, **shape)
        save_checkpoint(path, build_network(other), other)
        with pytest.raises(ValueError, match="not a lacune model"):
            Predictor.from_checkpoint(path)


def test_a_network_with_another_channel_count_is_refused_at_load_naming_the_modalities(tmp_path):
    import dataclasses

    from lacunes.inference import Predictor

    two = dataclasses.replace(TINY, in_channels=2)
    path = save_checkpoint(tmp_path / "two.pt", build_network(two), two, {})
    with pytest.raises(ValueError, match="takes 2 channel\\(s\\) and gives 1 \\(expected 3 in: T1, T2, FLAIR; 1 out\\)"):
        Predictor.from_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_checkpoint_holding_code_is_refused_without_advice_to_load_it_unsafely(tmp_path, capsys):
    path = tmp_path / "crafted.pt"
    torch.save({"network": {}, "state_dict": {}, "x": _RunsCode()}, path)
    with pytest.raises(ValueError) as err:
        read_checkpoint(path)
    message = str(err.value)
    assert "is not a lacunes checkpoint: it holds objects other than plain containers and tensors" in message
    assert "weights_only" not in message and "\n" not in message
    assert "this must never run" not in capsys.readouterr().out
