"""The marketplace: listings, search, reviews, and the official MCP Registry API."""
