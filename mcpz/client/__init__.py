"""Talking to a registry: typed clients of its JSON API."""
