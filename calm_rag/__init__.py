"""calm-rag: cross-lingual self-aligned (CALM) training of a Self-RAG generator."""

__version__ = "0.1.0"
