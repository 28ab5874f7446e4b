"""Container images without a registry: busybox OCI image archives for `ctr image import` (a plain one,
and a "pause" one for the CRI plugin's pod sandboxes)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUSYBOX_IMAGE", "PAUSE_IMAGE", "OciImage", "busybox_image", "pause_image"]

BUSYBOX = Path("/bin/busybox")
BUSYBOX_IMAGE = "docker.io/library/pykata-busybox:latest"
PAUSE_IMAGE = "docker.io/library/pykata-pause:latest"
# What a pod's sandbox container runs: nothing, until it is killed (SIGKILL, as the CRI plugin stops it).
PAUSE_ENTRYPOINT = ["/bin/sleep", "2147483647"]
LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class OciImage:
    """An OCI image-layout tar archive and the name `ctr image import` gives it."""

    archive: Path
    name: str


def _info(name: str, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _layer(busybox: Path) -> bytes:
    """One layer: busybox-static at /bin/busybox, a symlink per applet, the usual empty dirs."""
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True).stdout.split()
    data = busybox.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "dev", "etc", "proc", "root", "sys", "tmp", "usr", "usr/bin", "var"):
            tar.addfile(_info(directory, type=tarfile.DIRTYPE, mode=0o1777 if directory == "tmp" else 0o755))
        tar.addfile(_info("bin/busybox", size=len(data), mode=0o755), io.BytesIO(data))
        for applet in sorted(set(applets) - {"busybox"}):
            tar.addfile(_info(f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777))
        passwd = b"root:x:0:0:root:/root:/bin/sh\n"
        tar.addfile(_info("etc/passwd", size=len(passwd), mode=0o644), io.BytesIO(passwd))
    return buffer.getvalue()


def _blob(blobs: dict[str, bytes], media_type: str, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def busybox_image(directory: Path, name: str = BUSYBOX_IMAGE) -> OciImage:
    """Write ``directory``/busybox-oci.tar (deterministic: same bytes every time)."""
    return _busybox_archive(directory / "busybox-oci.tar", name, {"Cmd": ["sh"]})


def pause_image(directory: Path, name: str = PAUSE_IMAGE) -> OciImage:
    """Write ``directory``/pause-oci.tar: busybox whose entrypoint sleeps forever (a pod's sandbox image)."""
    return _busybox_archive(directory / "pause-oci.tar", name, {"Entrypoint": PAUSE_ENTRYPOINT})


def _busybox_archive(archive: Path, name: str, command: dict[str, list[str]]) -> OciImage:
    """An OCI image-layout archive of the busybox layer, with ``command`` (Cmd/Entrypoint) in its config."""
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX} (busybox-static) is needed to build the test image")
    blobs: dict[str, bytes] = {}
    layer = _layer(BUSYBOX)
    layer_desc = _blob(blobs, LAYER, layer)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                         "WorkingDir": "/", **command},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc = _blob(blobs, CONFIG, _json(config))
    manifest_desc = _blob(blobs, MANIFEST, _json({"schemaVersion": 2, "mediaType": MANIFEST, "config": config_desc,
                                                   "layers": [layer_desc]}))
    manifest_desc |= {"platform": {"architecture": "amd64", "os": "linux"},
                      "annotations": {"io.containerd.image.name": name,
                                      "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}
    files = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
             "index.json": _json({"schemaVersion": 2, "manifests": [manifest_desc]})}
    files |= {f"blobs/sha256/{digest.removeprefix('sha256:')}": data for digest, data in blobs.items()}
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory_name in ("blobs", "blobs/sha256"):
            tar.addfile(_info(directory_name, type=tarfile.DIRTYPE, mode=0o755))
        for path, data in files.items():
            tar.addfile(_info(path, size=len(data), mode=0o644), io.BytesIO(data))
    return OciImage(archive, name)
