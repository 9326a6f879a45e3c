"""Rollouts: the generation engine, tree growing, and the sampling policy (ALGORITHM.md §3)."""
