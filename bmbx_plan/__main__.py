"""``python -m bmbx_plan`` runs the ``bmbx-plan`` command line."""

from bmbx_plan.cli import main

raise SystemExit(main())
