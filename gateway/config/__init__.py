"""``gateway.yaml``: the schema (``schema``) and reading a file into it (``loader``, phase 1).

Phase 2, checking what the file names against the machine and the other sections, is
``gateway.resolve``."""
