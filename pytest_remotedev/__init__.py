"""pytest plugin: run tests on boards of a remote-device farm."""
