"""Compression training for LightHuBERT: stage-1 distillation, once-for-all supernet training (stage 2),
ensemble knowledge distillation (EKD) and subnet search.

Entry points: ``lighthubert-s3prl train stage1|stage2|ekd CONFIG`` (:mod:`.cli`),
``lighthubert-s3prl search ...`` (:mod:`.search`), and :func:`.trainer.train` from Python.
See docs/training.md.
"""
from .config import TrainingConfig, load_config

__all__ = ["TrainingConfig", "load_config"]
