"""``python -m interp`` runs the ``interp`` command (so ``torchrun -m interp capture ...`` launches workers)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
