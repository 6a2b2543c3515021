"""Build the chapter notebooks from their percent-format sources in ``notebooks/src/``.

Each ``notebooks/src/NN_name.py`` is a jupytext percent-format script: cells separated by
``# %%`` (code) and ``# %% [markdown]`` (markdown, every line prefixed by ``# ``). This script
reads it with jupytext and writes
``notebooks/NN_name.ipynb`` (unexecuted) with two cells in front: the title with an
"Open in Colab" badge, and a cell that installs the package on Colab only. The repository
URL comes from one place, ``pyproject.toml``'s ``[project.urls] Repository``; every build also
points the README's Colab badges at it.

    python tools/build_notebooks.py            # all chapters
    python tools/build_notebooks.py 01         # chapters whose name starts with 01
    python tools/build_notebooks.py --keep-outputs   # markdown (or repository URL) changes only:
                                                     # keep the executed outputs
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext
import nbformat

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"


def repository_url() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["urls"]["Repository"].rstrip("/")


def colab_url(notebook: str) -> str:
    """The Colab link of ``notebooks/<notebook>`` on the repository's main branch."""
    owner_repo = repository_url().removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{notebook}"


def colab_badge(notebook: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook)})")


def install_cell() -> str:
    """The first code cell: on Colab, clone the repository (the chapters use its
    ``data_scripts/``, ``data/`` and ``checkpoints/``), install it and work from its root."""
    return (
        "# On Colab: clone this repository, install it, and work from its root (the chapters use\n"
        "# its data_scripts/, data/ and checkpoints/). Elsewhere this cell does nothing (locally,\n"
        "# `make demo` / `make lab` have installed the package already).\n"
        "import os\n"
        "import subprocess\n"
        "import sys\n\n"
        "if \"google.colab\" in sys.modules:\n"
        "    REPO = \"/content/diffloss\"\n"
        "    if not os.path.isdir(REPO):\n"
        f"        subprocess.run([\"git\", \"clone\", \"--depth\", \"1\", \"{repository_url()}\", REPO], check=True)\n"
        "    subprocess.run([sys.executable, \"-m\", \"pip\", \"install\", \"-q\", \"-e\", REPO], check=True)\n"
        "    os.chdir(REPO)\n"
        "    sys.path.insert(0, REPO)  # this kernel started before the install"
    )


def parse_percent(text: str) -> list[tuple[str, str]]:
    """``(kind, source)`` of each cell of a percent-format source, read by jupytext."""
    return [(c.cell_type, c.source) for c in jupytext.reads(text, fmt="py:percent").cells]


def build(src: Path, keep_outputs: bool = False) -> Path:
    """Write ``notebooks/<src>.ipynb`` from the percent-format source. ``keep_outputs``: for a
    markdown-only edit, carry the executed outputs over from the existing notebook; refused when
    any code cell differs (then the chapter must be re-executed)."""
    name = src.stem + ".ipynb"
    cells = parse_percent(src.read_text())
    if not cells or cells[0][0] != "markdown" or not cells[0][1].startswith("# "):
        raise ValueError(f"{src}: the first cell must be a markdown title '# ...'")
    title, _, rest = cells[0][1].partition("\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    nb.cells.append(nbformat.v4.new_markdown_cell(f"{title}\n\n{colab_badge(name)}\n{rest}".rstrip()))
    nb.cells.append(nbformat.v4.new_code_cell(install_cell()))
    for kind, source in cells[1:]:
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(source))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
    out = ROOT / "notebooks" / name
    if keep_outputs:  # the install cell (the first code cell, no output off Colab) may differ
        old_code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
        new_code = [c for c in nb.cells if c.cell_type == "code"]
        if [c.source for c in old_code[1:]] != [c.source for c in new_code[1:]]:
            raise SystemExit(f"{name}: code cells changed since it was executed; re-execute it "
                             "instead of --keep-outputs")
        for old, new in zip(old_code, new_code):
            new.outputs, new.execution_count = old.outputs, old.execution_count
    nbformat.write(nb, out)
    return out


COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/([^/\s)]+/[^/\s)]+)/blob/")


def readme_with_repository(text: str, url: str) -> str:
    """``text`` with every Colab link pointed at the repository ``url`` (``[project.urls]``)."""
    owner_repo = url.rstrip("/").removeprefix("https://github.com/")
    return COLAB_LINK.sub(f"https://colab.research.google.com/github/{owner_repo}/blob/", text)


def update_readme() -> bool:
    """Point the README's Colab badges at ``[project.urls] Repository``; True if it changed."""
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = readme_with_repository(text, repository_url())
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str]) -> int:
    keep = "--keep-outputs" in argv
    prefixes = [a for a in argv if a != "--keep-outputs"] or [""]
    for src in sorted(SRC.glob("*.py")):
        if any(src.stem.startswith(p) for p in prefixes):
            print("built", build(src, keep_outputs=keep).relative_to(ROOT))
    if update_readme():
        print("README.md: Colab badges now point at", repository_url())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
