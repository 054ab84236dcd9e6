"""Subcommands of ``shootdown``: one module each, with a ``register(sub)``
that adds its parser and sets ``func``.  Listed in the order ``--help`` shows."""

COMMANDS: list[str] = [
    "run",
    "explain",
    "explore",
    "matrix",
    "fuzz",
    "minimize",
]
