"""Find a corpus file: the local data mirror first, then the download cache, then its URL.

Downloads land in ``$RAYDUND_HOME/downloads/<path>``. A download is written to a temporary
file in the same folder and renamed into place only after its MD5 matches the catalog,
so a failed or corrupt download leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from raydund.config import Settings
from raydund.corpora.spec import SplitSource
from raydund.errors import UserError

log = logging.getLogger(__name__)

#: Seconds to wait for a server before giving up.
TIMEOUT = 60


def md5sum(path: str | Path) -> str:
    """Hex MD5 of a file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
    """
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(source: SplitSource, settings: Settings) -> Path:
    """Path of a split's file on this machine, downloading and verifying it if needed.

    Parameters
    ----------
    source : SplitSource
        The split's relative path, URL, MD5 and compression.
    settings : Settings
        ``data_mirror`` (read first) and ``home`` (its ``downloads/`` cache).

    Returns
    -------
    Path
        ``data_mirror/path`` if it exists, else ``home/downloads/path`` (downloaded if
        it was not there yet).

    Raises
    ------
    UserError
        No URL to download from, a failed download, or an MD5 mismatch.
    """
    if settings.data_mirror is not None:
        mirrored = settings.data_mirror / source.path
        if mirrored.is_file():
            log.info("reading %s from the data mirror", mirrored)
            return mirrored
    cached = settings.home / "downloads" / source.path
    if cached.is_file():
        log.info("reading %s from the download cache", cached)
        return cached
    if not source.url:
        raise UserError(f"{source.path} is not in the data mirror and the catalog gives no URL for it; "
                        "set RAYDUND_DATA_MIRROR to a folder holding it")
    return download(source, cached)


def download(source: SplitSource, target: Path) -> Path:
    """Fetch ``source.url`` to ``target``, gunzipping if ``source.gz``, verifying the MD5.

    Parameters
    ----------
    source : SplitSource
    target : Path
        Where the (decompressed) file ends up.

    Returns
    -------
    Path
        ``target``.

    Raises
    ------
    UserError
        The URL could not be read (the message names it and points at
        ``RAYDUND_DATA_MIRROR``) or the MD5 differs; no file is left behind either way.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", source.url, target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_url(source, out)
        _verify(source, Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("downloaded %s", target)
    return target


def _copy_url(source: SplitSource, out) -> None:
    """Stream the URL's content (decompressed if gzip) into the open file ``out``."""
    try:
        with urllib.request.urlopen(source.url, timeout=TIMEOUT) as resp:
            stream = gzip.GzipFile(fileobj=resp) if source.gz else resp
            shutil.copyfileobj(stream, out)
    except (urllib.error.URLError, OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot download {source.url} ({exc}); offline? set RAYDUND_DATA_MIRROR to a "
                        f"folder holding {source.path}") from None


def _verify(source: SplitSource, path: Path) -> None:
    """Compare the file's MD5 with the catalog's (when it gives one)."""
    if not source.md5:
        log.warning("no md5 in the catalog for %s; not verified", source.url)
        return
    got = md5sum(path)
    if got != source.md5.lower():
        raise UserError(f"checksum mismatch for {source.url}: expected md5 {source.md5}, got {got}")
