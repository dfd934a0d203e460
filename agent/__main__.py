"""``python -m agent`` runs the same CLI as ``roomsync``."""

from agent.cli import main

raise SystemExit(main())
