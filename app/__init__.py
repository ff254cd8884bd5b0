"""Qiao (桥): FHIR R4 middleware for primary care."""
