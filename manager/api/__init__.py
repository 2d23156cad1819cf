"""The HTTP API: GraphQL at /query, /health and /metrics."""
