"""Executors that carry the round's messages to the clients."""
