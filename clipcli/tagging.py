"""`clip tag`: write the labels of a run where photo managers read them, merged, journaled, reversible.

Where: an XMP sidecar beside each image (`IMG.JPG.xmp` as darktable names it, or `IMG.xmp` as digiKam and
Lightroom do; an existing sidecar of either name is the one updated), or, with `embed`, the XMP packet inside a
JPEG/PNG/WebP/TIFF file (and IPTC keywords for JPEG), through ExifTool (see `exiftool` for why).  Other formats
(RAW files among them) only ever get sidecars.

What: `dc:subject` (the plain keywords every manager reads), `lr:hierarchicalSubject` as `ROOT|label`
(Lightroom, Immich), `digiKam:TagsList` as `ROOT/label` (digiKam); ROOT is "clip" unless told otherwise.  What
clipcli added to each of them is recorded in the same packet, in its own namespace (`clipcli:subject`,
`clipcli:hierarchicalSubject`, `clipcli:tagsList`, `clipcli:keywords`): a rerun removes only those (when the run
no longer chooses them) and adds what is missing, so the user's own keywords, even one equal to a label, are
never removed, reruns are idempotent (an unchanged file is not written at all) and a relabel replaces only our
tags.

How a sidecar is edited: it is checked with defusedxml (no DOCTYPE, so no entity is ever declared or expanded;
well-formed; at most MAX_SIDECAR_BYTES), then located with expat's byte offsets and spliced: our `rdf:li`
items are cut out or appended and missing properties inserted, so every byte clipcli did not write stays as it
was (comments, other namespaces, darktable's history, the order).  The result is parsed again and must hold
exactly the planned keywords before it is written.  An embedded packet is spliced the same way and handed to
ExifTool whole, which writes it and the IPTC keywords into a private copy of the image, copying the image data
and every other metadata block as they are; the copy's bytes then replace the image atomically.

Journal and undo (the journal of `clip sort`, `sorting.Journal`): one JSON line per written file, begun and
fsynced before the write with the sha256 of the file before (`before`, null for a sidecar clipcli creates) and
of the bytes about to be written (`after`), closed after it with `after_id`.  The file it replaces is first
kept as a backup (a hard link, or a copy across filesystems) in the folder `MANIFEST.backup/`; every write goes
to a hidden temporary file `.clip-tag-<id>.tmp` beside the target, fsynced, then renamed over it (a new
sidecar is linked into place, so a file that appeared meanwhile is never replaced).  Undo, newest first:
a file that still holds `after` gets its backup back (or, created by clipcli, is removed); one that holds
`before` was never changed; any other content was changed by someone since and is refused, naming the file.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from xml.sax.saxutils import escape

from .errors import ClipCliError, UsageError
from .fsutil import fsync_dir, reason
from .sorting import Journal, file_digest, identity, read_entries

MAX_SIDECAR_BYTES = 8 << 20  # darktable's sidecars with a long history are well under 1 MiB
ROOT = "clip"
NAMINGS = {"darktable": "IMG.JPG.xmp", "digikam": "IMG.xmp"}
EMBEDDABLE = {".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".jfif": "jpeg", ".png": "png", ".webp": "webp",
              ".tif": "tiff", ".tiff": "tiff"}
TEMP_PREFIX = ".clip-tag-"
DONE_KEY = ', "after_id"'

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
CLIPCLI_NS = "http://ns.clipcli.invalid/tag/1.0/"
NAMESPACES = {"dc": "http://purl.org/dc/elements/1.1/", "lr": "http://ns.adobe.com/lightroom/1.0/",
              "digiKam": "http://www.digikam.org/ns/1.0/", "clipcli": CLIPCLI_NS}


@dataclass(frozen=True)
class Prop:
    """One XMP array property: its namespace prefix (as we write it), local name and array kind."""

    prefix: str
    local: str
    kind: str = "Bag"

    @property
    def uri(self) -> str:
        return NAMESPACES[self.prefix]

    @property
    def name(self) -> str:
        return f"{self.prefix}:{self.local}"


# keyword form -> (the public property, the private record of what clipcli added to it)
FORMS = {
    "subject": (Prop("dc", "subject"), Prop("clipcli", "subject")),
    "hierarchical": (Prop("lr", "hierarchicalSubject"), Prop("clipcli", "hierarchicalSubject")),
    "tagslist": (Prop("digiKam", "TagsList", "Seq"), Prop("clipcli", "tagsList")),
}
KEYWORDS = Prop("clipcli", "keywords")  # the record of the IPTC keywords clipcli added (embedded JPEG)


class TagFileError(ClipCliError):
    """One file that cannot be tagged (a bad sidecar, a read-only file, a symlink): its record's error."""

    exit_code = 1


