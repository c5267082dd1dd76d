"""``twist dashboard-example``: the plugin that makes ``examples/twist_app.py`` runnable by twist.

No ``__init__.py`` in ``examples/twisted/`` or here: Twisted finds plugin folders on
``sys.path`` this way (so ``examples`` must be on ``PYTHONPATH``).
"""

from twisted.application.service import ServiceMaker

dashboardExample = ServiceMaker(
    "Reactor Dashboard example",
    "twist_app",
    "A small web app with the Reactor Dashboard on its own port.",
    "dashboard-example",
)
