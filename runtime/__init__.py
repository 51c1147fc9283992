"""The peer-to-peer Ray runtime: executes the IR, knows nothing of the syntax."""
