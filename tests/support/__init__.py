"""Test support: server fixtures, the usniff runner, ground-truth counters, tshark helpers.

Used by the tests, bench/ and captures/ as the package ``tests.support``
(run them from the repository root: ``python -m pytest``, ``python -m bench``,
``python -m captures.record``).  May import: usniff (any stage), nothing of the
tests themselves.
"""
