"""Source-system adapters (HL7 v2, HIS exports, public health, family-doctor contracts): bytes in, records out."""
