"""The ``cutproxy`` command: serve, engine, settings, images, srcset, sign."""
