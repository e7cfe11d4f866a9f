"""SUPERB support: a synthetic mini corpus, task registry and config builder, and s3prl recipe patches."""