# --- choosing labels ----------------------------------------------------------------------------------------------
@dataclass
class TagRules:
    """Which labels an image gets, and how they are written."""

    root: str = ROOT
    top_k: int | None = None  # None: 1 under softmax, every label under sigmoid
    min_score: float | None = None  # None: 0 under softmax, 0.5 under sigmoid
    score: str = "softmax"
    other_label: str | None = None  # --other: images answered with it get no label
    naming: str = "darktable"
    embed: bool = False

    def check(self) -> None:
        if self.naming not in NAMINGS:
            raise UsageError(f"unknown --sidecar-name {self.naming!r}; use darktable ({NAMINGS['darktable']}) or "
                             f"digikam ({NAMINGS['digikam']})")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise UsageError("--min-score takes a number from 0 to 1")
        if self.top_k is not None and self.top_k < 0:
            raise UsageError("--top-k takes 0 (every label that passes --min-score) or more")
        root = self.root.strip()
        if not root or any(ch in root for ch in "|/") or any(ord(ch) < 32 for ch in root):
            raise UsageError(f"--root {self.root!r}: give one plain word (no '|' or '/'), e.g. clip")

    def check_tools(self) -> None:
        """The libraries and programs this run needs, before any slow work: defusedxml, and ExifTool to embed."""
        try:
            import defusedxml  # noqa: F401
        except ImportError:
            raise UsageError("clip tag needs defusedxml to read sidecars safely: pip install defusedxml") from None
        if self.embed and shutil.which("exiftool") is None:
            from .exiftool import INSTALL

            raise UsageError(INSTALL)

    def chosen(self, record: dict) -> list[dict]:
        """The predictions an image is tagged with: softmax, the best `top_k` with at least `min_score`;
        sigmoid, each label on its own at least `min_score` (0.5: the model's own yes/no); `other`: none."""
        predictions = record.get("predictions") or []
        if self.other_label is not None and predictions and predictions[0]["label"] == self.other_label:
            return []
        sigmoid = self.score == "sigmoid"
        top_k = (0 if sigmoid else 1) if self.top_k is None else self.top_k
        floor = (0.5 if sigmoid else 0.0) if self.min_score is None else self.min_score
        picked = [p for p in predictions if p["label"] != self.other_label and p["score"] >= floor]
        return picked[:top_k] if top_k > 0 else picked


def wanted(labels: Sequence[str], root: str, keywords: bool = False) -> dict[str, list[str]]:
    """Each keyword form's values for these labels."""
    forms = {"subject": list(labels), "hierarchical": [f"{root}|{label}" for label in labels],
             "tagslist": [f"{root}/{label}" for label in labels]}
    if keywords:
        forms["keywords"] = list(labels)
    return {key: list(dict.fromkeys(values)) for key, values in forms.items()}


@dataclass
class Change:
    """One keyword form's part of a file's change: values removed, values added, and the new record of ours."""

    remove: list[str]
    add: list[str]
    ours: list[str]
    had_ours: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.remove or self.add or self.ours != self.had_ours)


def merge(current: dict[str, list[str]], ours: dict[str, list[str]], want: dict[str, list[str]]) -> dict[str, Change]:
    """Pure: per form, remove what clipcli added before and no longer wants, add what is wanted and missing.
    Values that clipcli did not add are never removed."""
    changes = {}
    for key, values in want.items():
        now, mine = current.get(key, []), ours.get(key, [])
        remove = [v for v in dict.fromkeys(now) if v in mine and v not in values]
        add = [v for v in values if v not in now]
        kept = [v for v in dict.fromkeys(mine) if v in values and v in now]
        changes[key] = Change(remove, add, kept + add, mine)
    return changes


def label_of(value: str, key: str) -> str:
    """The label a written value stands for (ROOT|label, ROOT/label, label)."""
    sep = {"hierarchical": "|", "tagslist": "/"}.get(key)
    return value.split(sep, 1)[1] if sep and sep in value else value


# --- XMP text, spliced -------------------------------------------------------------------------------------------
@dataclass
class _Element:
    uri: str
    local: str
    start: int
    parent: int | None
    end: int = -1  # after its end tag
    inner_end: int = -1  # where its end tag starts (empty element: -1)
    text: str = ""
    children: list[int] = field(default_factory=list)
    scope: dict | None = None  # prefix -> uri in effect (rdf:Description only)


WS = b" \t\r\n"


def _tag_end(data: bytes, start: int) -> int:
    """The offset just after the tag that starts at `start` ('>' inside quoted attribute values skipped)."""
    quote = None
    for i in range(start, len(data)):
        c = data[i:i + 1]
        if quote:
            if c == quote:
                quote = None
        elif c in (b'"', b"'"):
            quote = c
        elif c == b">":
            return i + 1
    raise ValueError("unterminated tag")


