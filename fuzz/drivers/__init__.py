"""The engines that drive their own loop: Hypothesis (shrinking, targeted
search on behaviour events) and atheris (libFuzzer, coverage-guided).  The
seeded engines (random, pct) live in fuzz.engine; fuzz.session runs them all
behind one interface."""
