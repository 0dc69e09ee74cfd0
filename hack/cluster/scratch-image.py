#!/usr/bin/env python3
"""Writes a FROM-scratch image holding one static binary as a docker-archive tar, the
format `ctr images import` and `kind load image-archive` take. Used for the local
cluster's own infrastructure images (pause, CoreDNS); sluice's images come from
`make images`.

    scratch-image.py OUT.tar NAME:TAG BINARY [--user UID:GID] [--port N/tcp ...] [-- ARG...]
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("ref")
    p.add_argument("binary")
    p.add_argument("--user", default="")
    p.add_argument("--port", action="append", default=[])
    p.add_argument("cmd", nargs="*")
    a = p.parse_args()

    name = "/" + os.path.basename(a.binary)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = t.gettarinfo(a.binary, arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755
        with open(a.binary, "rb") as f:
            t.addfile(info, f)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [name],
            "Cmd": a.cmd or None,
            "User": a.user,
            "ExposedPorts": {port: {} for port in a.port},
            "Env": ["PATH=/"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"scratch-image.py {name}"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id[len("sha256:"):] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [a.ref], "Layers": [layer_name]}]

    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w") as out:
        for member, data in (
            (config_name, config_bytes),
            (layer_name, layer_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
