"""Robustness benchmark: malicious clients (``adversary``) against each strategy and fusion rule (issue 10, item 4)."""
