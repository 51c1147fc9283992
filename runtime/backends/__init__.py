"""The models' backends: OpenAI-compatible servers, vLLM on Ray Serve, the simulated model and its server."""
