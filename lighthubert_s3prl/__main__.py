"""``python -m lighthubert_s3prl COMMAND``: the ``lighthubert-s3prl`` commands, for environments whose
scripts folder is not on PATH (as ``python -m s3prl...`` users expect)."""
import sys

from .commands.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m lighthubert_s3prl"))
