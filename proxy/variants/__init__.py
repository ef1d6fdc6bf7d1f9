"""The variant service: from a canonical variant to its output, minting at
most once (single flight, cross-process leases, batching) and, in store mode, deriving it
from the image's master.
"""
