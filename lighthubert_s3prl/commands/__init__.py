"""The ``lighthubert-s3prl`` command line: the dispatcher (:mod:`.cli`) and one module per command."""
