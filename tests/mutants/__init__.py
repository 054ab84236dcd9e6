"""Planted bugs: deliberately broken strategies and platforms, each a small
change to a correct one, mirroring a bug or near-miss from kernel history.
Never in the registry; loaded by path like a user's file."""
