"""The command-line layer: what the top-level scripts call with keyword arguments."""