def _indent(data: bytes, pos: int) -> bytes:
    """The whitespace before `pos` on its line (b"\\n  " style), or b"" when the element does not start a line."""
    k = pos
    while k > 0 and data[k - 1:k] in (b" ", b"\t"):
        k -= 1
    if k > 0 and data[k - 1:k] == b"\n":
        return b"\n" + data[k:pos]
    return b""


def _lead(data: bytes, pos: int) -> int:
    """Where the whitespace run before `pos` starts (cutting an element cuts its indentation too)."""
    while pos > 0 and data[pos - 1:pos] in (b" ", b"\t", b"\r", b"\n"):
        pos -= 1
    return pos


def check_xml(data: bytes, name: str) -> None:
    """Refuse, with one line naming the file, what is not plain well-formed UTF-8 XML: a DOCTYPE (entities are
    never declared, so never expanded), external references, malformed text, other encodings."""
    import defusedxml
    from defusedxml.ElementTree import ParseError, fromstring

    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or data[:4] in (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00"):
        raise TagFileError(f"{name}: is UTF-16/32 XMP; clip tag edits UTF-8 sidecars only, so it is left as it is")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise TagFileError(f"{name}: is not UTF-8 text, so not an XMP sidecar; left as it is") from None
    try:
        fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden:
        raise TagFileError(f"{name}: has a DOCTYPE (refused: XMP needs none, and its entities are never expanded); "
                           "left as it is") from None
    except (defusedxml.EntitiesForbidden, defusedxml.ExternalReferenceForbidden):
        raise TagFileError(f"{name}: declares entities or external references (refused, never expanded); "
                           "left as it is") from None
    except ParseError as exc:
        raise TagFileError(f"{name}: is not well-formed XML ({exc}); left as it is") from None


class XmpText:
    """An XMP packet's bytes with the offsets of its elements: read our arrays, splice changes in."""

    def __init__(self, data: bytes, name: str) -> None:
        check_xml(data, name)
        self.data, self.name = data, name
        self.elements = self._parse(data)

    @staticmethod
    def _parse(data: bytes) -> list[_Element]:
        import xml.parsers.expat as expat

        parser = expat.ParserCreate(namespace_separator=" ")
        elements: list[_Element] = []
        stack: list[int] = []
        scopes: list[dict] = [{"xml": "http://www.w3.org/XML/1998/namespace"}]
        pending: dict = {}

        def refuse(*_args):  # check_xml has refused these already; never expand anything, whatever happens
            raise ValueError("DOCTYPE or entity declaration")

        def ns_start(prefix, uri):
            pending[prefix] = uri

        def start(name, _attrs):
            uri, _, local = name.rpartition(" ")
            scope = {**scopes[-1], **pending} if pending else scopes[-1]
            pending.clear()
            scopes.append(scope)
            element = _Element(uri, local, parser.CurrentByteIndex, stack[-1] if stack else None)
            if uri == RDF and local == "Description":
                element.scope = dict(scope)
            if stack:
                elements[stack[-1]].children.append(len(elements))
            stack.append(len(elements))
            elements.append(element)

        def end(_name):
            element = elements[stack.pop()]
            scopes.pop()
            at = parser.CurrentByteIndex
            start_tag_end = _tag_end(data, element.start)
            if at == start_tag_end and data[at - 2:at] == b"/>":  # an empty-element tag: reported just after it
                element.end = at
            else:  # an end tag, reported where it starts
                element.inner_end, element.end = at, data.index(b">", at) + 1

        def text(chars):
            if stack:
                elements[stack[-1]].text += chars

        parser.StartDoctypeDeclHandler = refuse
        parser.EntityDeclHandler = refuse
        parser.StartNamespaceDeclHandler = ns_start
        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = text
        parser.Parse(data, True)
        return elements

    # reading
    def descriptions(self) -> list[int]:
        return [i for i, e in enumerate(self.elements) if e.uri == RDF and e.local == "Description"]

    def find(self, prop: Prop) -> int | None:
        """The property element (a child of an rdf:Description), the first one if the packet repeats it."""
        for d in self.descriptions():
            for c in self.elements[d].children:
                if self.elements[c].uri == prop.uri and self.elements[c].local == prop.local:
                    return c
        return None

    def container(self, index: int) -> int | None:
        for c in self.elements[index].children:
            if self.elements[c].uri == RDF and self.elements[c].local in ("Bag", "Seq", "Alt"):
                return c
        return None

    def items(self, index: int) -> list[int]:
        box = self.container(index)
        return [] if box is None else [c for c in self.elements[box].children
                                       if self.elements[c].uri == RDF and self.elements[c].local == "li"]

    def values(self, prop: Prop) -> list[str]:
        index = self.find(prop)
        if index is None:
            return []
        if self.container(index) is None:
            if self.elements[index].text.strip() or self.elements[index].children:
                raise TagFileError(f"{self.name}: {prop.name} is not a list as XMP requires; left as it is")
            return []
        return [self.elements[i].text for i in self.items(index)]

    # writing
    def _qname(self, scope: dict, uri: str, preferred: str) -> tuple[str, bytes]:
        """The name prefix to use for `uri` in `scope`, and a declaration to add when it is not bound there."""
        bound = [p for p, u in scope.items() if u == uri]
        if bound:
            prefix = bound[0]
            return (f"{prefix}:" if prefix else ""), b""
        return f"{preferred}:", f' xmlns:{preferred}="{uri}"'.encode()

    def edited(self, changes: dict[Prop, tuple[Sequence[str], Sequence[str]]]) -> bytes:
        """The packet with, per property, the items whose text is in `remove` cut out and `add` appended (a
        property left empty is removed; a missing one is created in the first rdf:Description)."""
        data, edits = self.data, []
        descriptions = self.descriptions()
        if not descriptions:
            raise TagFileError(f"{self.name}: has no rdf:Description, so it is not an XMP packet; left as it is")
        host = self.elements[descriptions[0]]
        new_props = b""
        for prop, (remove, add) in changes.items():
            index = self.find(prop)
            if index is None:
                if add:
                    new_props += self._new_prop(host, prop, add)
                continue
            items = self.items(index)
            kept = [i for i in items if self.elements[i].text not in remove]
            if not kept and not add:
                element = self.elements[index]
                edits.append((_lead(data, element.start), element.end, b""))
                continue
            for i in items:
                if self.elements[i].text in remove:
                    edits.append((_lead(data, self.elements[i].start), self.elements[i].end, b""))
            if add:
                edits.append(self._append_items(index, items, add))
        if new_props:
            if host.inner_end < 0:  # <rdf:Description .../>: opened up to take children
                head = data[host.start:host.end - 2].rstrip()
                qname = head[1:].split()[0]
                close = _indent(data, host.start)
                edits.append((host.start, host.end, head + b">" + new_props + close + b"</" + qname + b">"))
            else:
                last = host.children[-1] if host.children else None
                at = self.elements[last].end if last is not None else _tag_end(data, host.start)
                edits.append((at, at, new_props))
        for start, end, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
            data = data[:start] + text + data[end:]
        return data

    def _child_indent(self, element: _Element) -> bytes:
        first = element.children[0] if element.children else None
        if first is not None:
            return _indent(self.data, self.elements[first].start)
        own = _indent(self.data, element.start)
        return own + b" " if own else b""

    def _li(self, rdf: str, values: Iterable[str], indent: bytes) -> bytes:
        return b"".join(indent + f"<{rdf}li>{escape(v)}</{rdf}li>".encode() for v in values)

    def _append_items(self, index: int, items: list[int], add: Sequence[str]) -> tuple[int, int, bytes]:
        box_index = self.container(index)
        box = self.elements[box_index]
        rdf, _ = self._qname(self._scope_of(box_index), RDF, "rdf")
        indent = self._child_indent(box)
        if items:
            at = self.elements[items[-1]].end
            return at, at, self._li(rdf, add, indent)
        if box.inner_end < 0:  # <rdf:Bag/>
            head = self.data[box.start:box.end - 2].rstrip()
            qname = head[1:].split()[0].decode()
            return box.start, box.end, (head + b">" + self._li(rdf, add, indent) + _indent(self.data, box.start)
                                        + f"</{qname}>".encode())
        at = _tag_end(self.data, box.start)
        return at, at, self._li(rdf, add, indent)

    def _scope_of(self, index: int | None) -> dict:
        while index is not None:
            if self.elements[index].scope is not None:
                return self.elements[index].scope
            index = self.elements[index].parent
        return {}

    def _new_prop(self, host: _Element, prop: Prop, values: Sequence[str]) -> bytes:
        scope = host.scope or {}
        name, declare = self._qname(scope, prop.uri, prop.prefix)
        rdf, _ = self._qname(scope, RDF, "rdf")
        indent = self._child_indent(host)
        step = b" " if indent else b""
        return (indent + f"<{name}{prop.local}".encode() + declare + b">"
                + indent + step + f"<{rdf}{prop.kind}>".encode()
                + self._li(rdf, values, indent + step + step)
                + indent + step + f"</{rdf}{prop.kind}>".encode()
                + indent + f"</{name}{prop.local}>".encode())


NEW_SIDECAR = ('<?xml version="1.0" encoding="UTF-8"?>\n'
               '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="clipcli">\n'
               ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
               '  <rdf:Description rdf:about=""\n'
               + "".join(f'    xmlns:{p}="{u}"\n' for p, u in NAMESPACES.items())
               + '  />\n </rdf:RDF>\n</x:xmpmeta>\n').encode()
NEW_PACKET = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + NEW_SIDECAR.decode().split("\n", 1)[1]
              + '<?xpacket end="w"?>').encode()


