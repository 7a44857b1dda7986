"""Peers the benchmarks measure OptiBid against: what a user who did not pick OptiBid's stack would write instead.

Nothing here is product code: the platform never imports it, and it is kept exactly as correct as the
benchmarks and their fairness tests need.
"""
