"""LightHuBERT for s3prl: any-subnet upstream, SUPERB recipes, compact export and compression training."""
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
    "resolve_subnet",
]
