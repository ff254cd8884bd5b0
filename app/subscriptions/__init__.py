"""FHIR Subscriptions (R5 Backport IG on R4): topics, the transactional outbox, and rest-hook delivery."""
