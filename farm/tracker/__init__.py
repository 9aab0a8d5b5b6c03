"""The tracker daemon: boards register under a key, clients queue for one (``python -m farm.tracker``)."""
