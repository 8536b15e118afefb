"""examples/seeds/: the TF1 tutorials' programs on fusedrnn.compat.v1 run and learn (briefly)."""
import importlib.util
import pathlib

import numpy as np
import pytest

SEEDS = pathlib.Path(__file__).resolve().parents[1] / "examples" / "seeds"


def load(name):
    spec = importlib.util.spec_from_file_location(f"seed_{name}", SEEDS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ptb_lm_truncated_bptt_learns():
    hist = load("ptb_lm").main(["--steps", "60", "--seconds", "20", "--hidden", "32"])
    assert np.mean(hist[-5:]) < 0.8 * np.mean(hist[:3])


def test_classify_with_sequence_length_learns():
    hist, acc = load("classify").main(["--steps", "150", "--seconds", "20"])
    assert np.mean(hist[-10:]) < 0.7 * np.mean(hist[:5])
    assert acc > 0.75


def test_gru_tagger_learns():
    hist = load("gru_tagger").main(["--steps", "120", "--seconds", "20"])
    assert np.mean(hist[-10:]) < 0.8 * np.mean(hist[:5])
