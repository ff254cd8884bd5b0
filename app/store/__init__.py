"""Versioned FHIR resources and their search index."""
