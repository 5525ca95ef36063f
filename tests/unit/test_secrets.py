"""Key-like strings never leave in error texts, metadata or artifacts."""

from __future__ import annotations

from bestroute_lc.sampling import describe_error
from bestroute_lc.secrets import scrub_mapping, scrub_secrets

KEY = "sk-proj-AbCdEf0123456789AbCdEf0123456789xyz"


def test_provider_keys_and_auth_values_are_scrubbed() -> None:
    text = (f"Error code: 401 - Incorrect API key provided: {KEY}. Authorization: Bearer {KEY}; "
            f'{{"api_key": "{KEY}"}} token=abcd1234efgh mistral 9f8e7d6c5b4a39281706f5e4d3c2b1a0ZZ')
    clean = scrub_secrets(text)
    assert KEY not in clean and "abcd1234efgh" not in clean and "9f8e7d6c5b4a39281706f5e4d3c2b1a0ZZ" not in clean
    assert "Error code: 401" in clean and "Incorrect API key provided" in clean


def test_ordinary_text_is_left_alone() -> None:
    text = "Connection refused while calling gpt-4o-mini at 127.0.0.1:8080 (attempt 2 of 3)"
    assert scrub_secrets(text) == text


def test_error_descriptions_are_scrubbed() -> None:
    class AuthenticationError(Exception):
        pass

    described = describe_error(AuthenticationError(f"Incorrect API key provided: {KEY}"))
    assert described.startswith("AuthenticationError: Incorrect API key provided") and KEY not in described


def test_config_mappings_mask_secret_named_keys() -> None:
    spec = {"kind": "llm_judge", "judge": {"api_key": KEY, "model": "gpt-4o"}, "headers": [f"Bearer {KEY}"]}
    clean = scrub_mapping(spec)
    assert clean["judge"] == {"api_key": "***", "model": "gpt-4o"} and KEY not in str(clean)
