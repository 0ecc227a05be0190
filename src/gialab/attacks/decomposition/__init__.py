"""Analytical decomposition: individual updates read off many rounds of aggregates (survey section 3.1)."""
