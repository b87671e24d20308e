#!/usr/bin/env python3
"""Writes a one-layer OCI image archive (the layout `ctr images import` reads) holding one static
executable as its entrypoint: the node's pod sandbox ("pause") image, made here because this
machine pulls from no registry.

    oci-archive.py EXECUTABLE IMAGE-NAME OUT.tar [USER]
"""
import hashlib
import io
import json
import sys
import tarfile

exe, name, out = sys.argv[1:4]
user = sys.argv[4] if len(sys.argv) > 4 else "65535:65535"
base = exe.rsplit("/", 1)[-1]


def blob(tar, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":", 1)[1])
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


# The layer: the executable at /<name>, root-owned, 0755, no timestamp.
layer_buf = io.BytesIO()
with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
    data = open(exe, "rb").read()
    info = tarfile.TarInfo(base)
    info.size = len(data)
    info.mode = 0o755
    layer.addfile(info, io.BytesIO(data))
layer_bytes = layer_buf.getvalue()

with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
    layer_desc = blob(tar, layer_bytes, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/" + base], "User": user},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = blob(tar, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": [layer_desc],
    }
    manifest_desc = blob(tar, json.dumps(manifest, sort_keys=True).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
    }
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    for fname, content in (
        ("oci-layout", {"imageLayoutVersion": "1.0.0"}),
        ("index.json", {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_desc]}),
    ):
        data = json.dumps(content, sort_keys=True).encode()
        info = tarfile.TarInfo(fname)
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
