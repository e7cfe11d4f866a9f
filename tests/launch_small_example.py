"""s3prl's `example` downstream through our launcher, shrunk to a few short random clips (CI time).

Run as a script: ``python tests/launch_small_example.py <run_downstream args>``. The PyPI s3prl has no
config for `example`; :func:`example_config` writes a minimal one.
"""
import sys
from pathlib import Path

EXAMPLE_CONFIG = """\
runner:
  total_steps: {steps}
  gradient_clipping: 1
  gradient_accumulate_steps: 1
  log_step: 2
  eval_step: 1000
  save_step: 2
  max_keep: 2
  eval_dataloaders: [dev]
optimizer:
  name: TorchOptim
  torch_optim_name: Adam
  lr: 1.0e-3
downstream_expert:
  datarc: {{num_workers: 0, train_batch_size: 2, eval_batch_size: 2}}
  modelrc: {{input_dim: 16}}
"""


def example_config(path: Path, steps: int = 4) -> Path:
    path.write_text(EXAMPLE_CONFIG.format(steps=steps))
    return path


if __name__ == "__main__":
    import s3prl.downstream.example.dataset as example_dataset

    from lighthubert_s3prl.run_downstream import main

    example_dataset.EXAMPLE_DATASET_SIZE = 8
    example_dataset.EXAMPLE_WAV_MIN_SEC = 1
    example_dataset.EXAMPLE_WAV_MAX_SEC = 3
    sys.exit(main(sys.argv[1:]))
