"""Everything that executes: the simulated machine, the platforms, the
strategies, and the registry of built-ins."""
