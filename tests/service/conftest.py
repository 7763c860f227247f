"""The service's fixtures, defined in ``service_fixtures.py`` (which the offline tests share):
the served checkpoints with calibrated cards, an in-process ``client``, a real ``server_url``
(and ``keyed_server_url``, which wants an API key), and ``test_images``."""

from service_fixtures import (  # noqa: F401
    client,
    keyed_server_url,
    served_checkpoints,
    server_url,
    test_images,
)
