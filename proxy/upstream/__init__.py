"""The upstream: BackgroundCut's published contract (prices, limits,
retention, the pixel-budget fit) and the HTTP client that speaks its token flow. The local
engine imports the contract too, so both sides follow one set of rules.
"""
