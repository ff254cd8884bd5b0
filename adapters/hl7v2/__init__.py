"""HL7 v2.x over MLLP or HTTP: decoding, parsing and reading by path (parse), acknowledgements (ack), framing (mllp)."""
