"""Test helpers live in tests/support/ (imported as `support.*`): pytest puts this folder, the
conftest's own, on sys.path. No test file imports another test file."""
