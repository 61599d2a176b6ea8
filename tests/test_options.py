"""The torch-free vocabulary: look-up with "did you mean", and the command line taking its choices from it."""

import subprocess
import sys

import pytest

from lacunes import options


def test_look_up_option_accepts_values_and_names_the_closest():
    assert options.look_up_option("flips", options.TTAMode) is options.TTAMode.FLIPS
    assert options.look_up_option(options.Backend.TORCH, options.Backend) is options.Backend.TORCH
    assert options.look_up_option("fast", options.INFERENCE_PRESETS) == "fast"
    with pytest.raises(ValueError, match="backend 'openvin' is not one of auto, torch, openvino; did you mean 'openvino'"):
        options.look_up_option("openvin", options.Backend, "backend")
    with pytest.raises(ValueError, match="preset 'quick' is not one of full, fast$"):
        options.look_up_option("quick", options.INFERENCE_PRESETS, "preset")


def test_options_import_no_torch():
    code = "import sys, lacunes.options, lacunes.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_command_line_offers_what_the_vocabulary_holds():
    from lacunes.cli import build_parser
    from lacunes.training.config import PRESETS

    actions = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["predict"]._actions}
    assert list(actions["tta"].choices) == [e.value for e in options.TTAMode]
    assert list(actions["backend"].choices) == [e.value for e in options.Backend]
    train = {a.dest: a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions}
    assert set(train["preset"].choices) == set(PRESETS)  # every training preset named, none missing
    assert all(a.help for a in train.values() if a.dest != "help")  # every training option explained
