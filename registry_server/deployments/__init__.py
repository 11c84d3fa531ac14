"""Deployments: desired state, revisions, signed statements; scheduler.py is the pure placement core."""
