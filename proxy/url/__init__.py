"""The URL: what a variant is, the grammar that reads one, the size ladder and
signatures. Pure functions, no I/O: everything that decides what a request asks for.
"""
