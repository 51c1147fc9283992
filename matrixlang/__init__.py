"""matrixlang: a checked language for multi-agent LLM workflows, run peer-to-peer on Ray."""

__version__ = "0.1.0"
IR_VERSION = "1.2"
