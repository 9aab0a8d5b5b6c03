"""Project-wide pytest configuration: pytester must be enabled from the root conftest."""

pytest_plugins = ["pytester"]
