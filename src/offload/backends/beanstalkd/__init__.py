"""Beanstalkd: ``beanstalk://host:11300/?store=<url>`` (job state in a store) and
``beanstalk://host:11300/`` (store-less). See docs/beanstalkd.md."""

from offload.backends.beanstalkd.stored import StoredBeanstalkBackend, beanstalk_backend

__all__ = ["StoredBeanstalkBackend", "beanstalk_backend"]
