"""Unit tests: pure functions and classes, no servers, no subprocesses, no network."""
