"""Local folders and object-store URIs (s3://, gs://, file://) through pyarrow's file systems: the one place
the project turns a path into a file system, joins paths, and writes a file atomically.

A root is a local path or a URI whose ``?query`` options (an S3 ``endpoint_override``, say) configure the
file system: names are joined before the query, never after it.
"""

from __future__ import annotations

import posixpath
import uuid

import pyarrow.fs as pafs

__all__ = ["resolve", "join", "parent", "exists", "read_bytes", "write_bytes", "delete", "check_writable"]


def resolve(root: str) -> tuple[pafs.FileSystem, str]:
    """A file system and base path for a local folder (made absolute) or any URI pyarrow understands."""
    if "://" in root and not root.startswith("file://"):
        return pafs.FileSystem.from_uri(root)
    path = root.removeprefix("file://")
    return pafs.LocalFileSystem(), posixpath.abspath(path)


def join(root: str, *parts: str) -> str:
    """``root`` joined with ``parts``: ``join("s3://b/x?o=1", "n")`` is ``"s3://b/x/n?o=1"``."""
    path, sep, query = root.partition("?") if "://" in root else (root, "", "")
    return posixpath.join(path.rstrip("/"), *parts) + sep + query


def parent(path: str) -> str:
    """The folder holding ``path`` (local or URI, query options kept)."""
    base, sep, query = path.partition("?") if "://" in path else (path, "", "")
    return posixpath.dirname(base.rstrip("/")) + sep + query


def exists(root: str, rel: str = "") -> bool:
    fs, base = resolve(root)
    return fs.get_file_info(posixpath.join(base, rel) if rel else base).type != pafs.FileType.NotFound


def read_bytes(root: str, rel: str) -> bytes | None:
    """The file ``rel`` under ``root``, or None when it does not exist (other errors, such as a denied
    read or an unreachable bucket, propagate: they must not pass for a missing file)."""
    fs, base = resolve(root)
    try:
        with fs.open_input_stream(posixpath.join(base, rel)) as f:
            return f.read()
    except FileNotFoundError:
        return None


def write_bytes(root: str, rel: str, data: bytes) -> None:
    """Write ``data`` to ``rel`` under ``root`` atomically, creating folders: on a local or POSIX shared file
    system through a hidden temporary name in the same folder and rename(2) (readers never see half a
    file; results readers skip names starting with "."); an object-store PUT is atomic by itself."""
    fs, base = resolve(root)
    path = posixpath.join(base, rel)
    folder = posixpath.dirname(path)
    fs.create_dir(folder, recursive=True)
    local = isinstance(fs, pafs.LocalFileSystem)
    target = posixpath.join(folder, f".tmp-{posixpath.basename(path)}-{uuid.uuid4().hex}") if local else path
    try:
        with fs.open_output_stream(target) as f:
            f.write(data)
        if local:
            fs.move(target, path)
    except BaseException:
        if local:
            try:
                fs.delete_file(target)
            except (FileNotFoundError, OSError):
                pass
        raise


def delete(root: str, rel: str) -> None:
    fs, base = resolve(root)
    fs.delete_file(posixpath.join(base, rel))


def check_writable(root: str) -> None:
    """Raise OSError (NotADirectoryError for a file in the way) unless files can be written under ``root``: a
    local folder (made if missing) or a URI. Found out by writing and deleting a probe; leaves nothing behind,
    the folders it had to make included."""
    fs, base = resolve(root)
    if not isinstance(fs, pafs.LocalFileSystem):
        name = f".probe-{uuid.uuid4().hex}"
        write_bytes(root, name, b"")
        delete(root, name)
        return
    import os
    import tempfile

    made, path = [], base
    while not os.path.exists(path):  # the folders this check makes, deepest first
        made.append(path)
        path = posixpath.dirname(path)
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path} is a file, not a folder")
    try:
        os.makedirs(base, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=base, prefix=".probe-")
        os.close(fd)
        os.remove(probe)
    finally:
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:
                pass
