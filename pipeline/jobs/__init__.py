"""Job and shard state in Redis: keys, the job store, finishing, following, resuming, tenants and
orphaned shards.
"""
