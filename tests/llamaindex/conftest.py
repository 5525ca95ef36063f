"""Integration tests: real provider clients against loopback servers."""

from tests.loopback.fixtures import (  # noqa: F401
    _loopback_shared_servers,
    loopback_mistral_server,
    loopback_openai_server,
    shared_mistral_server,
    shared_openai_server,
)
from tests.loopback.media import offline_standard_suite_media  # noqa: F401
