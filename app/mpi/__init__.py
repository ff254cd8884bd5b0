"""Resident matching: the master patient index (GB 11643 IDs, Chinese names, Fellegi-Sunter scoring, golden records)."""
