"""Operating a fleet: the autoscaler, worker processes, embedded Redis, probes, backlog export,
process lifetimes.
"""
