"""Orchestration: the workspace, its config, rounds, locking, status, the report and the CLI."""
