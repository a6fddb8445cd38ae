"""Deterministic workload generators for dsvc benchmarks.

Everything here is a pure function of its ``seed`` (Python's ``random.Random`` with an
integer seed is stable across platforms and versions), so two runs, or two machines,
benchmark the same bytes.

Workloads
---------
* :func:`random_bytes` / :func:`write_random_file` / :func:`random_files`:
  incompressible data (images, parquet, archives stand-in). Fast: each 1 MiB block is
  ``A[i] XOR B[j]`` of two small pools of random blocks, so no two blocks share
  content (no accidental dedup) and nothing compresses.
* :func:`csv_text` / :func:`write_csv` / :func:`append_rows`: CSV-like rows with an
  increasing id, timestamps, people/emails, countries, products, quantities, prices,
  scores, statuses and short free-text comments. zstd-1 stores it at roughly a
  quarter of its size (like real exports), not the 20x of a repeated pattern.
* :func:`small_files` / :func:`modify_files`: N small text files of 1-4 KiB spread over
  M folders (each file distinct).
* :func:`tiny_files`: the scale workload, N files of 160-800 bytes filled folder by
  folder (1,000 x 1,000 is the million-file dataset of benchmarks/bench_scale.py).
* :func:`edit` : insert / delete / overwrite / append bytes in a buffer (chunking
  studies).

:func:`cached` builds a workload once under a folder and reuses it while its parameters
are unchanged (a stamp file records them), so repeated benchmark runs skip generation.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

BLOCK = 1 * MiB

# -- incompressible data ---------------------------------------------------------


def _rng(*key: int | str) -> random.Random:
    # a stable integer seed from a tuple (hash() of str is salted per process)
    s = 0
    for k in key:
        v = (
            k
            if isinstance(k, int)
            else int.from_bytes(str(k).encode()[:32].ljust(32, b"\0"), "big")
        )
        s = (s * 1_000_003 + v) % (1 << 128)
    return random.Random(s)


def iter_random_blocks(size: int, seed: int) -> Iterator[bytes]:
    """Yield ``size`` incompressible bytes, in blocks of at most 1 MiB, from ``seed``."""
    nblocks = max(1, math.ceil(size / BLOCK))
    k = max(1, math.ceil(math.sqrt(nblocks)))
    rng = _rng("random", seed)
    a = [int.from_bytes(rng.randbytes(BLOCK), "little") for _ in range(k)]
    b = [int.from_bytes(rng.randbytes(BLOCK), "little") for _ in range(k)]
    left = size
    for i in range(nblocks):
        blk = (a[i % k] ^ b[i // k]).to_bytes(BLOCK, "little")
        n = min(left, BLOCK)
        yield blk if n == BLOCK else blk[:n]
        left -= n


def random_bytes(size: int, seed: int) -> bytes:
    """``size`` incompressible bytes, a pure function of ``seed``."""
    return b"".join(iter_random_blocks(size, seed))


def write_random_file(path: str | os.PathLike[str], size: int, seed: int) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        for blk in iter_random_blocks(size, seed):
            f.write(blk)
    return p


def random_files(
    folder: str | os.PathLike[str], sizes: list[int], seed: int, prefix: str = "img"
) -> list[Path]:
    """Write one incompressible file per entry of ``sizes`` into ``folder``."""
    return [
        write_random_file(Path(folder) / f"{prefix}_{i:05d}.bin", n, seed * 100_003 + i)
        for i, n in enumerate(sizes)
    ]


# -- CSV-like text -----------------------------------------------------------------

CSV_HEADER = (
    "id,timestamp,first_name,last_name,email,country,city,product,category,unit_price,"
    "quantity,amount,score,status,comment\n"
)

_SYL = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ne",
    "to",
    "su",
    "vi",
    "da",
    "po",
    "le",
    "an",
    "ber",
    "cor",
    "del",
    "fin",
    "gar",
    "hel",
    "ion",
    "jas",
    "kor",
    "lum",
    "mar",
    "nor",
    "ost",
    "pra",
    "qui",
    "ros",
    "sta",
    "tur",
    "ul",
    "ven",
    "wil",
    "xen",
    "yor",
    "zan",
    "el",
    "ma",
    "ri",
    "co",
]
_WORDS = [
    "the",
    "quick",
    "order",
    "delivery",
    "late",
    "early",
    "fine",
    "great",
    "poor",
    "package",
    "arrived",
    "damaged",
    "excellent",
    "service",
    "refund",
    "again",
    "customer",
    "support",
    "product",
    "quality",
    "price",
    "value",
    "would",
    "buy",
    "recommend",
    "not",
    "happy",
    "very",
    "good",
    "bad",
    "okay",
    "size",
    "color",
    "fits",
    "small",
    "large",
    "return",
    "exchange",
    "gift",
    "fast",
    "slow",
    "shipping",
    "box",
    "item",
    "works",
    "broken",
    "perfect",
    "love",
    "hate",
    "cheap",
    "expensive",
    "battery",
    "screen",
    "sound",
    "light",
    "heavy",
    "soft",
    "hard",
]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3))).capitalize()


class _CsvPools:
    """Value pools of 256 or 65536 slots, indexed by random bytes (vectorised in C).

    Slots repeat values with Zipf-like weights, like real tables: a few customers,
    products and places account for many rows.
    """

    def __init__(self, seed: int) -> None:
        rng = _rng("csvpools", seed)

        def zipf(values: list[str], k: int = 65536, s: float = 1.0) -> list[str]:
            w = [1.0 / (r + 1) ** s for r in range(len(values))]
            return rng.choices(values, weights=w, k=k)

        firsts = [_name(rng) for _ in range(300)]
        lasts = [_name(rng) for _ in range(2000)]
        domains = [
            f"{_name(rng).lower()}.{rng.choice(['com', 'org', 'net', 'io', 'de'])}"
            for _ in range(200)
        ]
        domains = zipf(["gmail.com", "yahoo.com", "outlook.com", *domains], 4096)
        people = []
        for _ in range(30000):
            f, la = rng.choice(firsts), rng.choice(lasts)
            num = rng.randint(1, 999) if rng.random() < 0.5 else ""
            people.append(f"{f},{la},{f.lower()}.{la.lower()}{num}@{rng.choice(domains)}")
        self.people = zipf(people, s=0.8)
        countries = [
            "US",
            "DE",
            "FR",
            "GB",
            "IT",
            "ES",
            "NL",
            "SE",
            "PL",
            "JP",
            "CN",
            "IN",
            "BR",
            "CA",
            "AU",
            "MX",
            "KR",
            "CH",
            "AT",
            "BE",
        ]
        cities = [_name(rng) for _ in range(2000)]
        places = [f"{rng.choice(countries)},{c}" for c in cities]
        self.place = zipf(places)
        cats = [
            "books",
            "electronics",
            "garden",
            "toys",
            "kitchen",
            "sports",
            "beauty",
            "grocery",
            "office",
            "tools",
        ]
        products = [
            (
                f"{_name(rng)} {rng.choice(_WORDS)} {rng.randint(1, 999)},{rng.choice(cats)}",
                round(rng.lognormvariate(3.0, 1.1), 2),
            )
            for _ in range(5000)
        ]
        # product, category, unit price, quantity and amount (= quantity x unit price)
        self.line = []
        for prod, price in zipf(products):
            q = min(99, int(rng.expovariate(0.6)) + 1)
            self.line.append(f"{prod},{price:.2f},{q},{q * price:.2f}")
        self.score = [f"{rng.random():.3f}" for _ in range(65536)]
        self.status = (
            ["delivered"] * 150
            + ["shipped"] * 50
            + ["pending"] * 30
            + ["cancelled"] * 16
            + ["returned"] * 10
        )
        self.comment = []
        for _ in range(65536):
            n = rng.choice((0, 0, 0, 0, 0, 2, 3, 4, 5, 6))
            self.comment.append(" ".join(rng.choice(_WORDS) for _ in range(n)))
        d0 = 19000  # days since 1970-01-01 (2022-01-08)
        self.date = []
        for i in range(4096):
            y, m, d = _civil(d0 + i)
            self.date.append(f"{y:04d}-{m:02d}-{d:02d}T")
        self.tod = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)]


def _civil(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 -> (year, month, day) (Howard Hinnant's algorithm)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return y + (m <= 2), m, d


_POOLS: dict[int, _CsvPools] = {}


def _pools(seed: int) -> _CsvPools:
    p = _POOLS.get(seed)
    if p is None:
        p = _POOLS[seed] = _CsvPools(seed)
    return p


def csv_text(n_rows: int, seed: int, start_id: int = 0, pool_seed: int = 0) -> bytes:
    """``n_rows`` CSV rows (no header), ids from ``start_id``; a pure function of the
    arguments. ``pool_seed`` picks the value pools (keep it fixed within a dataset)."""
    p = _pools(pool_seed)
    rng = _rng("csvrows", seed, start_id)

    def col16(pool: list[str]) -> Iterator[str]:
        return map(pool.__getitem__, memoryview(rng.randbytes(2 * n_rows)).cast("H"))

    def col8(pool: list[str]) -> Iterator[str]:
        return map(pool.__getitem__, rng.randbytes(n_rows))

    # timestamps increase with the id (about one row every 2 s)
    t0 = start_id * 2
    jit = rng.randbytes(n_rows)
    date, tod = p.date, p.tod
    ts = [
        date[(t := t0 + 2 * i + (j >> 6)) // 86400 % 4096] + tod[t % 86400]
        for i, j in enumerate(jit)
    ]
    rows = zip(
        map(str, range(start_id, start_id + n_rows)),
        ts,
        col16(p.people),
        col16(p.place),
        col16(p.line),
        col16(p.score),
        col8(p.status),
        col16(p.comment),
    )
    return ("\n".join(map(",".join, rows)) + "\n").encode()


def iter_csv(size: int, seed: int, rows_per_block: int = 100_000) -> Iterator[bytes]:
    """CSV text of exactly ``size`` bytes (header included), in blocks; the last row
    is cut where the size ends."""
    left = size
    head = CSV_HEADER.encode()[:left]
    yield head
    left -= len(head)
    start = 0
    while left > 0:
        blk = csv_text(rows_per_block, seed, start)
        start += rows_per_block
        if len(blk) > left:
            blk = blk[:left]
        yield blk
        left -= len(blk)


def write_csv(path: str | os.PathLike[str], size: int, seed: int) -> Path:
    """A CSV file of exactly ``size`` bytes."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "wb") as f:
        for blk in iter_csv(size, seed):
            f.write(blk)
    return p


