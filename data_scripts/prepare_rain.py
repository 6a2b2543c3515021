#!/usr/bin/env python
"""Put a Rain13K / Rain100H download into ``ROOT/rain/{train/Rain13K,test/Rain100H}/{input,target}``.

    python data_scripts/prepare_rain.py --root data/ --source ~/Downloads/train.zip --source ~/Downloads/test.zip

The deraining sets are distributed by the MPRNet / Restormer authors as ``train.zip`` (Rain13K,
13,712 pairs) and ``test.zip`` (Rain100H among others, 100 pairs) on shared drives, so this
script starts from the archives (zip) or folders you downloaded. It accepts both layouts in
circulation: ``train/Rain13K/{input,target}`` (Restormer) or ``train/{input,target}`` (MPRNet)
for the training set, and a ``Rain100H/{input,target}`` folder for the test set. Images are
paired by file name, counts are checked (a warning with the found count when they differ),
and each subset is copied into a temporary folder renamed into place at the end. BMP and TIFF
files, which the trainer's decoder cannot read, are converted to PNG on the way (losslessly,
checked pixel by pixel); one that a PNG cannot hold exactly stops the script, nothing written. Already
prepared subsets are left alone (``--force`` redoes them).
``diffloss.PairedImageDataset("data/rain", "rain", "train" | "test")`` reads the result.

Nothing the script did not create is deleted: a subset folder is replaced only when it is the
script's earlier output (its ``.diffloss-data.json`` lists every file in it), and a ``--source``
inside a folder to be replaced is refused. Errors are one line ``error: ...`` (exit status 1,
Ctrl-C 130); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Subset, cli_main, prepare_cli  # noqa: E402

SUBSETS = (
    Subset(dest="train/Rain13K", names=("Rain13K", "train"), pair=("input", "target"), expected=13_712),
    Subset(dest="test/Rain100H", names=("Rain100H",), pair=("input", "target"), expected=100),
)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    return prepare_cli(argv, name="Rain", folder="rain", subsets=SUBSETS,
                       description="Normalise a Rain13K/Rain100H download into ROOT/rain.",
                       source_help="a zip or folder you downloaded (repeat: e.g. train.zip and test.zip)")


if __name__ == "__main__":
    sys.exit(main())
