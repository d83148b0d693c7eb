"""What comes out: run records -> comparison tables (`results.tables`), importance reports
(`results.importance`), plots (`results.plots`) and one self-contained HTML report
(`results.html`).

Depends on run records only (`bench.records`, `bench.errors`): never imports torch,
bench.train, methods or protocols.
"""
