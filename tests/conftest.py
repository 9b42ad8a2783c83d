"""Shared test configuration: the real-server fixtures from catga.testing."""

pytest_plugins = ["catga.testing.pytest_plugin"]
