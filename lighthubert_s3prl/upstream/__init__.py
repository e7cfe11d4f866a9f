"""The s3prl face: the upstream expert, the hub entries (``-u NAME``) and the ``run_downstream`` launcher.

Imports nothing on purpose: the SUPERB hidden-set folder bundles ``expert.py`` with this file, and an
``__init__`` that pulled in more (the hub entries, s3prl) would break that folder's isolated load check.
"""