def _with_description(data: bytes, name: str) -> XmpText:
    """The packet, with an empty rdf:Description added when it has none (an rdf:RDF is required)."""
    text = XmpText(data, name)
    if text.descriptions():
        return text
    rdf = next((e for e in text.elements if e.uri == RDF and e.local == "RDF"), None)
    if rdf is None:
        raise TagFileError(f"{name}: has no rdf:RDF, so it is not an XMP packet; left as it is")
    if rdf.inner_end < 0:
        raise TagFileError(f"{name}: its rdf:RDF is empty (<rdf:RDF/>); left as it is")
    empty = f'<rdf:Description xmlns:rdf="{RDF}" rdf:about=""/>'.encode()
    at = _tag_end(data, rdf.start)
    return XmpText(data[:at] + text._child_indent(rdf) + empty + data[at:], name)


# --- planning -----------------------------------------------------------------------------------------------------
@dataclass
class TagOperation:
    """One image's part of the plan (and, executed, its journal line)."""

    path: str  # the image
    target: str | None  # the file written: the sidecar, or the image itself (embedded)
    kind: str  # sidecar | embedded
    operation: str  # create | update | unchanged | error
    labels: list[dict] = field(default_factory=list)  # chosen: {"label", "score"}
    add: list[str] = field(default_factory=list)  # labels gained
    remove: list[str] = field(default_factory=list)  # labels lost
    note: str = ""
    before: str | None = None  # sha256 of the target when planned (None: no file)
    keywords: dict = field(default_factory=dict)  # form -> [remove, add, ours, had_ours] (for execution)

    def as_record(self) -> dict:
        from .paths import display_path

        record = {k: v for k, v in asdict(self).items() if k not in ("before", "keywords")}
        for key in ("path", "target"):
            if record[key] is not None:
                record[key] = display_path(record[key])
        return record


