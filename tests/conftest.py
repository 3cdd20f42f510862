"""Shared fixtures: a node registry holding the small test nodes of ``nodes_for_tests``."""
from __future__ import annotations

from collections import Counter

import pytest

import nodes_for_tests
from comfy.nodes.registry import NodeRegistry


@pytest.fixture
def calls() -> Counter:
    """How often each test node ran, counted from zero for this test."""
    nodes_for_tests.reset()
    return nodes_for_tests.CALLS


@pytest.fixture
def node_registry(calls: Counter) -> NodeRegistry:
    registry = NodeRegistry()
    registry.register_mappings("tests", nodes_for_tests.NODE_CLASS_MAPPINGS, module="nodes_for_tests")
    return registry
