"""Gradient isolation by a malicious server: single updates picked out of an aggregate (survey section 3.1)."""
