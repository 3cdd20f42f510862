"""Browser tests: a package, so that its conftest does not replace the ``conftest`` module other tests import."""
