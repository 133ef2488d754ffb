"""``python -m sessiond``: the same as the ``sessiond`` command."""

from sessiond.cli import main

raise SystemExit(main())
