"""``python -m agent.cli`` runs the same CLI as ``roomsync`` (as ``python -m agent`` does)."""

from agent.cli import main

raise SystemExit(main())
