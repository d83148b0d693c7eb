"""What comes out: run records -> comparison tables (`results.tables`), importance reports, plots.

Depends on run records only (`bench.records`, `bench.errors`): never imports torch,
bench.train, methods or protocols.
"""
