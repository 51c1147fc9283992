"""Row sources and output formats: JSONL (.gz/.zst), Parquet shards, saved HF datasets; the journal and its merge."""
