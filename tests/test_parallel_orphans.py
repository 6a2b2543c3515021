"""A comparison's workers end with their parent (found when a killed notebook kernel left two
workers training for minutes): each stops its run at the next step, saves ``last.pt`` and exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, multiprocessing, sys, threading, time
    from pathlib import Path
    import torch
    from diffloss.parallel import train_in_processes
    from diffloss.training import TrainConfig

    if __name__ == "__main__":
        torch.set_num_threads(1)
        out = Path(sys.argv[1])
        configs = [TrainConfig(crop=16, batch=2, iterations=100000, eval_every=0, max_size=64, train_items=4,
                               val=0, seed=s, cpu=True, out=str(out / f"run{s}"), save_every=100000,
                               model="tests.fixtures_nets:TinyNet", model_kwargs={"width": 4})
                   for s in (0, 1)]

        def tell():
            while len(multiprocessing.active_children()) < 2:
                time.sleep(0.1)
            pids = [p.pid for p in multiprocessing.active_children() if p.name.startswith("diffloss-run")]
            (out / "pids.json").write_text(json.dumps(pids))

        threading.Thread(target=tell, daemon=True).start()
        for _ in train_in_processes(configs, processes=2, threads=1):
            pass
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split()[2] != "Z"


def wait_for(condition, deadline_s: float = 120.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_workers_stop_save_and_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "compare.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The parent's stderr is kept: its workers write there too. The only line expected is the
    # multiprocessing resource tracker's, which outlives the killed parent and unlinks the
    # semaphores of its queues and stop event ("... leaked semaphore objects to clean up").
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=ROOT, env=env,
                                  stderr=err)
    try:
        pids_file = tmp_path / "pids.json"
        training = [tmp_path / f"run{s}" / "history.csv" for s in (0, 1)]
        assert wait_for(lambda: pids_file.exists() and all(
            p.exists() and len(p.read_text().splitlines()) > 3 for p in training)), "the runs never started"
        import json

        pids = json.loads(pids_file.read_text())
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_for(lambda: not any(alive(p) for p in pids)), "a worker outlived its parent"
        assert "Traceback" not in stderr.read_text(), stderr.read_text()  # stopped, not crashed
        for s in (0, 1):
            assert (tmp_path / f"run{s}" / "last.pt").exists()  # stopped at a step, saved
    finally:
        if parent.poll() is None:
            parent.kill()
