"""The simulated SMP machine and the generic mm code it runs.

The machine never imports a strategy or a platform: they are handed to
:class:`~impls.machine.machine.Machine` as function tables (see strategy.py and
platform.py for the two protocols).
"""
