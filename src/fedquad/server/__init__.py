"""Server side: the round loop, written once against the executor interface."""
