"""The model lifecycle: offline gate, staging, canary with automatic analysis, production.

``pipeline`` runs the ordered steps against a backend (``backends.local`` on one machine);
``gates`` and ``canary`` hold the pure decision statistics; ``world`` builds the data each
round trains on (base data plus the feedback accepted so far) and the traffic it replays.
"""
