"""`python -m impl ...` is the `miniplaces` command (and what torchrun launches with `-m impl`)."""

import sys

from impl.cli import main

sys.exit(main())
