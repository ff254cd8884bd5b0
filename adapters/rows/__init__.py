"""CSV and JSON exports: one row, one inbound message."""
