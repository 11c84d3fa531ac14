"""Releases: the agents index and its releases (routes.py serves /v1/index and the release API)."""
