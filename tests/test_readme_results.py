"""The README's results section is written from the committed results files
(``tools/readme_results.py``): it must agree with them, and the check must notice when it does not."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "tools" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_results_section_agrees_with_the_results_files(capsys):
    assert _tool().main(["--check"]) == 0, capsys.readouterr().out


def test_the_check_fails_when_a_results_file_changes(tmp_path, capsys):
    tool = _tool()
    for rel in ("README.md", "figures", "results"):
        src = ROOT / rel
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / rel)
    path = tmp_path / "figures" / "04_results.json"
    r = json.loads(path.read_text())
    r["splits"]["in_distribution"]["hazy"]["psnr"] += 1.0      # the input scored 1 dB higher
    path.write_text(json.dumps(r))
    tool.ROOT = tmp_path
    assert tool.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "disagree" in out and f"{r['splits']['in_distribution']['hazy']['psnr']:.2f} dB" in out
    assert tool.main([]) == 0 and tool.main(["--check"]) == 0   # rewriting makes them agree again


def test_the_readme_has_no_hand_typed_results_outside_the_markers():
    readme = (ROOT / "README.md").read_text()
    tool = _tool()
    section = readme.split("## Results", 1)[1].split("\n## ", 1)[0]
    before, after = section.split(tool.BEGIN)[0], section.split(tool.END)[1]
    assert not before.strip(), "text between '## Results' and the generated section"
    assert "dB" not in after and "±" not in after, "a result typed after the generated section"
