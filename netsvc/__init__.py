"""netsvc: event-driven network services on Twisted.

Each service is a library first (protocols, factories and builder functions that take a
``reactor``) and a twistd plugin second (``twistd -n netsvc``, ``twistd -n netsvc-echo``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
