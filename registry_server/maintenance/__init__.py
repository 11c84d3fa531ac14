"""Keeping the registry's disk bounded: garbage collection (`mcpz registry gc`)."""