def sidecar_of(image: str, naming: str = "darktable") -> str:
    """The sidecar of an image: an existing one of either name (the chosen naming's first), else the chosen name."""
    full, stem = image + ".xmp", os.path.splitext(image)[0] + ".xmp"
    first, second = (full, stem) if naming == "darktable" else (stem, full)
    for candidate in (first, second):
        if os.path.lexists(candidate):
            return candidate
    return first


def embeddable(image: str) -> str | None:
    """The format clip tag writes into (jpeg, png, webp, tiff), by extension; None: a sidecar instead."""
    return EMBEDDABLE.get(os.path.splitext(image)[1].lower())


def check_writable(path: str, what: str = "") -> None:
    """Refuse a symbolic link, a special file, a read-only file or a read-only folder (by its mode bits, so a
    read-only file is respected even by root), naming the file and the fix."""
    folder = os.path.dirname(path) or "."
    try:
        folder_mode = os.stat(folder).st_mode
    except OSError as exc:
        raise TagFileError(f"{folder}: {reason(exc)}") from None
    if not folder_mode & 0o222 or not os.access(folder, os.W_OK | os.X_OK):
        raise TagFileError(f"{path}: its folder {folder} is read-only; make it writable to tag {what or 'it'}")
    if not os.path.lexists(path):
        return
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise TagFileError(f"{path}: is a symbolic link; clip tag never writes through links (replace it with the "
                           "file it points to, or remove it)")
    if not stat.S_ISREG(st.st_mode):
        raise TagFileError(f"{path}: is not a regular file; left as it is")
    if not st.st_mode & 0o222:
        raise TagFileError(f"{path}: is read-only; make it writable (chmod u+w) to tag it")


def read_target(path: str) -> bytes | None:
    """A target's bytes (None: no file yet); a sidecar over MAX_SIDECAR_BYTES is refused unread."""
    from .fsutil import open_regular

    if not os.path.lexists(path):
        return None
    with open_regular(path) as handle:
        if path.lower().endswith(".xmp"):
            data = handle.read(MAX_SIDECAR_BYTES + 1)
            if len(data) > MAX_SIDECAR_BYTES:
                raise TagFileError(f"{path}: is larger than {MAX_SIDECAR_BYTES >> 20} MiB, too big for an XMP "
                                   "sidecar; left as it is")
            return data
        return handle.read()


def _sidecar_state(data: bytes | None, name: str) -> XmpText:
    return _with_description(NEW_SIDECAR if data is None else data, name)


