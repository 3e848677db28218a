"""The web dashboard: server-rendered pages over the backend (see docs/dashboard.md)."""

from offload.server.dashboard.routes import Dashboard, create_dashboard

__all__ = ["Dashboard", "create_dashboard"]
