"""ExifTool (Phil Harvey's, the `exiftool` program) as one long-lived process: `-stay_open True -@ -`, one
command at a time, arguments passed as C strings (`#[CSTR]`), so any file name or value goes through whole.

Why exiftool rather than exiv2 (pyexiv2): when it writes XMP or IPTC it copies every other metadata block as it
is (measured: exiv2 re-encodes a PNG's or WebP's EXIF block, byte order included; exiftool leaves it byte for
byte), it writes the XMP packet it is given byte for byte, and it is what photo managers' users trust.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading

from .errors import UsageError

READY = b"{ready}"
INSTALL = ("`clip tag --embed` needs ExifTool: install it (Debian/Ubuntu: apt install libimage-exiftool-perl; "
           "macOS: brew install exiftool), or leave out --embed to write sidecars")


class ExifToolError(Exception):
    """ExifTool could not do what it was asked (its own message)."""


def _cstr(text: str) -> bytes:
    data = os.fsencode(text)
    for raw, escaped in ((b"\\", b"\\\\"), (b"\n", b"\\n"), (b"\r", b"\\r"), (b"\t", b"\\t")):
        data = data.replace(raw, escaped)
    return b"#[CSTR]" + data + b"\n"


class ExifTool:
    def __init__(self) -> None:
        program = shutil.which("exiftool")
        if program is None:
            raise UsageError(INSTALL)
        fd, path = tempfile.mkstemp(prefix="clip-exiftool-", suffix=".err")
        os.close(fd)
        try:  # its standard error: a file written (appended) by exiftool, read here, named nowhere
            self._err_read = open(path, "rb")
            with open(path, "ab") as err:
                self._process = subprocess.Popen([*_die_with_parent(), program, "-stay_open", "True", "-@", "-"],
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        finally:
            os.unlink(path)
        self._lock = threading.Lock()

    def run(self, *args: str) -> tuple[bytes, str]:
        """One command: its standard output (up to the ready line) and what it wrote on standard error."""
        with self._lock:
            stdin, stdout = self._process.stdin, self._process.stdout
            stdin.write(b"".join(map(_cstr, args)) + b"-execute\n")
            stdin.flush()
            lines = []
            while True:
                line = stdout.readline()
                if not line:
                    raise ExifToolError("exiftool stopped: " + self._err_read.read().decode("utf-8", "replace"))
                if line.rstrip(b"\r\n") == READY:
                    break
                lines.append(line)
            return b"".join(lines), self._err_read.read().decode("utf-8", "replace").strip()

    def close(self) -> None:
        try:
            self._process.stdin.write(b"-stay_open\nFalse\n")
            self._process.stdin.close()
            self._process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self._process.kill()
        self._err_read.close()


def _die_with_parent() -> list[str]:
    """A prefix that ends exiftool when clip ends, even by SIGKILL (exiftool with -stay_open does not stop at the
    end of its input): util-linux's setpriv --pdeathsig, where there is one (Linux); elsewhere none, and an
    orphaned exiftool waits for input."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


_running: ExifTool | None = None


def exiftool() -> ExifTool:
    """The process of this run, started on first use and ended at exit."""
    global _running
    if _running is None:
        _running = ExifTool()
        atexit.register(_running.close)
    return _running
