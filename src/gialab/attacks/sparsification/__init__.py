"""Gradient sparsification by a malicious server: imprint modules and trap weights (survey section 3.1)."""
