"""Dependencies of an agent project: add, lock, install, tree/why/outdated."""
