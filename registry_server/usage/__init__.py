"""Usage: per-call usage events, their recording and the usage API."""
