"""Engine replicas on Ray behind one OpenAI endpoint (``podserve serve --replicas N``).

``replica.py``  the Ray actor: one ``AsyncEngine`` streaming a request's deltas back.
``policy.py``   routing policies (pure Python): round-robin, least outstanding requests.
``router.py``   the front end's ``EngineClient``: picks a replica, streams, health-checks,
                restarts dead replicas.
``metrics.py``  /metrics for the cluster: every replica's registry, labelled ``replica``.
``launch.py``   ``ray.init`` and replica start-up for ``podserve serve``.

Ray is optional (``pip install 'podserve[distributed]'``); only ``router.py`` imports it at
module level, and the server imports the package's Ray parts only after ``require_ray()``
passed (``policy.py`` and ``metrics.py`` work without Ray).
"""
from __future__ import annotations

RAY_INSTALL_HINT = "pip install 'podserve[distributed]'  (or: pip install 'ray>=2.40')"


class RayNotInstalled(ValueError):
    """``--replicas``/``--ray-address`` asked for Ray but it is not importable (a usage error: exit 2)."""


def require_ray(flag: str = "--replicas"):
    """Import and return ``ray``, or raise ``RayNotInstalled`` with one line saying what to install."""
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalled(f"{flag} serves replicas on Ray, which is not installed ({e}); "
                              f"install it with: {RAY_INSTALL_HINT}") from None
    return ray
