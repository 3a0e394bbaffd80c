"""A store whose packs live in an object store: what creating, opening and restoring one takes.

The settings file's ``data`` says where pack data lives (settings.py); this
module turns it into a :class:`S3Backend`, checks a new location at mkfs
(reachable, credentials accepted, no store there yet), refreshes a read-only
replica's index from the bucket before it is opened, and restores a store
directory from the bucket alone.  _store.py calls it only when ``data`` is
set, so a store on the local disk never imports boto3.
"""

from __future__ import annotations

import os

from ..errors import ReadOnlyError
from ..settings import StoreSettings
from ._bucket import Bucket, DataLocation


def location_of(data: dict) -> DataLocation:
    return DataLocation.parse(data["url"], data.get("endpoint"), data.get("region"))


def data_settings(url: str, endpoint: str | None = None, region: str | None = None, replica: bool = False) -> dict:
    """The ``data`` field of a settings file for ``url`` (validated: SettingsError if it is not one)."""
    location = DataLocation.parse(url, endpoint, region)
    data: dict = {"url": location.url}
    if location.endpoint:
        data["endpoint"] = location.endpoint
    if location.region:
        data["region"] = location.region
    if replica:
        data["replica"] = True
    return data


def check_new_location(data: dict) -> None:
    """mkfs: the bucket is reachable with the credentials at hand and holds no store under the prefix."""
    from ._bucket_meta import check_empty_location  # noqa: PLC0415

    check_empty_location(Bucket(location_of(data), attempts=2, connect_timeout=3, read_timeout=10))


def before_open(path: str, settings: StoreSettings, readonly: bool) -> None:
    """A replica is opened read-only, on the latest index generation in the bucket."""
    if not settings.data.get("replica"):
        return
    if not readonly:
        raise ReadOnlyError(f"{path}: a read-only replica of {settings.data['url']} (made by 'chunkfs restore "
                            "--replica'): open or mount it read-only (-o ro)")
    from ._bucket_meta import refresh_replica  # noqa: PLC0415

    refresh_replica(path, Bucket(location_of(settings.data)))


def make_backend(settings: StoreSettings, packs_dir: str, readonly: bool, options: dict | None = None):
    from ._s3_backend import ObjectStoreOptions, S3Backend  # noqa: PLC0415

    return S3Backend(packs_dir, location_of(settings.data), readonly=readonly,
                     options=ObjectStoreOptions(**(options or {})))


def restore(path: str, data: dict) -> tuple[dict, str]:
    """Make a store directory at ``path`` from the bucket ``data`` names; (settings dict, generation)."""
    from ._bucket_meta import restore_store  # noqa: PLC0415

    return restore_store(os.fspath(path), Bucket(location_of(data)), data)
