"""The host side of a session: connect to a board, call its functions, queue at the tracker, query a farm.

Host only (numpy); ``farm.connect`` and ``farm.connect_tracker`` load it on first use.
"""
