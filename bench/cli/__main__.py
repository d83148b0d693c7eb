"""`python -m dmlbench.bench.cli`: the `dmlbench` command."""
import sys

from dmlbench.bench.cli import main

sys.exit(main())
