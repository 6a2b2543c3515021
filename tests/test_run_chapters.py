"""tools/run_chapters.py (make demo): a chapter's measured time is recorded, never typed (issue 46)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import run_chapters  # noqa: E402


def test_a_prefix_that_names_no_chapter_is_one_clear_line():
    with pytest.raises(SystemExit, match="no chapter starts with 99; the chapters are 01, 02"):
        run_chapters.chapters(["99"])
    assert [p.name[:2] for p in run_chapters.chapters(["04", "06"])] == ["04", "06"]


def test_record_keeps_other_chapters_and_profiles(tmp_path, monkeypatch):
    times = tmp_path / "demo_times.json"
    times.write_text(json.dumps({"ci": {"01_x": {"seconds": 1.0}}}))
    monkeypatch.setattr(run_chapters, "TIMES", times)
    run_chapters.record("small", "04_train", 12.34)
    run_chapters.record("small", "05_compare", 5.0)
    data = json.loads(times.read_text())
    assert data["ci"] == {"01_x": {"seconds": 1.0}}
    assert data["small"]["04_train"]["seconds"] == 12.3
    assert set(data["small"]) == {"04_train", "05_compare"}
    assert data["small"]["05_compare"]["machine"] and data["small"]["05_compare"]["date"]
