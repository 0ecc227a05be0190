"""Gradient isolation: a malicious server makes one client's update stand alone in the aggregate."""
