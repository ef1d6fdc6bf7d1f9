"""cutproxy: an on-demand image proxy for background-removed product images."""

__version__ = "0.1.0"
