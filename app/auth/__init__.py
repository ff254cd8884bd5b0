"""Security: SMART Backend Services tokens, scopes, institution policy and the audit trail."""
