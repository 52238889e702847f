"""What runs inside (or prepares) an engine replica: Ray Serve LLM deployments per pool and
model, the replica's server, its CPU placement, and the default model's weights."""
