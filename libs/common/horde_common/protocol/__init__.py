"""Sans-I/O wire protocols spoken by the validator.

Modules here parse and build messages and track conversation state, but never open sockets, talk
to the bus or the database: services wrap them in their own transports, and tests drive them with
plain values. `miner` is the validator ↔ miner WebSocket protocol of November 2024 (docs/miner-protocol.md);
`facilitator` is the validator → facilitator link (docs/organic.md §1).
"""
