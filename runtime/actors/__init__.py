"""The Ray actors of a run: agent replicas, the coordinator, the sink, the sim and tool services."""
