"""``python -m lighthubert_s3prl.cli`` (and ``torchrun -m lighthubert_s3prl.cli``): the command line under the
path earlier releases documented; the code is :mod:`lighthubert_s3prl.commands.cli`."""
import sys

from .commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
