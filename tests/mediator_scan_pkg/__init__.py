"""A package scanned by tests/test_mediator.py: handlers marked with @catga.handler in submodules."""