def _last_id(path: Path) -> int:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64 * KiB))
        lines = f.read().rstrip(b"\n").split(b"\n")
    for line in reversed(lines):
        head = line.split(b",", 1)[0]
        if head.isdigit():
            return int(head)
    return -1


def append_rows(path: str | os.PathLike[str], fraction: float, seed: int) -> int:
    """Append about ``fraction`` of the file's size as new rows (ids continue from the
    last complete row). Returns the number of bytes appended."""
    p = Path(path)
    size = p.stat().st_size
    with open(p, "rb+") as f:  # a cut last row is completed first
        f.seek(size - 1)
        if f.read(1) != b"\n":
            f.write(b"\n")
    start = _last_id(p) + 1
    want = int(size * fraction)
    n_rows = max(1, want // 100)
    out = bytearray()
    while len(out) < want:
        out += csv_text(n_rows, seed + 7919, start)
        start += n_rows
    with open(p, "ab") as f:
        f.write(out[: want if want else len(out)])
        if want and not out[:want].endswith(b"\n"):
            rest = out[want:]
            f.write(rest[: rest.index(b"\n") + 1])
    return p.stat().st_size - size


# -- small files -------------------------------------------------------------------


def small_file_bytes(i: int, seed: int, min_size: int = 1 * KiB, max_size: int = 4 * KiB) -> bytes:
    """Content of small file number ``i``: CSV rows, between ``min_size`` and ``max_size``."""
    rng = _rng("small", seed, i)
    n = rng.randint(min_size, max_size)
    rows = csv_text(n // 60 + 2, seed * 1_000_003 + i, start_id=i * 1000)
    return rows[:n]


def small_files(
    folder: str | os.PathLike[str],
    n: int,
    n_folders: int,
    seed: int,
    min_size: int = 1 * KiB,
    max_size: int = 4 * KiB,
) -> int:
    """Write ``n`` distinct text files of ``min_size..max_size`` bytes into ``n_folders``
    sub-folders of ``folder`` (``d0000/f0000123.csv``). Returns the total bytes."""
    root = Path(folder)
    dirs = [root / f"d{j:04d}" for j in range(n_folders)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    # a batch of content per call: csv_text has a fixed cost per call
    total = 0
    rng = _rng("smallsizes", seed)
    sizes = [rng.randint(min_size, max_size) for _ in range(n)]
    batch = 2000
    for b0 in range(0, n, batch):
        cnt = min(batch, n - b0)
        need = sum(sizes[b0 : b0 + cnt])
        text = csv_text(need // 60 + 100, seed * 7 + b0, start_id=b0 * 100)
        off = 0
        for i in range(b0, b0 + cnt):
            data = text[off : off + sizes[i]]
            off += sizes[i]
            with open(dirs[i % n_folders] / f"f{i:07d}.csv", "wb") as f:
                f.write(data)
            total += len(data)
    return total


def tiny_files(
    folder: str | os.PathLike[str],
    n: int,
    n_folders: int,
    seed: int,
    min_size: int = 160,
    max_size: int = 800,
) -> int:
    """Write ``n`` distinct text files of ``min_size..max_size`` bytes, filled folder by
    folder: ``n_folders`` sub-folders (``d0000/f0000123.txt``) of about ``n / n_folders``
    files each -- the scale workload (1,000 folders x 1,000 files of 160-800 bytes is
    issue 11's million-file dataset). Returns the total bytes.

    Each folder's content is sliced from one CSV block (``csv_text`` has a fixed cost
    per call), so a million files take about a minute to write, not ten."""
    root = Path(folder)
    rng = _rng("tinysizes", seed)
    total = 0
    per = -(-n // n_folders)
    i = 0
    for j in range(n_folders):
        cnt = min(per, n - i)
        if cnt <= 0:
            break
        d = root / f"d{j:04d}"
        d.mkdir(parents=True, exist_ok=True)
        sizes = [rng.randint(min_size, max_size) for _ in range(cnt)]
        text = csv_text(sum(sizes) // 60 + 100, seed * 7 + j, start_id=i * 100)
        off = 0
        for k in range(cnt):
            # a file's number as its first line keeps every file distinct even if the
            # CSV block were to repeat
            data = (b"%d\n" % (i + k) + text[off : off + sizes[k]])[: sizes[k]]
            off += sizes[k]
            with open(d / f"f{i + k:07d}.txt", "wb") as f:
                f.write(data)
            total += len(data)
        i += cnt
    return total


def list_files(folder: str | os.PathLike[str]) -> list[Path]:
    out = []
    for d, _, names in os.walk(folder):
        out.extend(Path(d) / n for n in names)
    out.sort()
    return out


def modify_files(files: list[Path], fraction: float, seed: int) -> list[Path]:
    """Rewrite about ``fraction`` of ``files`` (chosen by ``seed``) with new content of
    the same size. Returns the modified paths."""
    rng = _rng("modify", seed)
    k = max(1, round(len(files) * fraction)) if fraction > 0 else 0
    picked = sorted(rng.sample(range(len(files)), k))
    out = []
    for i in picked:
        p = files[i]
        size = p.stat().st_size
        data = csv_text(size // 40 + 2, seed * 31 + i, start_id=10**9 + i)[:size]
        p.write_bytes(data)
        out.append(p)
    return out


# -- edits on buffers (chunking studies) -------------------------------------------


def edit(data: bytes, op: str, fraction: float, seed: int, n_edits: int = 1) -> bytes:
    """Apply ``n_edits`` edits of kind ``op`` touching ``fraction`` of ``data`` in total.

    ``op``: ``insert`` (new random bytes at random offsets), ``delete`` (remove ranges),
    ``overwrite`` (replace ranges in place), ``append`` (new bytes at the end).
    """
    rng = _rng("edit", seed, op)
    total = max(1, int(len(data) * fraction))
    each = max(1, total // n_edits)
    if op == "append":
        return data + rng.randbytes(total)
    buf = bytearray(data)
    for _ in range(n_edits):
        pos = rng.randrange(0, max(1, len(buf) - each))
        if op == "insert":
            buf[pos:pos] = rng.randbytes(each)
        elif op == "delete":
            del buf[pos : pos + each]
        elif op == "overwrite":
            buf[pos : pos + each] = rng.randbytes(each)
        else:
            raise ValueError(f"unknown edit {op!r}")
    return bytes(buf)


# -- caching -----------------------------------------------------------------------


def cached(folder: str | os.PathLike[str], params: dict, build: Callable[[Path], object]) -> Path:
    """Build a workload into ``folder`` with ``build(folder)`` unless a previous build
    with the same ``params`` is complete there. Returns the folder."""
    root = Path(folder)
    stamp = root.parent / f".{root.name}.stamp"
    want = json.dumps(params, sort_keys=True)
    if root.exists() and stamp.exists() and stamp.read_text() == want:
        return root
    if stamp.exists():
        stamp.unlink()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    build(root)
    stamp.write_text(want)
    return root
