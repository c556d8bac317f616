"""Key vault: envelope-encrypted wallet keys and the narrow signer over them."""

from teller.vault.envelope import SealedKey
from teller.vault.kek import KekProvider, KeyUnwrapError, LocalKekProvider
from teller.vault.signer import WalletSigner
from teller.vault.vault import NewWallet, Vault

__all__ = [
    "KekProvider",
    "KeyUnwrapError",
    "LocalKekProvider",
    "NewWallet",
    "SealedKey",
    "Vault",
    "WalletSigner",
]
