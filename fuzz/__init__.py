"""Drivers: the program format (corpus), the shared property (run), the
command line (cli), and the fuzzing pipeline."""
