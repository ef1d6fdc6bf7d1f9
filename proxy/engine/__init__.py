"""The local engine: a BackgroundCut-v3-compatible render server for offline use and tests."""

from proxy.engine.app import create_engine_app
from proxy.engine.settings import EngineSettings

__all__ = ["EngineSettings", "create_engine_app"]
