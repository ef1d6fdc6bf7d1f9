"""The local engine: a BackgroundCut-v3-compatible render server for offline use and tests."""

from proxy.engine.app import create_engine_app
from proxy.engine.settings import EngineSettings
from proxy.upstream.contract import estimate_credits

__all__ = ["EngineSettings", "create_engine_app", "estimate_credits"]
