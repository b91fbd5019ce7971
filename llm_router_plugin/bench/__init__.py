"""The benchmark behind ``llm-router bench``."""
