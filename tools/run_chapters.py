"""Execute chapters in place from a fresh kernel, in order, and record how long each took.

``make demo`` runs it over every chapter. Each chapter is executed by nbconvert (as a reader's
"restart and run all"); its wall time, the profile, the date and the machine go to
``figures/demo_times.json``, which the README's results (``tools/readme_results.py``) report: the
time the demo takes is what was measured, never a number typed by hand.

    python tools/run_chapters.py            # every chapter, under DIFFLOSS_PROFILE (default: small)
    python tools/run_chapters.py 04 05      # chapters whose name starts with 04 or 05
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMES = ROOT / "figures" / "demo_times.json"


def chapters(prefixes: list[str]) -> list[Path]:
    found = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    chosen = [nb for nb in found if not prefixes or any(nb.name.startswith(p) for p in prefixes)]
    if prefixes and not chosen:
        raise SystemExit(f"run_chapters: no chapter starts with {', '.join(prefixes)}; the chapters "
                         f"are {', '.join(nb.name[:2] for nb in found)}")
    return chosen


def record(profile: str, name: str, seconds: float) -> None:
    """Add one chapter's time to ``figures/demo_times.json`` (written atomically)."""
    sys.path.insert(0, str(ROOT))
    from diffloss.atomic import atomic_write_text
    from diffloss.experiments import machine_description

    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    times.setdefault(profile, {})[name] = {
        "seconds": round(seconds, 1), "date": _dt.date.today().isoformat(),
        "machine": machine_description()}
    atomic_write_text(TIMES, json.dumps(times, indent=1, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    profile = os.environ.get("DIFFLOSS_PROFILE", "small")
    for nb in chapters(argv):
        print(f"== executing {nb.relative_to(ROOT)} (profile: {profile})", flush=True)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "notebook", "--execute",
                               "--inplace", "--ExecutePreprocessor.timeout=3600",
                               "--ExecutePreprocessor.kernel_name=python3", str(nb)], cwd=ROOT)
        if done.returncode != 0:
            print(f"run_chapters: {nb.name} failed (exit {done.returncode}); its time is not recorded")
            return done.returncode
        seconds = time.perf_counter() - t0
        record(profile, nb.stem, seconds)
        print(f"   {nb.stem}: {seconds:.0f} s (figures/demo_times.json)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
