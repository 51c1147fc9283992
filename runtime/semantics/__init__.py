"""What a row's step means, without Ray: the engine, expressions, templates, extracts, input rows, messages."""
