"""`eaglefinch serve`: the OpenAI-compatible server (app.py) over the scheduler (rwkv_core.scheduler)."""
from .app import create_app
from .chat_template import ChatTemplate

__all__ = ["create_app", "ChatTemplate"]
