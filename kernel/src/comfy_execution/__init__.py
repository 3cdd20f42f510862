"""Execution helpers vanilla custom nodes import: graph building for node expansion, link tests."""
