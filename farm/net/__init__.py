"""What every side of the farm shares on the wire: sockets, TLS, the farm secret, framed transport, the gate.

Standard library only, Python 3.8 (boards import it), except ``aio``: the asyncio listener of the tracker and
the proxy, which a board never loads.
"""
