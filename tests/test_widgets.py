"""The chapters' widgets (issue 22): moving a control shows the precomputed frame, headless."""

from __future__ import annotations

import pytest
import torch

from diffloss.widgets import frame_viewer, image_png


def test_moving_the_slider_shows_the_precomputed_frame():
    frames = {t: torch.full((3, 8, 8), t / 1000) for t in (0, 250, 999)}
    viewer = frame_viewer(frames, "t", title="x_t")
    assert viewer.image.value == image_png(frames[0])
    for t in (999, 250, 0):
        viewer.control.value = t
        assert viewer.image.value == viewer.frames[t] == image_png(frames[t])
    assert len(set(viewer.frames.values())) == 3  # the frames differ, so the test can fail


def test_float_knobs_slide_with_readable_labels():
    frames = {0.0: b"a", 1e-3: b"b", 2.5: b"c"}
    viewer = frame_viewer(frames, "γ", value=2.5)
    assert viewer.image.value == b"c"
    assert [label for label, _ in viewer.control.options] == ["0", "0.001", "2.5"]
    viewer.control.value = 1e-3
    assert viewer.image.value == b"b"


def test_named_frames_get_buttons_and_bad_input_is_clear():
    frames = {"L1": b"a", "L1 + DiffLoss": b"b"}
    viewer = frame_viewer(frames, "loss", value="L1 + DiffLoss")
    assert type(viewer.control).__name__ == "ToggleButtons" and viewer.image.value == b"b"
    viewer.show("L1")
    assert viewer.image.value == b"a"
    with pytest.raises(ValueError, match="not one of the frames"):
        frame_viewer(frames, "loss", value="L2")
    with pytest.raises(ValueError, match="at least one frame"):
        frame_viewer({}, "loss")


def test_chapters_02_to_05_each_have_a_precomputed_widget_and_a_static_fallback():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "notebooks" / "src"
    for chapter in ("02", "03", "04", "05"):
        text = next(root.glob(f"{chapter}_*.py")).read_text()
        assert "frame_viewer(" in text, f"chapter {chapter} has no widget"
        assert "save_figure(" in text, f"chapter {chapter} saves no static figure"
