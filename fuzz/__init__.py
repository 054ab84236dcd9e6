"""Drivers: the program format (corpus), the shared property (run), the
command line (cli), and the fuzzing pipeline."""

import impls  # noqa: F401  (first: SHOOTDOWN_PURE=1 takes effect before a compiled module loads)
