"""The pair-list folder source, `pairs:DIR[#holdout=N]`: NVARC's synthetic puzzles (`<subset>/<batch>/<puzzle>.json`)
and re-arc (`tasks/<id>.json`), where a file is one puzzle given as a JSON list of {"input", "output"} pairs, with
no train/test split.

- Every `*.json` below DIR (hidden folders skipped) is a puzzle named by its path relative to DIR without `.json`
  (`nvarc_full/batch_0007/3a1f09c2`, `tasks/007bbfb7`). Every pair is a training example (a demonstration).
- `#holdout=N` keeps one pair of each of N puzzles out of training: they become the puzzles' test pairs, which the
  periodic held-out evaluation scores (`data.eval_inputs` of them). The N puzzles are those of at least two pairs
  whose names hash lowest (BLAKE2b keyed with the seed, 0 unless `#holdout=N,seed=S`), and the pair is picked by
  the same hash, so the choice is a function of the names, pair counts and seed alone: the same on every machine,
  in every process and in any listing order (tests/test_pairs.py pins one selection).
- Validation as for every source: a file that is not such a list of valid grids, or that cannot be read (a
  dangling symlink, as a Hugging Face snapshot whose blob is missing; no permission), is skipped and reported (one
  problem per reason, naming the puzzle); the others load. A load that could not read a file is not cached.
- 100k puzzles x 30 pairs are ~3 GB of JSON: the files are read in chunks and scanned by a numba kernel
  (kernels/pairs_json.py) straight into packed arrays; no Task object is made. The result is cached in
  `DIR/.trm_cache/pairs-holdoutN/` (`pairs-holdoutN-seedS/` for a seed other than 0) as .npy files, loaded memory-mapped on the next run. The cache is keyed by the
  list of files with their sizes and modification times (and the hold-out and its seed): any added, removed or rewritten file
  rebuilds it. One process builds it (a file lock, `.trm_cache/build.lock`: the other ranks of a DDP job wait
  and then map it); it is written into a temporary folder named by host, pid and a random tag, renamed into
  place, `meta.json` last, and temporary folders left by killed writes are removed once 15 minutes old. A folder
  that cannot be written (a read-only dataset) is read without a cache. Delete `.trm_cache` at will.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels.pairs_json import parse_files
from pipeline.data.packed import PackedTasks, load_packed, save_packed
from pipeline.data.tasks import DataError, TaskProblem, pair_list_problems, read_json

log = logging.getLogger(__name__)

CACHE = ".trm_cache"
_CACHE_VERSION = 1
_CHUNK_BYTES = 64 << 20
STALE_S = 15 * 60  # a `.tmp-*` / `.old-*` cache folder untouched this long was left by a killed write
_HOLDOUT_KEY = b"trm-pairs-holdout"
_UNREADABLE = "cannot read: "  # the problem of a file that could not be read (never cached: it may be transient)


@dataclass
class Listing:
    names: list[str]
    paths: list[str]
    sizes: np.ndarray
    key: str
    """Hash of every file's relative path, size and mtime: what the cache is valid for."""
    unreadable: list[tuple[str, str]]
    """(name, why) of the entries that could not even be listed (a dangling symlink, a folder without access)."""


def _walk(folder: str, prefix: str, rows: list, unreadable: list) -> None:
    """(name, path, size, mtime) of every puzzle file below `folder` (os.scandir and strings: pathlib objects made
    listing 100k files take 13 s); an entry that cannot be listed goes to `unreadable` (Hugging Face snapshots are
    folders of symlinks: a missing blob is a dangling one)."""
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    _walk(e.path, f"{prefix}{e.name}/", rows, unreadable)
                elif e.name.endswith(".json"):
                    st = e.stat()
                    rows.append((prefix + e.name[:-len(".json")], e.path, st.st_size, st.st_mtime_ns))
            except OSError as err:
                name = prefix + (e.name[:-len(".json")] if e.name.endswith(".json") else e.name + "/")
                unreadable.append((name, _UNREADABLE + (err.strerror or str(err))))


def list_puzzles(folder: Path, holdout: int, seed: int = 0) -> Listing:
    rows: list = []
    unreadable: list = []
    _walk(str(folder), "", rows, unreadable)
    if not rows:
        raise DataError(f"pairs:{folder}: no .json puzzle files found")
    rows.sort()
    h = hashlib.sha256(f"pairs v{_CACHE_VERSION} holdout {holdout} seed {seed}\n".encode())
    h.update("".join(f"{name}\0{size}\0{mtime}\n" for name, _, size, mtime in rows).encode())
    h.update("".join(f"{name}\0unreadable\n" for name, _ in sorted(unreadable)).encode())  # no cache matches then
    return Listing([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows], np.int64), h.hexdigest(),
                   sorted(unreadable))


