#!/usr/bin/env python
"""Put a LOL (LOw-Light) download into ``ROOT/lol/{our485,eval15}/{low,high}``.

    python data_scripts/prepare_lol.py --root data/ --source ~/Downloads/LOLdataset.zip

LOL (Wei et al., BMVC 2018, "Deep Retinex Decomposition for Low-Light Enhancement") has no
stable direct link, so this script starts from the archive (zip) or folder you downloaded.
It finds the folders named ``our485`` and ``eval15`` that hold ``low/`` and ``high/`` wherever
they sit, pairs images by file name, checks the counts (485 train pairs, 15 test pairs; a
warning with the found count when they differ), and copies them into a temporary folder that
is renamed into place at the end. BMP and TIFF
files, which the trainer's decoder cannot read, are converted to PNG on the way (losslessly,
checked pixel by pixel); one that a PNG cannot hold exactly stops the script, nothing written. Already prepared subsets are left alone (``--force`` redoes
them). ``diffloss.PairedImageDataset("data/lol", "lol", "train" | "test")`` reads the result.

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
    Subset(dest="our485", names=("our485",), pair=("low", "high"), expected=485),
    Subset(dest="eval15", names=("eval15",), pair=("low", "high"), expected=15),
)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    return prepare_cli(argv, name="LOL", folder="lol", subsets=SUBSETS,
                       description="Normalise a LOL download into ROOT/lol.",
                       source_help="a LOL zip or folder you downloaded (repeat for several)")


if __name__ == "__main__":
    sys.exit(main())
