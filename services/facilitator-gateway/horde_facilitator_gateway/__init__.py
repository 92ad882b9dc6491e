"""facilitator-gateway: the facilitator link (auth, heartbeat, reconnect, organic in, status out)."""
