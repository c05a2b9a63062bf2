"""Layer 4: what every HTTP feature of the service shares.

* :mod:`~eventmill.web.errors` - the service's errors and the one JSON error body;
* :mod:`~eventmill.web.body` - reading a request body under a limit, parsing JSON;
* :mod:`~eventmill.web.auth` - API keys (and, for end users, JWTs);
* :mod:`~eventmill.web.seam` - the shared resources and the :class:`Feature` seam.
"""
