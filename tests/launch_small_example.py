"""Run our launcher with s3prl's example downstream shrunk to a few short random clips (CI time)."""
import sys

import s3prl.downstream.example.dataset as example_dataset

from lighthubert_s3prl.run_downstream import main

example_dataset.EXAMPLE_DATASET_SIZE = 8
example_dataset.EXAMPLE_WAV_MIN_SEC = 1
example_dataset.EXAMPLE_WAV_MAX_SEC = 3

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
