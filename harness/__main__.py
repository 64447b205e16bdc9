"""`python -m harness ...` (and `torchrun -m harness pretrain ...`): the same commands as the `harness` script."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