def _embedded_state(path: str, name: str | None = None) -> tuple[XmpText, list[str], bool]:
    """The image's XMP packet (a new one when it has none), its IPTC keywords, and whether its IPTC declares a
    character set (read by exiftool; errors name `name`, the user's file, when `path` is a copy of it)."""
    import base64
    import json

    from .exiftool import ExifToolError, exiftool

    shown = name or path

    try:
        out, err = exiftool().run("-j", "-b", "-XMP", "-IPTC:Keywords", "-IPTC:CodedCharacterSet", path)
        # numbers as their text: a keyword "1.50" stays "1.50"
        meta = json.loads(out, parse_int=str, parse_float=str)[0] if out.strip() else {}
    except (ExifToolError, ValueError) as exc:
        raise TagFileError(f"{shown}: exiftool cannot read its metadata ({exc}); left as it is") from None
    if "Error" in meta or (not out.strip() and err):
        raise TagFileError(f"{shown}: exiftool cannot read its metadata ({meta.get('Error') or err}); left as it is")
    raw = meta.get("XMP")
    packet = (base64.b64decode(raw[7:]) if raw.startswith("base64:") else raw.encode("utf-8")) if raw else NEW_PACKET
    keywords = meta.get("Keywords", [])
    keywords = [str(k) for k in (keywords if isinstance(keywords, list) else [keywords])]
    return _with_description(packet, shown), keywords, "CodedCharacterSet" in meta


def _state(xmp: XmpText, keywords: list[str] | None) -> tuple[dict, dict]:
    current = {key: xmp.values(public) for key, (public, _) in FORMS.items()}
    ours = {key: xmp.values(private) for key, (_, private) in FORMS.items()}
    if keywords is not None:
        current["keywords"], ours["keywords"] = keywords, xmp.values(KEYWORDS)
    return current, ours


def plan_one(path: str, record: dict, rules: TagRules) -> TagOperation:
    """An image and its record -> what would change in its sidecar or (embed) the image itself.
    Reads the target; writes nothing."""
    source = os.path.abspath(path)
    if "error" in record:
        return TagOperation(source, None, "sidecar", "error", note=record["error"]["message"])
    chosen = [{"label": p["label"], "score": p["score"]} for p in rules.chosen(record)]
    fmt = embeddable(source) if rules.embed else None
    target = source if fmt else sidecar_of(source, rules.naming)
    op = TagOperation(source, target, "embedded" if fmt else "sidecar", "unchanged", chosen)
    if fmt and os.path.lexists(sidecar_of(source, rules.naming)):
        op.note = (f"{os.path.basename(sidecar_of(source, rules.naming))} exists too: darktable and digiKam read "
                   "the sidecar first, so tag it as well (without --embed)")
    try:
        check_writable(target, "the image" if fmt else "its sidecar")
        data = read_target(target)
        if fmt:
            xmp, keywords, _charset = _embedded_state(target)
        else:
            xmp, keywords = _sidecar_state(data, target), None
        current, ours = _state(xmp, keywords if fmt == "jpeg" else None)
    except TagFileError as exc:
        op.operation, op.note = "error", str(exc)
        return op
    except OSError as exc:
        op.operation, op.note = "error", f"cannot read {target}: {reason(exc)}"
        return op
    changes = merge(current, ours, wanted([c["label"] for c in chosen], rules.root.strip(), fmt == "jpeg"))
    op.before = None if data is None else _sha(data)
    op.keywords = {key: [c.remove, c.add, c.ours, c.had_ours] for key, c in changes.items()}
    if any(c.changed for c in changes.values()):
        op.operation = "create" if data is None else "update"
    op.add = list(dict.fromkeys(label_of(v, k) for k, c in changes.items() for v in c.add))
    op.remove = list(dict.fromkeys(label_of(v, k) for k, c in changes.items() for v in c.remove))
    return op


def plan_tags(paths: Sequence[str], records: Iterable[dict], rules: TagRules) -> list[TagOperation]:
    """Each path with its record -> one operation; two images sharing one sidecar (IMG.JPG and IMG.PNG under
    digiKam's naming) are refused, the second naming the first."""
    rules.check()
    plan, owners = [], {}
    for path, record in zip(paths, records, strict=True):
        op = plan_one(path, record, rules)
        if op.target is not None and op.kind == "sidecar":
            first = owners.setdefault(op.target, op.path)
            if first != op.path:
                op.operation, op.note = "error", (f"{op.target} is also the sidecar of {first}; use --sidecar-name "
                                                   "darktable (IMG.JPG.xmp) to give each its own")
        plan.append(op)
    return plan


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# --- execution ----------------------------------------------------------------------------------------------------
def new_bytes(op: TagOperation, data: bytes | None) -> bytes:
    """The target's new bytes for the planned change (from its bytes now, which must be those planned)."""
    changes, records = {}, {}  # clipcli's records after the public properties
    for key, (remove, add, ours, had) in op.keywords.items():
        public, private = FORMS.get(key, (None, KEYWORDS))
        if public is not None:
            changes[public] = (set(remove), add)
        records[private] = (set(had) - set(ours), [v for v in ours if v not in had])
    changes.update(records)
    if op.kind == "sidecar":
        xmp = _sidecar_state(data, op.target)
        result = xmp.edited(changes)
        _verify(XmpText(result, op.target), op)
        return result
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clip-tag-") as work:  # exiftool works on a private copy of `data`
        copy = os.path.join(work, "image" + os.path.splitext(op.target)[1].lower())
        Path(copy).write_bytes(data)
        xmp, keywords, charset = _embedded_state(copy, op.target)
        packet = xmp.edited(changes)
        _verify(XmpText(packet, op.target), op)
        return _embedded_bytes(op, copy, packet, keywords, charset)


