"""``python -m bench [--smoke] [--out DIR]``: run every scenario, print a table, write JSON and RESULTS.md."""

from bench.runner import main

raise SystemExit(main())
