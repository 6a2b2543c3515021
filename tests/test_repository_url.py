"""One source for the repository's address (issue 24): pyproject's [project.urls] Repository."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_notebooks", ROOT / "tools" / "build_notebooks.py")
builder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(builder)

GITHUB = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?[\"'\s)/]")


def addresses(text: str) -> set[str]:
    """Every owner/repo named by a Colab link or a GitHub clone URL in ``text``."""
    return set(builder.COLAB_LINK.findall(text)) | set(GITHUB.findall(text))


def test_every_badge_and_clone_cell_agrees_with_pyproject():
    owner_repo = builder.repository_url().removeprefix("https://github.com/")
    readme = (ROOT / "README.md").read_text()
    assert builder.COLAB_LINK.findall(readme), "the README has no Colab badge"
    assert addresses(readme) == {owner_repo}
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        text = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
        assert addresses(text) == {owner_repo}, nb.name
        assert f"git\", \"clone\", \"--depth\", \"1\", \"https://github.com/{owner_repo}\"" in text, nb.name


def test_a_fork_url_reaches_every_badge_and_clone_cell(monkeypatch):
    fork = "https://github.com/someone/diffloss-fork"
    monkeypatch.setattr(builder, "repository_url", lambda: fork)
    readme = builder.readme_with_repository((ROOT / "README.md").read_text(), fork)
    assert addresses(readme) == {"someone/diffloss-fork"}
    assert fork in builder.install_cell() and "someone/diffloss-fork" in builder.colab_badge("x.ipynb")
