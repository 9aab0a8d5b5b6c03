"""The board: everything that ships to a board and runs there (the daemon, its sessions and their sandbox).

Standard library only, Python 3.8: a board runs these on a bare Python. They may import the shared modules at
the top of ``farm``, ``farm.net`` and ``farm.protocol``; never the host side (``farm.client``, ``farm.ops``) or
the tracker and the proxy. ``farm pack-server`` packs exactly these folders.
"""
