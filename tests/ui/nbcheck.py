"""nbval's output check, for chapters executed in the browser (issue 44).

``make test`` used to execute chapters 01–05 twice: once under nbval (``--nbval-lax``: every cell
runs without error, cells marked ``# NBVAL_CHECK_OUTPUT`` print what the committed chapter
printed) and once in JupyterLab (tests/ui). Where the browser tests run, they now make nbval's
check on their own execution, and nbval leaves those chapters to them (tests/ui/conftest.py).

:func:`output_mismatches` compares as nbval does (nbval.plugin, ``IPyNbCell.compare_outputs``):
streams of one name joined (``\\r``/``\\b`` applied), outputs flattened by key (a stream's name,
each MIME type of a display), the keys nbval skips left out (metadata, counts, images, widget
model ids), then the same keys, the same number of values per key and equal values in order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import nbformat
from nbval.plugin import coalesce_streams, find_comment_markers, find_metadata_tags

#: The keys nbval leaves out of the comparison (``IPyNbFile.skip_compare`` without ``--nbdime``).
SKIP_COMPARE = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


def checks_output(cell: dict[str, Any]) -> bool:
    """Whether nbval compares this code cell's output under ``--nbval-lax``."""
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    markers = dict(find_comment_markers(source))
    markers.update(dict(find_metadata_tags(cell.get("metadata", {})) or ()))
    return bool(markers.get("check"))


def _flatten(outputs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    nodes = coalesce_streams([nbformat.from_dict(_joined(o)) for o in outputs])
    flat: dict[str, list[Any]] = defaultdict(list)
    for out in nodes:
        if out.output_type == "stream":
            flat[out.name].append(out.text)
            continue
        for key, value in out.items():
            if key == "data":
                for mime, data in value.items():
                    if mime not in SKIP_COMPARE:
                        flat[mime].append(data)
            elif key not in SKIP_COMPARE:
                flat[key].append(value)
    return flat


def _joined(output: dict[str, Any]) -> dict[str, Any]:
    """nbformat stores multi-line text as lists of lines; nbval compares the joined strings."""
    out = dict(output)
    if isinstance(out.get("text"), list):
        out["text"] = "".join(out["text"])
    if "data" in out:
        out["data"] = {k: "".join(v) if isinstance(v, list) else v for k, v in out["data"].items()}
    return out


def output_mismatches(reference: dict[str, Any], executed: list[dict[str, Any]]) -> list[str]:
    """For each code cell of the committed notebook ``reference`` that nbval checks, what the
    ``executed`` code cells (same order) printed differently; empty when all agree."""
    ref_cells = [c for c in reference["cells"] if c["cell_type"] == "code"]
    if len(ref_cells) != len(executed):
        return [f"{len(executed)} code cells ran, the committed chapter has {len(ref_cells)}"]
    problems = []
    for i, (ref, got) in enumerate(zip(ref_cells, executed)):
        if not checks_output(ref) or ref.get("execution_count") is None:
            continue
        want, have = _flatten(ref.get("outputs", [])), _flatten(got.get("outputs", []))
        if set(want) != set(have):
            problems.append(f"code cell {i}: output kinds {sorted(have)}, the chapter has {sorted(want)}")
            continue
        for key in want:
            if want[key] != have[key]:
                problems.append(f"code cell {i}: {key} differs:\n  committed: {want[key]!r}\n"
                                f"  executed:  {have[key]!r}")
                break
    return problems
