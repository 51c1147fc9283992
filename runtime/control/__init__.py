"""The driver's side of a run: options, cluster and topology, admission of rows, progress and summary."""
