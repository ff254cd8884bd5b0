"""The mapping engine: declarative mappings (mappings/*.yaml) turn source records into FHIR resources."""
