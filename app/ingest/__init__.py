"""Inbound messages: stored raw before anything else (inbox), then parsed, mapped and applied (pipeline)."""
