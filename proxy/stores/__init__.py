"""Where state lives, side by side per kind: the cache tiers, the registry,
leases, counters, originals, masters and derived bytes, on local disk, in Redis or in an
object store. Stores know keys and bytes, not requests.
"""
