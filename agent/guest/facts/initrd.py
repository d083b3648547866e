"""What the current initrd holds: dracut's ``lsinitrd`` or initramfs-tools' ``lsinitramfs``
on a live guest, else the image itself (cpio "newc" archives, uncompressed, gzip or xz, an
early-microcode archive first). Bounded: at most :data:`MAX_IMAGE` bytes unpacked and
:data:`MAX_NAMES` names."""

import gzip
import io
import lzma
import os
from typing import Dict, List, Optional, Tuple

from netcheck.agent.guest import commands
from netcheck.agent.guest.facts.base import Fact, Root, fact

MAX_IMAGE = 512 * 1024 * 1024
MAX_NAMES = 200000
# Where each family keeps the initrd of kernel <r>.
IMAGES = ("boot/initramfs-{r}.img", "boot/initrd.img-{r}", "boot/initrd-{r}", "boot/initrd-{r}.img")


def image_of(root: Root) -> Optional[str]:
    if not root.kernel:
        return None
    return root.first(*(p.format(r=root.kernel) for p in IMAGES))


def _cpio_names(data: bytes, pos: int) -> Tuple[List[str], int]:
    """The names of one newc archive from `pos`, and where it ends."""
    names: List[str] = []
    while pos + 110 <= len(data) and len(names) < MAX_NAMES:
        head = data[pos : pos + 110]
        if head[:6] not in (b"070701", b"070702"):
            break
        namesize = int(head[94:102], 16)
        filesize = int(head[54:62], 16)
        name = data[pos + 110 : pos + 110 + namesize - 1].decode("utf-8", "replace")
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + filesize + 3) & ~3
        if name == "TRAILER!!!":
            break
        names.append(name)
    return names, pos


def _unpack(data: bytes) -> Optional[bytes]:
    """A gzip or xz stream unpacked (at most MAX_IMAGE bytes), None for anything else."""
    try:
        if data[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                return gz.read(MAX_IMAGE)
        if data[:6] == b"\xfd7zXZ\x00":
            with lzma.LZMAFile(io.BytesIO(data)) as xz:
                return xz.read(MAX_IMAGE)
    except (OSError, EOFError, lzma.LZMAError):
        return None
    return None


def read_image(data: bytes) -> List[str]:
    """Every name in an initrd image (the archives one after another)."""
    names: List[str] = []
    pos = 0
    for _ in range(8):
        while pos < len(data) and data[pos] == 0:
            pos += 1
        rest = data[pos:]
        if rest[:6] in (b"070701", b"070702"):
            more, pos = _cpio_names(data, pos)
            names.extend(more)
            continue
        inner = _unpack(rest)
        if inner is None:
            break
        names.extend(_cpio_names(inner, 0)[0])
        break  # a compressed archive is the last one
    return names[:MAX_NAMES]


# (path, size, mtime) of an image -> what listing() found: a serving guest reports its facts
# every round, and the initrd changes only when a kernel or dracut rewrites it.
_LISTED: Dict[Tuple[str, int, float], Tuple[Optional[List[str]], str]] = {}


def listing(root: Root, image: str) -> Tuple[Optional[List[str]], str]:
    """(names in the image, how they were found), names None when nothing could read it;
    remembered while the image's size and modification time stay."""
    try:
        st = os.stat(root.join(image))
    except OSError:
        return None, "file:/" + image
    key = (root.join(image), st.st_size, st.st_mtime)
    if key not in _LISTED:
        if len(_LISTED) >= 8:
            _LISTED.clear()
        _LISTED[key] = _listing(root, image)
    return _LISTED[key]


def _listing(root: Root, image: str) -> Tuple[Optional[List[str]], str]:
    if root.live:
        for tool in ("lsinitrd", "lsinitramfs"):
            exe = commands.which(tool)
            if exe is None:
                continue
            code, out, _ = commands.run([exe, root.join(image)], 120)
            if code == 0:
                lines = out.decode("utf-8", "replace").splitlines()[:MAX_NAMES]
                return [ln.split()[-1] for ln in lines if ln.strip()], "command:" + tool
    data = root.read(image, MAX_IMAGE)
    if data is None:
        return None, "file:/" + image
    return read_image(data), "file:/" + image


def module_fact(root: Root, module: str) -> Fact:
    image = image_of(root)
    if image is None:
        why = "no initrd for kernel " + (root.kernel or "(unknown)")
        return fact("iscsi.initrd_module", None, "file:/boot", why)
    names, src = listing(root, image)
    if names is None:
        return fact("iscsi.initrd_module", None, src, "cannot read the image")
    if not names:
        return fact("iscsi.initrd_module", None, src, "no names read (compression not known)")
    found = any(n.rsplit("/", 1)[-1].split(".ko")[0] == module for n in names)
    return fact("iscsi.initrd_module", found, src, "%d names in /%s" % (len(names), image))
