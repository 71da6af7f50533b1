"""Output directories of trained models: checked before training, replaced whole after it.

A training run can take hours, so a bad `--out` (a file, a folder of someone else's files, a place that cannot be
written) must fail before it starts, not when the model is saved. The model is written into a staging folder
beside the target and swapped in at the end: an interrupted save leaves the previous model whole, and a retrained
model never sits next to the files of the one it replaces (a stale LoRA adapter, an evaluation of the old model).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from collect.errors import UserError


def check_output_dir(path: Path, marker: str, kind: str, inputs: dict[str, Any] | None = None) -> None:
    """UserError unless `path` is new, empty, or a previous output of the same command (it holds `marker`, a JSON
    file whose "kind" is `kind`), and can be written; and unless it holds none of the run's `inputs` (how errors
    name each: the file, folder or other value given), which replacing it whole would delete."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output_dir (--out) {path}: is a file; name a folder")
    for label, given in (inputs or {}).items():
        if path.is_dir() and _lies_in(given, path):
            raise UserError(f"output_dir (--out) {path}: holds {label} {given}, which the new output would delete "
                            "as it replaces the folder whole; move it out, or name another folder")
    if (path / marker).is_file():
        # A reward model's folder named as an aligned policy's --out (both write prefloop.json) was replaced whole.
        try:
            found = json.loads((path / marker).read_text()).get("kind")
        except (ValueError, AttributeError, OSError):
            found = None
        if found != kind:
            raise UserError(f"output_dir (--out) {path}: holds a {found or 'folder of another kind'} ({marker} says "
                            f"so), not an earlier output of this command, which alone is replaced; name another "
                            "folder")
    if Path.cwd().is_relative_to(Path(path).resolve()):  # "." trained for minutes, then could not be moved aside
        raise UserError(f"output_dir (--out) {path}: holds the current folder, and the output replaces its folder "
                        "whole; name a folder inside it (./rm)")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise UserError(f"output_dir (--out) {path}: holds other files (no {marker}); name a new or empty folder, or an "
                        "earlier output of this command, which is replaced")
    check_can_create(path, "output_dir (--out)")


def _lies_in(given: Any, folder: Path) -> bool:
    """Whether `given` is a file or folder at or inside `folder` (False for what is not a path: a Dataset, a chat
    template written out, a Hub id)."""
    try:
        return isinstance(given, (str, Path)) and Path(given).exists() and \
            Path(given).resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):  # a name too long to be a path, or holding a NUL
        return False


def check_can_create(path: Path, label: str) -> None:
    """UserError, naming `label` and `path`, unless the nearest folder that exists at or above `path` is a folder
    this process can write in: what writing `path` (creating the folders up to it) needs."""
    if Path(path).name == "..":  # rm/new/.. with no rm/new passed every check, then failed to save after training
        raise UserError(f"{label} {path}: ends in '..'; name the folder itself")
    existing = Path(path)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{label} {path}: {existing} is a file")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as e:
        raise UserError(f"{label} {path}: cannot write in {existing} ({e.strerror or e})") from None


@contextmanager
def replacing_dir(path: Path) -> Iterator[Path]:
    """A staging folder to write the new output into; on leaving the block it replaces `path` whole (on an
    error it is removed and `path` is left as it was). Files get the permissions the umask gives, not the
    owner-only ones of a temporary folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        _permissions_from_umask(staging)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
        try:
            os.replace(staging, path)
        except BaseException:
            if old is not None:  # put the previous output back where it was
                os.replace(old / path.name, path)
                old.rmdir()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _permissions_from_umask(root: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            Path(folder, name).chmod(0o777 & ~umask)
        for name in files:
            Path(folder, name).chmod(0o666 & ~umask)


def write_whole(path: Path, write: Callable[[str], Any]) -> None:
    """Call `write(name)` to write a file beside `path`, then rename it over `path`: an interrupted or failed
    write leaves any earlier file at `path` whole. A symbolic link is written through, as a plain write would,
    and an earlier file's permissions are kept (an export of rater data made private stays private)."""
    target = path.resolve() if path.is_symlink() else path
    partial = target.with_name(f".{target.name}.partial")
    try:
        write(str(partial))
        if target.exists():
            shutil.copymode(target, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def file_path(text: str, label: str) -> Path:
    """A file to write, as given: one ending in a slash names a folder, which Path would drop silently (`--out
    cmp/` wrote a file called cmp)."""
    if text.endswith(("/", os.sep)):
        raise UserError(f"{label} {text}: ends in '/', a folder; name a file")
    return Path(text)


def check_can_write_file(path: Path, label: str) -> None:
    """UserError unless `path` can be written as a file: not a folder, and an existing file (an earlier report,
    replaced) or a place `check_can_create` allows."""
    if path.is_dir():
        raise UserError(f"{label} {path}: is a folder; name a file")
    if not path.is_file():
        check_can_create(path, label)
