"""The web dashboard: server-rendered pages over the backend (see docs/dashboard.md)."""

try:
    import jinja2  # noqa: F401
except ImportError:  # pragma: no cover - depends on what is installed
    from offload.errors import MissingDependency

    raise MissingDependency("the dashboard", "server") from None

from offload.server.dashboard.routes import Dashboard, create_dashboard

__all__ = ["Dashboard", "create_dashboard"]
