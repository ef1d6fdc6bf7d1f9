"""The cost and abuse guards on the miss side: the one guarded minter every
token passes, the credit budget and ledger, per-client miss limits, fallbacks.
"""
