"""The authorization page of the registry as an OAuth server (registry_server/oauth/): HTTP only."""
