"""Re-run committed configurations on the first N items of their subset and compare item-level predictions.

Usage: BASELINE=DIR python benchmarks/refactor_repro.py new 48  (DIR/<report>/items/ extracted from
docs/<report>/items.tar.xz). "old" runs the API before the adapter refactor (PYTHONPATH at a checkout of
af3b9a1). Rows that share a file name here (the two fastv-qa rows) are compared in run order."""