"""``python -m diffloss``: the same as the ``diffloss`` command (:mod:`diffloss.cli`)."""

import sys

from .cli import main

sys.exit(main())
