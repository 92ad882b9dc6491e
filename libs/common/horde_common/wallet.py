"""The validator's own hotkey, loaded once at start-up from `HOTKEY_SEED` or a btcli wallet folder.

Kept apart from `horde_common.crypto` because reading a wallet file needs `bittensor.wallet`, a
library with network dependencies: the sans-I/O protocol imports `crypto` for signing and must not
reach it, even indirectly (docs/CONTRACTS.md, import contracts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from horde_common.crypto import keypair_from_seed

if TYPE_CHECKING:
    from bittensor_core import Keypair

__all__ = ["load_hotkey"]


class _WalletSettings(Protocol):
    """The part of `horde_common.config.Settings` that `load_hotkey` reads."""

    BITTENSOR_WALLET_NAME: str
    BITTENSOR_WALLET_HOTKEY_NAME: str
    BITTENSOR_WALLET_DIRECTORY: str

    @property
    def HOTKEY_SEED(self) -> Any: ...


def load_hotkey(settings: _WalletSettings) -> Keypair:
    """The validator's hotkey: `HOTKEY_SEED` when set (localnet/dev), else the btcli wallet hotkey file.

    Raises `ConfigError` with one line naming the missing or unreadable file, because a service that
    cannot sign must refuse to start rather than fail on its first batch.
    """
    from horde_common.config import ConfigError

    raw_seed = settings.HOTKEY_SEED
    if raw_seed is not None:
        seed = raw_seed.get_secret_value() if hasattr(raw_seed, "get_secret_value") else str(raw_seed)
        try:
            return keypair_from_seed(seed)
        except ValueError as exc:
            raise ConfigError(f"HOTKEY_SEED: {exc}") from None

    directory = Path(settings.BITTENSOR_WALLET_DIRECTORY).expanduser()
    name, hotkey = settings.BITTENSOR_WALLET_NAME, settings.BITTENSOR_WALLET_HOTKEY_NAME
    path = directory / name / "hotkeys" / hotkey
    if not path.is_file():
        raise ConfigError(
            f"hotkey file {path} not found (set BITTENSOR_WALLET_DIRECTORY, BITTENSOR_WALLET_NAME, "
            "BITTENSOR_WALLET_HOTKEY_NAME, or HOTKEY_SEED)"
        )

    from bittensor.wallet import Wallet

    wallet = Wallet(name=name, hotkey=hotkey, path=str(directory))
    hotkey_file = wallet.hotkey_file
    try:
        if hotkey_file.is_encrypted():
            # Never prompt: services run unattended.
            raise ConfigError(f"hotkey file {path} is encrypted; the validator needs an unencrypted hotkey")
        return hotkey_file.get_keypair()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"hotkey file {path} could not be loaded: {exc}") from None
