"""Where a store's parts come from: its new directory at mkfs, and the backend that holds its packs.

Why a module of its own: both decisions are taken once, before the store's
index or packs exist, and both have to fail with one readable line (a wrong
path, a directory in use, an unreachable bucket) before anything is made.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from ._backend import PackBackend
from ._local_backend import LocalBackend
from ..errors import NotAStoreError, StoreExistsError
from ..settings import SETTINGS_NAME, StoreSettings, format_compression, parse_compression

# What holds a store's packs: None for the store's own (local files, or the object store its settings name),
# a PackBackend, or a factory called as factory(packs_dir, readonly).
BackendChoice = PackBackend | Callable[[str, bool], PackBackend] | None
SUBDIRECTORIES = ("meta", "packs", "staging")


def make_backend(choice: BackendChoice, packs_dir: str, readonly: bool, settings: StoreSettings,
                 data_options: dict | None = None) -> PackBackend:
    """The pack backend ``choice`` names; by default the one the settings' data location names."""
    if choice is None and settings.data:
        from . import _object_store  # noqa: PLC0415 (only a store in an object store needs boto3)

        return _object_store.make_backend(settings, packs_dir, readonly, data_options)
    if choice is None:
        return LocalBackend(packs_dir, readonly=readonly)
    if isinstance(choice, PackBackend):
        return choice
    return choice(packs_dir, readonly)


def new_settings(settings: StoreSettings, compression: str | None, data: dict | None,
                 backend: BackendChoice) -> StoreSettings:
    """The settings of a new store; an object store named by ``data`` is checked first (reachable, no store yet)."""
    if compression is not None:
        settings = dataclasses.replace(settings, compression=format_compression(*parse_compression(compression)))
    if data:
        settings = dataclasses.replace(settings, data=data)
        settings.validate()
        if backend is None:
            from . import _object_store  # noqa: PLC0415

            _object_store.check_new_location(data)  # before anything is made: one line if it is wrong
    return settings


def make_directory(path: str) -> None:
    """Make the store's directory (absent, or empty) and its subdirectories, private to the owner."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise StoreExistsError(f"{path}: exists and is not a directory")
        if os.listdir(path):
            what = "a chunkfs store" if os.path.exists(os.path.join(path, SETTINGS_NAME)) else "not empty"
            raise StoreExistsError(f"{path}: already exists and is {what}")
    else:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise NotAStoreError(f"{path}: parent directory {parent} does not exist")
        os.mkdir(path, 0o700)
    os.chmod(path, 0o700)  # the store holds every user's data
    for sub in SUBDIRECTORIES:
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
