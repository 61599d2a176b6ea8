import pytest

from lacunes.options import TRAIN_PRESETS
from lacunes.training import get_preset
from lacunes.training.config import PRESETS, LossMode, TrainConfig


def test_ablation_switch_and_config_roundtrip():
    cfg = get_preset("cpu").replace(loss=LossMode.DICEBCE)
    assert cfg.effective_beta == 0.0 and get_preset("valdo").effective_beta == 0.33
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    v = get_preset("valdo")
    assert (v.epochs, v.batch_size, v.crops_per_subject, v.crop_size, v.pos_fraction, v.lr, v.optimizer) == \
        (222, 4, 2, (192, 192, 32), 0.95, 1e-3, "ranger21")
    with pytest.raises(ValueError, match="preset 'gpu9000' is not one of"):
        get_preset("gpu9000")


def test_presets_are_the_ones_the_options_describe_and_bad_values_are_named():
    assert set(PRESETS) == set(TRAIN_PRESETS)
    with pytest.raises(ValueError, match="did you mean 'cpu-acq'"):
        get_preset("cpu-aq")
    with pytest.raises(ValueError, match="optimizer 'adam' is not one of ranger21, adamw; did you mean 'adamw'"):
        TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="mine_every must be >= 0"):
        TrainConfig(mine_every=-1)
    with pytest.raises(ValueError, match="pos_fraction must be in"):
        TrainConfig(pos_fraction=1.5)


def test_channel_dropout_takes_smaller_sets_with_probabilities_and_round_trips():
    from lacunes.cli import parse_channel_dropout

    cfg = TrainConfig(channel_dropout=parse_channel_dropout("T1+FLAIR=0.2, T1+T2=0.1"))
    assert cfg.channel_dropout == (("T1+FLAIR", 0.2), ("T1+T2", 0.1))
    assert cfg.input_sets == ["T1+T2+FLAIR", "T1+FLAIR", "T1+T2"] and TrainConfig().input_sets == ["T1+T2+FLAIR"]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="smaller sets than T1\\+T2\\+FLAIR"):
        TrainConfig(channel_dropout=(("T1+T2+FLAIR", 0.5),))
    with pytest.raises(ValueError, match="summing to at most 1"):
        TrainConfig(channel_dropout=(("T1+FLAIR", 0.7), ("T1+T2", 0.4)))
    with pytest.raises(ValueError, match="did you mean 'T1\\+FLAIR'"):
        parse_channel_dropout("t1+flair=0.2")
    with pytest.raises(ValueError, match="SET=PROBABILITY"):
        parse_channel_dropout("T1+FLAIR")
