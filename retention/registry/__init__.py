"""Talking to registries over HTTP: the client, its authentication, and manifest formats."""
