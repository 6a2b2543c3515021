"""The paired-seed protocol of the chapters: verdicts that never overstate, paired scores."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from diffloss.diagnostics import paired_differences
from diffloss.experiments import paired_scores, verdict


@pytest.mark.parametrize("a,b,minimum,expected", [
    ([20.0, 21.0, 22.0], [20.5, 21.6, 22.4], 0.1, "better in every seed (+0.500 dB ± 0.100)"),
    ([20.0, 21.0, 22.0], [19.5, 20.4, 21.6], 0.1, "worse in every seed (-0.500 dB ± 0.100)"),
    # chapter 04 printed "no consistent difference (…, signs −−−)" here: every seed agrees,
    # the effect is below the minimum size
    ([0.70, 0.71, 0.72], [0.695, 0.704, 0.712], 0.01,
     "same sign in every seed, below the minimum effect of 0.01 dB"),
    ([20.0, 21.0, 22.0], [20.3, 20.8, 22.2], 0.1, "no consistent difference (+0.100 dB ± 0.265, signs +−+)"),
    ([20.0], [21.0], 0.1, "no consistent difference (+1.000 dB, signs +)"),  # one seed: no claim
])
def test_verdicts_speak_only_of_effects_every_seed_agrees_on(a, b, minimum, expected):
    assert verdict(paired_differences(a, b), " dB", True, minimum).startswith(expected)


def test_lower_is_better_metrics_turn_the_words_around():
    d = paired_differences([1.0, 1.1, 1.2], [0.8, 0.9, 1.0])
    assert verdict(d, "", higher_is_better=False).startswith("better in every seed")


def test_paired_scores_take_final_and_best_rows_per_seed():
    def h(final, best):
        return SimpleNamespace(final={"test_psnr": final, "test_ssim": 0.5},
                               best={"test_psnr": best, "test_ssim": 0.6})

    hist = {("L1", 0): h(20.0, 20.5), ("L1", 1): h(21.0, 21.2),
            ("D", 0): h(20.4, 20.4), ("D", 1): h(21.6, 21.0)}
    final = paired_scores(hist, ["L1", "D"], [0, 1], "test", "final")
    assert final["L1"]["psnr"] == [20.0, 21.0] and final["D"]["psnr"] == [20.4, 21.6]
    assert final["paired_difference"]["D"]["psnr"]["per_seed"] == pytest.approx([0.4, 0.6])
    best = paired_scores(hist, ["L1", "D"], [0, 1], "test", "best")
    assert best["paired_difference"]["D"]["psnr"]["per_seed"] == pytest.approx([-0.1, -0.2])
