"""Images: checking an upload, getting it to the upstream once, keeping its
original, replacing and removing it.
"""
