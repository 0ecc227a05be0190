"""Bridges to optional outside systems (Ray for sweeps); each imports its library only when used."""
