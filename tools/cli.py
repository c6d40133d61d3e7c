"""tools/cli.py — the command-line plumbing squeeze10.py, eval.py and model.py share; nothing of the method.

One-line errors and exit code 2 for bad flags (`Parser`), SIGINT/SIGTERM as an exception so that temporary
files are removed (`interruptible`, exit 130/143), output files written atomically (`write_atomic`) after the
output path was checked before any work (`check_writable`), and what killed runs left behind cleaned up
(`remove_stale_partials`). Imports nothing of the project.
"""
import argparse
import contextlib
import glob
import os
import resource
import shutil
import signal
import stat
import sys
import threading
from pathlib import Path

import torch


def first_line(e: BaseException) -> str:
    """An exception's message in one line (torch's and safetensors' messages run over several)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr ("error: ..."), exit code 2, without the usage text."""
    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised wherever the program is, so that `finally` blocks still run (a temporary file
    is removed) and main() prints one line and exits with 128 + the signal's number: 130, 143. A
    BaseException, so that no `except Exception` on the way turns it into a different error."""
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def interruptible():
    """While the block runs, SIGINT and SIGTERM raise Interrupted (main thread only: elsewhere Python cannot
    install handlers, and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run_main(main, argv=None, note: str = "") -> int:
    """main(argv) under `interruptible`: a signal ends it with one line and exit code 128 + its number."""
    try:
        with interruptible():
            return main(argv)
    except Interrupted as e:
        print(f"error: interrupted by {e}{note}", file=sys.stderr)
        return 128 + e.signum


def check_device(name: str) -> str | None:
    """None if torch can put a tensor on device `name`; otherwise why not, in one line."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        return f"--device {name}: not a device torch knows ({first_line(e)})"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name}: this torch build sees no CUDA device"
    try:
        torch.empty(1, device=device)
    except Exception as e:  # each backend raises its own type: RuntimeError, AssertionError, ...
        return f"--device {name}: not usable here ({first_line(e)})"
    return None


def check_seed(seed: int) -> str | None:
    if not 0 <= seed < 2**63:
        return f"--seed {seed}: must be in 0 .. 2^63 - 1"
    return None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -----------------------------------------------------------------------------
# Output files: checked before the work, written atomically, nothing partial left behind

class WriteError(OSError):
    """Writing the output failed (full disk, I/O error, ...): a one-line message naming the path."""


class OutputError(ValueError):
    """--out cannot be written (a directory, a device, one of the inputs, ...): a one-line message."""


def partial_name(path: Path, pid: int | None = None) -> Path:
    """Where `path` is written before the rename: the directory `.NAME.PID.partial` beside it, so that what a
    killed run (SIGKILL, power loss) left says which output it was for and which process wrote it. A directory,
    so that a writer's own temporary files (safetensors writes `.tmpXXXXXX` first) land inside it too."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.partial")


def _remove(p: Path):
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_stale_partials(path: Path) -> list[Path]:
    """Delete what killed runs left while writing `path` (their process is gone); returns what it removed."""
    removed = []
    for f in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        pid = f.name[len(path.name) + 2:-len(".partial")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)                   # no error: that process still runs (and may be writing)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:                    # another user's live process
            continue
        try:
            _remove(f)
            removed.append(f)
        except OSError:
            pass
    return removed


def write_atomic(path: Path, write):
    """`write(tmp)` writes the output to a path inside `partial_name(path)`; that file is flushed to disk and
    renamed onto `path`. An error, SIGINT or SIGTERM (`interruptible` makes them exceptions) removes the
    partial directory and leaves an older file at `path` as it was. Any failure is a WriteError naming
    `path` (safetensors raises its own SafetensorError, not an OSError, when the disk is full)."""
    partial = partial_name(path)
    tmp = partial / path.name
    try:
        try:
            partial.mkdir()
            write(tmp)
            with open(tmp, "rb+") as f:            # a full disk or an I/O error can surface only here
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)          # safetensors creates files 0600; give the usual permissions
            os.replace(tmp, path)
        except Exception as e:
            if not isinstance(e, OSError) and type(e).__name__ != "SafetensorError":
                raise
            reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
            raise WriteError(f"{path}: cannot write: {reason}") from None
    finally:
        _remove(partial)


def write_text_atomic(path: Path, text: str):
    """A small text file (a result, a table) through `write_atomic`; creates its directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: tmp.write_text(text))


FILE_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
              (stat.S_ISSOCK, "a socket"))


def input_files(*paths) -> list[Path]:
    """Every file a run reads (a directory: the files in it), which --out must not be."""
    files = []
    for p in paths:
        if p is not None and Path(p).is_dir():
            files += [f for f in Path(p).iterdir() if f.is_file()]
        elif p is not None and Path(p).exists():
            files.append(Path(p))
    return files


def check_writable(path: Path, inputs=()) -> Path:
    """Fail before hours of work, not after (OutputError): the output must be a regular file or a new name in
    a directory that accepts files, and not one of the `inputs` (the same inode, or the same path once
    resolved). A symlink is followed: its target is written. Removes what killed runs left there. Returns the
    path to write."""
    target = path.resolve() if path.is_symlink() else path
    via = f" (through the symlink {path})" if target != path else ""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"{path}: is a directory; --out needs a file name")
    for test, kind in FILE_KINDS:
        if st is not None and test(st.st_mode):
            raise OutputError(f"{target}: is {kind}{via}; --out must be a regular file or a new file name")
    for inp in inputs:
        same = os.path.realpath(inp) == os.path.realpath(target)
        if st is not None and not same:
            try:
                same = os.path.samestat(st, os.stat(inp))
            except OSError:
                pass
        if same:
            raise OutputError(f"{path}: is the input {inp}; writing there would destroy it")
    parent = target.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write: directory {parent} does not exist")
    remove_stale_partials(target)
    probe = partial_name(target)
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
    return target
