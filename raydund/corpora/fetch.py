"""Find a corpus file: the local mirror first, then the download cache, then its public URL.

Downloads land in ``$RAYDUND_HOME/downloads/<path>``; the file is renamed into place only
after its MD5 matches the catalog, so a failed or corrupt download leaves nothing behind.
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


def md5sum(path: Path) -> str:
    """Hex MD5 of a file."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate(source: SplitSource, settings: Settings) -> Path:
    """Path of a split's file on this machine, downloading and verifying it if needed."""
    if settings.data_mirror and (settings.data_mirror / source.path).is_file():
        return settings.data_mirror / source.path
    cached = settings.home / "downloads" / source.path
    if cached.is_file():
        return cached
    if not source.url:
        raise UserError(f"{source.path} is not in the data mirror and the catalog gives no URL")
    return download(source, cached)


def download(source: SplitSource, target: Path) -> Path:
    """Fetch ``source.url`` to ``target`` (gunzip if needed), verifying the MD5."""
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", source.url)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(source.url, timeout=60) as resp:
                    stream = gzip.GzipFile(fileobj=resp) if source.gz else resp
                    shutil.copyfileobj(stream, out)
            except (urllib.error.URLError, OSError) as exc:
                raise UserError(f"cannot download {source.url} ({exc}); set RAYDUND_DATA_MIRROR to a folder "
                                f"holding {source.path}") from None
        if source.md5 and md5sum(Path(tmp)) != source.md5:
            raise UserError(f"checksum mismatch for {source.url}: expected md5 {source.md5}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
