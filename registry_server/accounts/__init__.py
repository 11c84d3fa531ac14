"""Accounts: accounts, tokens, namespaces and their members, wallet sign-in (routes.py is the HTTP side)."""
