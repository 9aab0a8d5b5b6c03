"""The proxy daemon: boards behind NAT dial out to it, clients reach them through it (``python -m farm.proxy``)."""
