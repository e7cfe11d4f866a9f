"""The model layer: subnet configs and search spaces, the network, the compact model, checkpoint I/O.

Imports nothing on purpose: the SUPERB hidden-set folder bundles a few modules of this package by path,
and a package ``__init__`` that pulled in more would need those bundled too.
"""
