"""Visitors: unknown faces kept and grouped incrementally into anonymous identities.

Rooms: :mod:`.rule` (the pure grouping rule), :mod:`.quality` (which faces may
seed or bridge a group), :mod:`.events` (the visitor event stream),
:mod:`.replica` (a process's FAISS copy), :mod:`.store` (Redis, the truth),
:mod:`.service` (the facade the app layer and the workers call, and the
replica's snapshots), :mod:`.backup` (visitors in the backup archive),
:mod:`.commands` (the ``faec-rec visitors`` CLI).
"""
