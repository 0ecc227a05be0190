"""Client-side poisoning: a malicious client shapes its own update to make the aggregate leak."""