def _embedded_bytes(op: TagOperation, copy: str, packet: bytes, keywords: list[str], charset: bool) -> bytes:
    """The private copy of the image with the new XMP packet (and IPTC keywords for JPEG), written by exiftool
    (which writes in place; the user's file is replaced later, atomically, from these bytes)."""
    from .exiftool import ExifToolError, exiftool

    args = ["-overwrite_original"]
    if "keywords" in op.keywords:
        remove, add = op.keywords["keywords"][:2]
        args += [*(f"-IPTC:Keywords-={v}" for v in remove), *(f"-IPTC:Keywords+={v}" for v in add)]
        if any(not v.isascii() for v in add) and not charset and all(k.isascii() for k in keywords):
            args += ["-IPTC:CodedCharacterSet=UTF8", "-charset", "iptc=UTF8"]  # so readers decode them
    xmp_file = os.path.join(os.path.dirname(copy), "packet.xmp")
    Path(xmp_file).write_bytes(packet)
    try:
        _out, err = exiftool().run(*args, f"-XMP<={xmp_file}", copy)
    except ExifToolError as exc:
        raise TagFileError(f"{op.target}: exiftool cannot write its metadata ({exc}); left as it is") from None
    if any(line.startswith("Error") for line in err.splitlines()):
        raise TagFileError(f"{op.target}: exiftool cannot write its metadata ({err.splitlines()[0]}); left as it is")
    _verify(_embedded_state(copy, op.target)[0], op)  # as exiftool wrote it
    return Path(copy).read_bytes()


def _verify(xmp: XmpText, op: TagOperation) -> None:
    """The edited packet must read back as planned: each form's kept values plus the added ones."""
    for key, (remove, add, ours, _had) in op.keywords.items():
        if key == "keywords":
            continue
        public, private = FORMS[key]
        got = xmp.values(public)
        if not set(add) <= set(got) or set(remove) & set(got) or xmp.values(private) != ours:
            raise TagFileError(f"{op.target}: the edited XMP does not read back as planned; left as it is")


def temp_name(key: str) -> str:
    return f"{TEMP_PREFIX}{key}.tmp"


def backup_folder(manifest: Path) -> Path:
    return manifest.with_name(manifest.name.removesuffix(".jsonl") + ".backup")


def default_manifest(folder: Path = Path(".")) -> Path:
    return folder / f"clip-tag-{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl"


class TagJournal(Journal):
    """The journal of `clip tag`: `sorting.Journal`'s begun and closed lines, one per written file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "clip tag")
        self.backups = backup_folder(path.absolute())


def _link_or_copy(source: str | Path, destination: Path) -> None:
    """`destination` (new) holding `source`'s bytes: a hard link, or across filesystems a fsynced copy."""
    try:
        os.link(source, destination)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        with open(source, "rb") as src, open(destination, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copystat(source, destination)


def _write_temp(temp: Path, data: bytes, like: str | None) -> None:
    from .fsutil import umask_mode

    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, umask_mode())
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if like is not None:
        shutil.copymode(like, temp)  # an embedded image or an updated sidecar keeps its permissions


def execute(plan: Sequence[TagOperation], journal: TagJournal,
            progress: Callable[[int, int], None] | None = None) -> Iterator[TagOperation]:
    """Write each planned change, journaled; yields each operation as done (or failed)."""
    for done, op in enumerate(plan, start=1):
        if op.operation in ("create", "update"):
            try:
                _write_one(op, journal)
            except TagFileError as exc:
                op.operation, op.note = "error", str(exc)
            except OSError as exc:
                where = exc.filename if exc.filename and TEMP_PREFIX not in str(exc.filename) else op.target
                op.operation, op.note = "error", f"cannot write {where}: {reason(exc)}; left as it was"
        if progress is not None:
            progress(done, len(plan))
        yield op


