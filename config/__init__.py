"""quicpair's settings: built-in defaults, a user file and overrides, validated once.

See :mod:`quicpair.config.settings` and ``config/defaults.toml`` (every value with its reason).

May import: quicpair.protocol
"""

from quicpair.config.settings import (
    DiscoverySettings,
    LinkSettings,
    LogSettings,
    NodeSettings,
    PairingSettings,
    Settings,
    TestingSettings,
    load_settings,
)

__all__ = [
    "DiscoverySettings",
    "LinkSettings",
    "LogSettings",
    "NodeSettings",
    "PairingSettings",
    "Settings",
    "TestingSettings",
    "load_settings",
]
