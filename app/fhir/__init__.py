"""The FHIR REST surface: HTTP to typed calls and back."""