def _write_one(op: TagOperation, journal: TagJournal) -> None:
    target = op.target
    check_writable(target)
    data = read_target(target)
    if (None if data is None else _sha(data)) != op.before:
        raise TagFileError(f"{target}: changed since it was planned; run clip tag again")
    result = new_bytes(op, data)
    key = uuid.uuid4().hex
    folder = Path(target).parent
    temp = folder / temp_name(key)
    backup = None
    if data is not None:
        journal.backups.mkdir(exist_ok=True)
        backup = journal.backups / key
    journal.begin_entry({"image": op.path, "target": target, "kind": op.kind, "operation": op.operation, "id": key,
                         "before": op.before, "after": _sha(result), "backup": str(backup) if backup else None,
                         "labels": [c["label"] for c in op.labels], "add": op.add, "remove": op.remove})
    made = None
    try:
        if backup is not None:
            _link_or_copy(target, backup)
            fsync_dir(backup.parent)
        _write_temp(temp, result, target if data is not None else None)
        if data is None:
            os.link(temp, target)  # a sidecar that appeared meanwhile is never replaced (FileExistsError)
            os.unlink(temp)
        else:
            os.replace(temp, target)
        fsync_dir(folder)
        made = identity(target)
    finally:
        with suppress(OSError):
            temp.unlink(missing_ok=True)
        if made is None and backup is not None:
            with suppress(OSError):
                backup.unlink(missing_ok=True)
        journal.end_entry("after_id" if made is not None else None, made)


# --- undo ---------------------------------------------------------------------------------------------------------
def read_tag_journal(path: Path) -> list[dict]:
    return read_entries(path, {"target", "kind", "before", "after", "id"}, "a clip tag manifest", DONE_KEY)


def remove_temporaries(entries: Iterable[dict]) -> None:
    """The temporary files a crash left beside the targets: only the names this journal made."""
    for entry in entries:
        with suppress(OSError):
            (Path(entry["target"]).parent / temp_name(entry["id"])).unlink(missing_ok=True)


@dataclass
class UndoResult:
    restored: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def undone_ids(manifest: Path) -> set[str]:
    """The ids of the entries an undo has already put back (its `{"undone": id}` lines)."""
    import json

    ids = set()
    for line in manifest.read_bytes().decode("utf-8").splitlines():
        with suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("undone"), str):
                ids.add(entry["undone"])
    return ids


def undo(manifest: Path, progress: Callable[[int, int], None] | None = None) -> UndoResult:
    """Put every file the journal names back as it was, newest first; refuse (naming it) one changed since.
    Each entry put back is marked in the journal (`{"undone": id}`), so that an undo run again, or finished
    after a crash, goes on from there instead of refusing the files an earlier entry already put back."""
    entries = read_tag_journal(manifest)
    remove_temporaries(entries)
    result = UndoResult()
    journal = Journal(manifest, "clip tag")
    try:
        done_before = undone_ids(manifest)
        for done, entry in enumerate(reversed(entries), start=1):
            if entry["id"] not in done_before:
                try:
                    why = _undo_one(entry)
                except OSError as exc:
                    why = f"cannot restore: {reason(exc)}"
                if why is None:
                    result.restored.append(entry["target"])
                elif why:
                    result.refused.append((entry["target"], why))
                if not why:
                    journal.begin_entry({"undone": entry["id"]})
                    journal.end_entry()
            if progress is not None:
                progress(done, len(entries))
    finally:
        journal.close()
    with suppress(OSError):
        backup_folder(manifest).rmdir()  # only once every backup is back in place
    return result


def _digest(path: str) -> str | None:
    try:
        return file_digest(path)
    except FileNotFoundError:
        return None


def _undo_one(entry: dict) -> str | None:
    """None: undone; "": nothing to undo (never written, or undone before); else why it was refused."""
    target, backup = entry["target"], entry.get("backup")
    if os.path.islink(target):
        return "is a symbolic link now; left as it is"
    now = _digest(target)
    if now == entry["before"]:  # never written (a crash before the rename), or undone already
        if backup:
            Path(backup).unlink(missing_ok=True)
        return ""
    if now != entry["after"]:
        if now is None:
            return "was removed since clip tag wrote it; nothing to restore it over" + (
                f" (its earlier content is kept in {backup})" if backup else "")
        return "changed since clip tag wrote it; left as it is"
    if entry["before"] is None:  # a sidecar clip tag created
        os.unlink(target)
        fsync_dir(os.path.dirname(target) or ".")
        return None
    if not backup or _digest(backup) != entry["before"]:
        return f"its backup {backup} is missing or damaged; left as it is"
    temp = Path(target).parent / temp_name(entry["id"])
    temp.unlink(missing_ok=True)
    _link_or_copy(backup, temp)
    os.replace(temp, target)
    fsync_dir(os.path.dirname(target) or ".")
    Path(backup).unlink()
    return None
