"""Test support shared by the tests (test/) and the benchmarks (bench/): the link emulator.

Import it as ``support.link_emulator`` with test/ on sys.path (pytest puts it there for the
tests; bench/ scripts add it themselves).
"""
