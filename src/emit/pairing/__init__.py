"""Product image -> option tag pairing (EMIT): tagging, costs, assignment and evaluation."""
