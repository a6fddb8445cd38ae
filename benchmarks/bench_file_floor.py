"""Floor for materializing many tiny files on this disk (issue 11, local copies).

Creates N files of 160-800 bytes in F folders on T threads, and prints wall time,
rusage user/sys and physical write bytes as JSON::

    python benchmarks/bench_file_floor.py N FOLDERS THREADS MODE NEW_DIR

MODE ``0``: open/write/close per file from Python; ``1``: the same plus a hard link per
file into 256 hashed folders (what the content cache costs); ``native``: what a full
``get_local_copy`` does per small file, through the same C batch
(``dsvc.fsbatch.write_files``: create, write, utime, fstat, close, one call per folder
with the GIL released), without reading anything from a store. ``native`` is the
floor the copy row is measured against (docs/performance.md, session 8).

NEW_DIR must not exist; remove it afterwards (and ``sync``; on a ``discard`` mount the
deletion slows whatever runs next).
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from dsvc import fsbatch


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k.strip(): int(v) for k, v in (line.split(":") for line in f)}


def main() -> None:
    n, nf, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    mode, root = sys.argv[4], sys.argv[5]
    link = mode == "1"
    if mode not in ("0", "1", "native"):
        sys.exit(f"MODE is 0, 1 or native, not {mode!r}")
    per = n // nf
    rnd = random.Random(1)
    blob = rnd.randbytes(800)
    sizes = [rnd.randint(160, 800) for _ in range(per)]
    copy, cache = f"{root}/copy", f"{root}/cache"
    os.makedirs(copy)
    if link:
        for i in range(256):
            os.makedirs(f"{cache}/{i:02x}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

    names = [f"f{j:06d}.bin" for j in range(per)]
    datas = [blob[:size] for size in sizes]
    now = time.time_ns() // 10**9 * 10**9

    def folder(k: int) -> None:
        d = f"{copy}/d{k:04d}"
        os.mkdir(d)
        if mode == "native":
            fsbatch.write_files(d, names, datas, [0o444] * per, [now + j for j in range(per)])
            return
        for j in range(per):
            p = f"{d}/f{j:06d}.bin"
            fd = os.open(p, flags, 0o444)
            os.write(fd, blob[: sizes[j]])
            os.close(fd)
            if link:
                h = (k * per + j).to_bytes(16, "big").hex()
                os.link(p, f"{cache}/{h[-2:]}/{h}")

    i0, r0, t = _io(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if threads == 1:
        for k in range(nf):
            folder(k)
    else:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(folder, range(nf)))
    wall = time.perf_counter() - t
    r1, i1 = resource.getrusage(resource.RUSAGE_SELF), _io()
    out = {
        "n": n,
        "threads": threads,
        "mode": mode,
        "native": fsbatch.native is not None,
        "wall_s": round(wall, 2),
        "user_s": round(r1.ru_utime - r0.ru_utime, 2),
        "sys_s": round(r1.ru_stime - r0.ru_stime, 2),
        "write_MB": (i1["write_bytes"] - i0["write_bytes"]) // 10**6,
        "load": os.getloadavg()[0],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