def holdout_choice(names: list[str], n_pairs: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(puzzle indices in order, the pair each gives up) of the `#holdout=N,seed=S` rule (module docstring)."""
    key = _HOLDOUT_KEY + (b"" if seed == 0 else f"-{seed}".encode())  # seed 0: the selection before seeds existed
    h = np.array([int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8, key=key).digest(), "little")
                  for s in names], np.uint64)
    eligible = np.flatnonzero(n_pairs >= 2)
    if n > len(eligible):
        log.warning("pairs: #holdout=%d but only %d puzzles have two pairs or more; holding out one pair of each",
                    n, len(eligible))
    chosen = np.sort(eligible[np.argsort(h[eligible], kind="stable")[:n]])
    return chosen, ((h[chosen] >> np.uint64(32)) % n_pairs[chosen].astype(np.uint64)).astype(np.int64)


def _slow_file(path: str, name: str, source: str, arrays, pos) -> tuple[int, list[TaskProblem]]:
    """A file the scanner rejected: json + validation; a valid one (unusual spacing of keys, say) is written at pos."""
    try:
        obj = read_json(path)
    except DataError as e:
        return -1, [TaskProblem(name, str(e), source)]
    except OSError as e:
        return -1, [TaskProblem(name, _UNREADABLE + (e.strerror or str(e)), source)]
    problems = pair_list_problems(obj)
    if problems:
        return -1, [TaskProblem(name, p, source) for p in problems]
    cells, starts, heights, widths = arrays
    for pair in obj:
        for key in ("input", "output"):
            g = np.asarray(pair[key], np.uint8)
            starts[pos[1]], heights[pos[1]], widths[pos[1]] = pos[0], g.shape[0], g.shape[1]
            cells[pos[0]:pos[0] + g.size] = g.ravel()
            pos[0] += g.size
            pos[1] += 1
    return len(obj), []


def _parse(listing: Listing, source: str):
    """Every file's grids packed: (cells, starts, heights, widths, pairs per file (-1 invalid), first grid, problems,
    how many files could not be read)."""
    total = int(listing.sizes.sum())
    # Upper bounds (a cell takes >= 2 bytes of JSON, a grid >= 13); untouched pages of np.empty cost no memory.
    arrays = (np.empty(total // 2 + 1, np.uint8), np.empty(total // 13 + 2, np.int64),
              np.empty(total // 13 + 2, np.int64), np.empty(total // 13 + 2, np.int64))
    pos = np.zeros(2, np.int64)
    n = len(listing.paths)
    pairs, first = np.full(n, -1, np.int64), np.zeros(n, np.int64)
    problems = [TaskProblem(name, why, source) for name, why in listing.unreadable]
    a = 0
    while a < n:
        b = a + max(1, int(np.searchsorted(np.cumsum(listing.sizes[a:]), _CHUNK_BYTES)))
        data, failed = [], {}
        for f in range(a, b):
            try:
                with open(listing.paths[f], "rb") as fh:
                    data.append(fh.read())
            except OSError as e:  # gone since the listing, no permission, an I/O error: this puzzle only
                data.append(b"")
                failed[f] = _UNREADABLE + (e.strerror or str(e))
        bounds = np.concatenate([[0], np.cumsum([len(d) for d in data])]).astype(np.int64)
        buf = np.frombuffer(b"".join(data), np.uint8)
        pairs[a:b], first[a:b] = parse_files(buf, bounds, *arrays, pos)
        for f in np.flatnonzero(pairs[a:b] < 0) + a:
            if f in failed:
                problems.append(TaskProblem(listing.names[f], failed[f], source))
                continue
            first[f] = pos[1]
            pairs[f], bad = _slow_file(listing.paths[f], listing.names[f], source, arrays, pos)
            problems += bad
        a = b
    cells, starts, heights, widths = arrays
    unread = sum(p.reason.startswith(_UNREADABLE) for p in problems)
    return cells[:pos[0]], starts[:pos[1]], heights[:pos[1]], widths[:pos[1]], pairs, first, problems, unread


def _pack(listing: Listing, holdout: int, source: str, seed: int = 0) -> tuple[PackedTasks, list[TaskProblem], int]:
    """The packed puzzles, the problems of the files skipped, and how many of those could not be read."""
    cells, starts, heights, widths, pairs, first, problems, unread = _parse(listing, source)
    ok = np.flatnonzero(pairs > 0)
    n_pairs, first = pairs[ok], first[ok]
    names = [listing.names[i] for i in ok]
    offsets = np.concatenate([[0], np.cumsum(n_pairs)])
    task_of_pair = np.repeat(np.arange(len(ok)), n_pairs)
    pair_in = first[task_of_pair] + 2 * (np.arange(offsets[-1]) - offsets[task_of_pair])
    held_task, held_pair = holdout_choice(names, n_pairs, holdout, seed) if holdout else (np.zeros(0, np.int64),) * 2
    held = np.zeros(len(pair_in), bool)
    held[offsets[held_task] + held_pair] = True
    counts = n_pairs - np.bincount(held_task, minlength=len(ok))
    test_in = pair_in[offsets[held_task] + held_pair]
    i64 = lambda x: np.ascontiguousarray(x, np.int64)  # noqa: E731
    packed = PackedTasks(task_ids=names, cells=cells, starts=starts, heights=heights, widths=widths,
                         ex_in=i64(pair_in[~held]), ex_out=i64(pair_in[~held] + 1),
                         task_ex_start=i64(np.concatenate([[0], np.cumsum(counts)[:-1]])), task_ex_count=i64(counts),
                         test_task=i64(held_task), test_in=i64(test_in), test_out=i64(test_in + 1),
                         test_index=np.zeros(len(held_task), np.int64), test_trainable=np.zeros(len(held_task), bool))
    return packed, problems, unread


def _cache_dir(folder: Path, holdout: int, seed: int = 0) -> Path:
    return folder / CACHE / (f"pairs-holdout{holdout}" + (f"-seed{seed}" if seed else ""))


def _read_cache(folder: Path, listing: Listing, holdout: int, seed: int = 0) -> tuple[PackedTasks, list[TaskProblem]] | None:
    cache = _cache_dir(folder, holdout, seed)
    try:
        meta = json.loads((cache / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != listing.key:
        return None
    try:  # a cache damaged by hand is rebuilt, not trusted
        problems = [TaskProblem(*p) for p in json.loads((cache / "problems.json").read_text())]
        return load_packed(cache), problems
    except (OSError, ValueError, TypeError):
        return None


@contextlib.contextmanager
def _build_lock(folder: Path):
    """Held while this process parses the files and writes the cache: the other ranks of a job (and other jobs)
    loading the same folder wait here, then read the cache instead of each parsing ~3 GB and racing to write it.
    No lock where the cache folder cannot be written (a read-only dataset: every process parses) or the file
    system has no locks (then the unique temporary names below still keep concurrent writers apart)."""
    try:
        (folder / CACHE).mkdir(exist_ok=True)
        fd = os.open(folder / CACHE / "build.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            log.warning("pairs:%s: no file lock here (%s); each process builds its own cache copy", folder, e)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sweep_stale(parent: Path) -> None:
    """Remove the temporary folders of writes that were killed (a 100k-puzzle cache is >1 GB): `.tmp-*` and
    `.old-*` untouched for STALE_S. A live writer touches its folder every few seconds (one .npy at a time)."""
    now = time.time()
    for p in list(parent.glob(".tmp-*")) + list(parent.glob(".old-*")):
        try:
            newest = max([p.stat().st_mtime] + [f.stat().st_mtime for f in p.iterdir()])
        except OSError:
            continue  # being removed by its owner
        if newest < now - STALE_S:
            log.info("pairs: removing %s, left by a killed cache write", p)
            shutil.rmtree(p, ignore_errors=True)


def _write_cache(folder: Path, listing: Listing, holdout: int, packed: PackedTasks, problems: list[TaskProblem],
                 seed: int = 0) -> None:
    final = _cache_dir(folder, holdout, seed)
    # unique across the nodes of a job on a shared file system (pids repeat from node to node)
    tag = f"{final.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = final.with_name(f".tmp-{tag}"), final.with_name(f".old-{tag}")
    try:
        _sweep_stale(final.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        save_packed(packed, tmp)
        (tmp / "problems.json").write_text(json.dumps([[p.task_id, p.reason, p.source] for p in problems]))
        (tmp / "meta.json").write_text(json.dumps({"key": listing.key, "puzzles": packed.num_tasks}))
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except OSError as e:  # a read-only dataset folder: fine, just slower next time
        log.warning("pairs:%s: cannot write the cache in %s (%s); the next load parses the files again", folder,
                    final.parent, e)
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(old, ignore_errors=True)


def load_pairs(folder: str | Path, holdout: int = 0, source: str = "", seed: int = 0) -> tuple[PackedTasks,
                                                                                             list[TaskProblem]]:
    """The puzzles of a pair-list folder, packed, and the problems of the files that were skipped."""
    folder = Path(folder)
    source = source or f"pairs:{folder}"
    if not folder.is_dir():
        raise DataError(f"{source}: {folder} is not a folder")
    listing = list_puzzles(folder, holdout, seed)
    cached = _read_cache(folder, listing, holdout, seed)
    if cached is None:
        with _build_lock(folder):
            cached = _read_cache(folder, listing, holdout, seed)  # written by another rank while this one waited
            if cached is None:
                packed, problems, unread = _pack(listing, holdout, source, seed)
                if unread:  # a transient read error must not be frozen into the cache
                    log.warning("%s: %d files could not be read; not caching this load", source, unread)
                else:
                    _write_cache(folder, listing, holdout, packed, problems, seed)
    if cached is not None:
        log.info("%s: %d puzzles from the cache", source, cached[0].num_tasks)
        return cached
    log.info("%s: %d puzzles, %d pairs (%d held out), %d files skipped", source, packed.num_tasks,
             len(packed.ex_in) + len(packed.test_in), len(packed.test_in), len(listing.names) - packed.num_tasks)
    return packed, problems
