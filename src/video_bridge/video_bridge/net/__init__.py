"""The network edge: thin adapters between the server libraries and the core."""
