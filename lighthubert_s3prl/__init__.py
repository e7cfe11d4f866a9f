"""LightHuBERT for s3prl: any-subnet upstream, SUPERB recipes, compact export and compression training.

Importing the package puts its upstream names into ``s3prl.hub`` as soon as s3prl loads it (see
:mod:`lighthubert_s3prl.upstream.registration`), so ``S3PRLUpstream("lighthubert_local", ...)`` builds ours;
``register()`` does it explicitly and returns the names.
"""
from .model.config import (
    SEARCH_SPACES,
    ConfigError,
    ModelConfig,
    SearchSpace,
    SubnetConfig,
    count_parameters,
    get_preset,
    largest_subnet_under_budget,
    load_subnet_file,
    resolve_subnet,
)

from .upstream.registration import install_import_hook, register

__version__ = "0.1.0"

__all__ = [
    "SEARCH_SPACES",
    "ConfigError",
    "ModelConfig",
    "SearchSpace",
    "SubnetConfig",
    "count_parameters",
    "get_preset",
    "largest_subnet_under_budget",
    "load_subnet_file",
    "register",
    "resolve_subnet",
]

install_import_hook()
