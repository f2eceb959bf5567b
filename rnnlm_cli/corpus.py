"""The token cache: a corpus (one text file, or several read as one) is encoded once into a
file of ids that later runs map into memory and use at once.

Files in the cache folder (`data.cache_dir`; by default $RNNLM_CACHE_DIR, else
$XDG_CACHE_HOME/rnnlm, else ~/.cache/rnnlm), named by a hash of the source paths and the
tokenizer (CORPUS) and of the vocabulary (VOCAB):

- `CORPUS.counts`: the word counts of the corpus (what the vocabulary is built from), a JSON
  header line then one `word count` line per distinct word;
- `CORPUS.VOCAB.ids`: the token stream as ids, uint16 when V <= 65,535 else uint32, after a
  JSON header (format version, dtype, vocabulary hash and size, tokenizer, every source's path,
  size and mtime, token, word, line and OOV counts), and followed by the count of every id
  (uint64, V of them; the output layers and the unigram baseline need them, and reading them
  here saves a pass over the ids).

A file whose header does not match the sources (size or mtime changed), the vocabulary or the
tokenizer, or whose size is not what its header says, is rebuilt, never used. Every file is
written to a temporary name and renamed (files.py's rule), so a crash or a full disk leaves
no half-written cache; a folder that cannot be written is a UserError naming data.cache_dir.

The first encoding of a training corpus is one pass over the text: words get provisional ids
in order of first appearance while they are counted, the vocabulary is built from the counts,
and the provisional ids are then mapped to the vocabulary's in bounded chunks (numpy).
Memory is bounded by the number of distinct words, never by the corpus size.
"""

import glob
import hashlib
import json
import mmap
import os
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import data, files
from .errors import UserError, WriteError, open_failed
from .vocab import build_vocab, vocab_from_list

FORMAT_VERSION = 1
MAGIC = b"rnnlm token ids\n"
_CHUNK = 1 << 22  # ids remapped or written at a time


class Encoded(NamedTuple):
    """A corpus as a training run uses it: the mapped ids (S,), their stats (data.encode_file's
    keys) and the count of every id (V,) int64."""
    ids: np.ndarray
    stats: dict
    id_counts: np.ndarray


def cache_folder(configured=None):
    """The folder of the token cache: data.cache_dir, or the default described above."""
    if configured:
        return Path(configured)
    if os.environ.get("RNNLM_CACHE_DIR"):
        return Path(os.environ["RNNLM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rnnlm"


def files_of(spec, key="data.train"):
    """The files of a data key: a path, a glob pattern or a list of them, in order (a pattern's
    matches sorted, folders among them left out; `**` matches any depth of subfolders). A
    pattern matching no file, or a folder named as a file, is a UserError naming the key."""
    out = []
    for item in [spec] if isinstance(spec, str) else list(spec):
        if glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if not os.path.isdir(p))
            if not matches:
                raise UserError(f"{key}: {item}: the pattern matches no file")
            out.extend(matches)
        elif os.path.isdir(item):
            raise UserError(_folder_error(key, item))
        else:
            out.append(item)
    return out


def _folder_error(key, folder):
    """The message for a folder given as a data file: the glob pattern that names its files."""
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    txt = sum(1 for n in names if n.endswith(".txt") and os.path.isfile(os.path.join(folder, n)))
    pattern = os.path.join(folder, "*.txt" if txt else "*")
    found = f"{txt} .txt files there" if txt else f"{len(names)} entries there"
    return (f"{key}: {folder} is a folder, not a text file; name its files with a glob pattern: "
            f"--set '{key}={pattern}' ({found}; '{os.path.join(folder, '**', '*.txt')}' takes the subfolders' "
            f"too, read in sorted order as one text), or a list of files")


def describe(paths):
    """How messages name a corpus: its file, or its first file and how many more."""
    return paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more files"


def sources(paths):
    """[{path, size, mtime_ns}] of the files (what a cache header must match)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except (OSError, ValueError) as e:
            raise open_failed(path, e, "a text file") from None
        if not os.path.isfile(path):
            raise UserError(f"{path}: not a regular file (expected a text file)")
        out.append({"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def _digest(obj, n=16):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()[:n]


def vocab_hash(vocab):
    """sha256 of the vocabulary's tokens, one a line (vocab.txt's text)."""
    return hashlib.sha256("".join(t + "\n" for t in vocab.tokens).encode("utf-8")).hexdigest()


def ids_dtype(vocab_size):
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


# --------------------------------------------------------------------------------------------
# Entry points


def train_corpus(paths, tokenizer, folder, min_count=1, max_size=None, word_list=None):
    """-> (vocab built from the corpus's counts, or of the words of `word_list` (vocab.file)
    ordered by them, Encoded): from the cache when it matches, else counted and encoded in one
    pass over the text and cached (the ids file is named by the vocabulary's hash: another list
    is another file)."""
    srcs = sources(paths)
    base = _corpus_name(srcs, tokenizer)
    counted = _read_counts(Path(folder) / f"{base}.counts", srcs, tokenizer)
    if counted is not None:
        vocab = _vocabulary(counted, min_count, max_size, word_list)
        return vocab, encoded(paths, vocab, tokenizer, folder, srcs=srcs)
    _prepare(folder)
    return _count_and_encode(paths, srcs, tokenizer, Path(folder), base, min_count, max_size, word_list)


def _vocabulary(counted, min_count, max_size, word_list):
    return vocab_from_list(word_list, counted) if word_list is not None else build_vocab(counted, min_count, max_size)


def encoded(paths, vocab, tokenizer, folder, allow_empty=False, srcs=None):
    """The corpus `paths` under `vocab` -> Encoded, from the cache when it matches, else encoded
    and cached. A corpus with no word is a UserError unless allow_empty."""
    srcs = srcs or sources(paths)
    path = Path(folder) / f"{_corpus_name(srcs, tokenizer)}.{vocab_hash(vocab)[:16]}.ids"
    expect = _expected_header(srcs, tokenizer, vocab)
    found = open_ids(path, expect)
    if found is None:
        _prepare(folder)
        stats = {"words": 0, "lines": 0, "literal_unk": 0}
        chunks = data.encode_blocks(paths, tokenizer, data.word_ids(vocab, stats), len(vocab), vocab.eos_id, stats)
        _write_ids(path, expect, chunks, len(vocab), stats, vocab.unk_id)
        found = open_ids(path, expect)
    ids, header, counts = found
    if header["words"] == 0 and not allow_empty:
        raise UserError(f"{describe(paths)}: no tokens (the file is empty or only whitespace)")
    return Encoded(ids, _stats(paths, header), counts)


def _stats(paths, header):
    targets = header["tokens"] - 1
    return {"file": describe(paths), "words": header["words"], "lines": header["lines"], "targets": targets,
            "oov": header["oov"], "oov_rate": header["oov"] / targets if targets else 0.0}


# --------------------------------------------------------------------------------------------
# The first encoding of a training corpus: count and encode in one pass


class _FirstSeen(dict):
    """word -> provisional id, in order of first appearance (a missing word gets the next id)."""

    def __missing__(self, word):
        value = self[word] = len(self)
        return value


def _count_and_encode(paths, srcs, tokenizer, folder, base, min_count, max_size, word_list=None):
    """One pass over the text, cut into parts encoded side by side (one per core, see _parts):
    provisional ids to temporary files while counting; then the vocabulary, the counts cache and
    the ids cache (the provisional ids mapped in chunks)."""
    prov_path = folder / f"{base}.provisional"
    parts = _parts(paths, srcs, tokenizer)
    tmps = [prov_path.with_name(f".{prov_path.name}-{k}.{os.getpid()}{files.TMP_SUFFIX}") for k in range(len(parts))]
    try:
        seen, tables, counts, stats = _merge(_run_parts(parts, tokenizer, tmps))
        words = list(seen)
        counted = Counter(dict(zip(words[1:], counts[1:].tolist())))
        _write_counts(folder / f"{base}.counts", srcs, tokenizer, counted)
        vocab = _vocabulary(counted, min_count, max_size, word_list)
        table = np.array([vocab.eos_id] + [vocab.index.get(w, vocab.unk_id) for w in words[1:]], dtype=np.int64)
        stats["literal_unk"] = counted.get(vocab.tokens[vocab.unk_id], 0)
        path = folder / f"{base}.{vocab_hash(vocab)[:16]}.ids"
        expect = _expected_header(srcs, tokenizer, vocab)
        chunks = (c for tmp, t in zip(tmps, tables) for c in _remapped(tmp, table[t]))
        _write_ids(path, expect, chunks, len(vocab), stats, vocab.unk_id)
    except OSError as e:
        raise _cache_write_error(prov_path, e) from None
    finally:
        for tmp in tmps:
            _unlink(tmp)
    ids, header, id_counts = open_ids(path, expect)
    if header["words"] == 0:
        raise UserError(f"{describe(paths)}: no tokens (the file is empty or only whitespace)")
    return vocab, Encoded(ids, _stats(paths, header), id_counts)


PART_BYTES = 1 << 25  # text below 32 MB is encoded in one part (a process costs more than it saves)


def _parts(paths, srcs, tokenizer, part_bytes=None):
    """The corpus cut into one part per core (whitespace tokenizer, 32 MB of text or more, not
    under MPI, whose processes should not start others), each a list of (path, start, stop)
    byte ranges cut just after a line end; else one part: the whole files. A compressed file
    cannot be read from an offset: it is never cut (a cut inside it moves to its end) and comes
    whole, as its path, in the part it starts."""
    total = sum(s["size"] for s in srcs)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    from .distributed import launched
    n = min(cores, max(1, total // (part_bytes or PART_BYTES)))
    if tokenizer != "whitespace" or launched()[0] > 1 or n == 1:
        return [list(paths)]
    whole = [data.is_compressed(p) for p in paths]
    bounds = np.cumsum([0] + [s["size"] for s in srcs]).tolist()
    cuts = sorted({0, total, *(_line_start_after(paths, srcs, whole, total * k // n) for k in range(1, n))})
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        parts.append([p if w else (p, max(a, lo) - lo, min(b, hi) - lo)
                      for p, w, lo, hi in zip(paths, whole, bounds[:-1], bounds[1:]) if max(a, lo) < min(b, hi)])
    return [p for p in parts if p]


def _line_start_after(paths, srcs, whole, offset):
    """The corpus offset just after the first LF at or after `offset` (or the end of its file;
    the end of a compressed file whatever the offset in it)."""
    lo = 0
    for path, src, compressed in zip(paths, srcs, whole):
        if offset < lo + src["size"] and compressed:
            return lo + src["size"]
        if offset < lo + src["size"]:
            with open(path, "rb") as f:
                pos = offset - lo
                f.seek(pos)
                while True:
                    chunk = f.read(1 << 16)
                    if not chunk:
                        return lo + src["size"]
                    at = chunk.find(b"\n")
                    if at >= 0:
                        return lo + pos + at + 1
                    pos += len(chunk)
        lo += src["size"]
    return lo


def _run_parts(parts, tokenizer, tmps):
    """_encode_part of each part, in worker processes when there are several."""
    if len(parts) == 1:
        return [_encode_part(parts[0], tokenizer, str(tmps[0]), True)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(len(parts), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_encode_part, part, tokenizer, str(tmp), k == 0)
                   for k, (part, tmp) in enumerate(zip(parts, tmps))]
        return [f.result() for f in futures]


def _encode_part(part, tokenizer, tmp, lead):
    """One part's provisional ids (in order of first appearance in the part; 0 is a line end)
    into the file `tmp` -> (its words in that order, their counts, {"words", "lines"})."""
    seen = _FirstSeen({data.SENTINEL: 0})
    stats = {"words": 0, "lines": 0}
    counts = np.zeros(0, dtype=np.int64)
    with open(tmp, "wb") as f:
        for ids in data.encode_blocks(part, tokenizer, lambda block: list(map(seen.__getitem__, block)), 0, 0,
                                      stats, lead=lead):
            counts = _add_counts(counts, ids, len(seen))
            ids.astype(np.uint32).tofile(f)
    return list(seen), counts, stats


def _merge(results):
    """The parts' words in one order of first appearance -> (word -> id, each part's table from
    its ids to those, the counts, the summed stats)."""
    seen = _FirstSeen({data.SENTINEL: 0})
    tables, stats = [], {"words": 0, "lines": 0}
    for words, _, part_stats in results:
        tables.append(np.fromiter(map(seen.__getitem__, words), dtype=np.int64, count=len(words)))
        stats["words"] += part_stats["words"]
        stats["lines"] += part_stats["lines"]
    counts = np.zeros(len(seen), dtype=np.int64)
    for table, (_, part_counts, _) in zip(tables, results):
        counts[table[: len(part_counts)]] += part_counts  # a part's words are distinct: no repeated index
    return seen, tables, counts, stats


def _add_counts(counts, ids, size):
    new = np.bincount(ids, minlength=size)
    new[: len(counts)] += counts
    return new


def _remapped(tmp, table):
    """The provisional ids of file `tmp`, mapped through `table`, in chunks."""
    n = os.path.getsize(tmp) // 4
    with open(tmp, "rb") as f:
        for start in range(0, n, _CHUNK):
            chunk = np.fromfile(f, dtype=np.uint32, count=min(_CHUNK, n - start))
            yield table[chunk]


# --------------------------------------------------------------------------------------------
# The files


def _corpus_name(srcs, tokenizer):
    return "corpus-" + _digest({"paths": [s["path"] for s in srcs], "tokenizer": tokenizer})


def _expected_header(srcs, tokenizer, vocab):
    return {"format_version": FORMAT_VERSION, "dtype": ids_dtype(len(vocab)).name, "vocab_size": len(vocab),
            "vocab_hash": vocab_hash(vocab), "tokenizer": tokenizer, "sources": srcs}


def _prepare(folder):
    """Create the cache folder; a folder that cannot be made is a UserError naming the key."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise _cache_write_error(Path(folder), e) from None
    _remove_stale(Path(folder))


def _remove_stale(folder):
    """Temporary files of runs that were killed while writing the cache (their pid is gone)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not files.is_temp_file(name):
            continue
        pid = int(name.rsplit(".", 2)[-2])
        try:
            os.kill(pid, 0)
            continue  # still running (or another user's): leave it
        except ProcessLookupError:
            _unlink(Path(folder) / name)
        except OSError:
            continue


def _temp_name(path):
    return path.with_name(f".{path.name}.{os.getpid()}{files.TMP_SUFFIX}")


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _cache_write_error(path, e):
    reason = e.strerror or str(e)
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)):
        return UserError(f"data.cache_dir: cannot write the token cache in {Path(path).parent} ({reason}); "
                         f"set data.cache_dir (or RNNLM_CACHE_DIR) to a writable folder")
    return WriteError(f"{path}: could not write the token cache ({reason}); nothing was written (free some "
                      f"space, or set data.cache_dir to another disk)")


def _header_bytes(header):
    """MAGIC, the JSON header's length in 10 digits, a newline, the JSON, spaces up to a multiple
    of 64 bytes (the ids start aligned)."""
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    head = MAGIC + b"%010d\n" % len(text) + text
    return head + b" " * (-len(head) % 64)


def _write_ids(path, expect, chunks, vocab_size, stats, unk):
    """Write the ids file of `chunks` (int64 id arrays) atomically. The header goes first but is
    known only at the end: the space it can need at most is reserved, then filled in."""
    dtype = ids_dtype(vocab_size)
    probe = dict(expect, tokens=10 ** 19, words=10 ** 19, lines=10 ** 19, oov=10 ** 19, data_offset=10 ** 19,
                 counts_offset=10 ** 19)
    reserve = len(_header_bytes(probe))
    tmp = _temp_name(path)
    counts = np.zeros(vocab_size, dtype=np.int64)
    tokens = 0
    try:
        with open(tmp, "wb") as f:
            f.write(b"\0" * reserve)
            for ids in chunks:
                counts += np.bincount(ids, minlength=vocab_size)
                ids.astype(dtype).tofile(f)
                tokens += len(ids)
            f.write(b"\0" * (-f.tell() % 8))
            counts_offset = f.tell()
            counts.astype(np.uint64).tofile(f)
            header = dict(expect, tokens=tokens, words=stats["words"], lines=stats["lines"],
                          oov=int(counts[unk]) - stats["literal_unk"], data_offset=reserve,
                          counts_offset=counts_offset)
            f.seek(0)
            f.write(_header_bytes(header).ljust(reserve, b" "))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _cache_write_error(path, e) from None
    finally:
        _unlink(tmp)


def read_header(path):
    """The JSON header of an ids file, or None if it is missing or not one."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 11)
            if head[: len(MAGIC)] != MAGIC or not head[len(MAGIC):-1].isdigit():
                return None
            return json.loads(f.read(int(head[len(MAGIC):-1])))
    except (OSError, ValueError):
        return None


def open_ids(path, expect):
    """(ids mapped read-only (S,), header, id counts (V,) int64) of a cache file whose header
    matches `expect` and whose size its header's; None otherwise (to be rebuilt)."""
    header = read_header(path)
    if not isinstance(header, dict) or any(header.get(k) != v for k, v in expect.items()):
        return None
    try:
        dtype = np.dtype(header["dtype"])
        tokens, offset, counts_offset = header["tokens"], header["data_offset"], header["counts_offset"]
        V = header["vocab_size"]
        size = os.path.getsize(path)
        if size != counts_offset + 8 * V or counts_offset < offset + tokens * dtype.itemsize or tokens < 1:
            return None
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, KeyError, TypeError, ValueError):
        return None
    ids = np.frombuffer(mapped, dtype=dtype, count=tokens, offset=offset)
    counts = np.frombuffer(mapped, dtype=np.uint64, count=V, offset=counts_offset).astype(np.int64)
    return ids, header, counts


def _read_counts(path, srcs, tokenizer):
    """The Counter of a counts file whose header matches; None otherwise."""
    try:
        with open(path, "r", encoding="utf-8", newline="\n") as f:
            header = json.loads(f.readline())
            if header != {"format_version": FORMAT_VERSION, "tokenizer": tokenizer, "sources": srcs,
                          "distinct": header.get("distinct")}:
                return None
            counted = Counter()
            for line in f:
                word, count = line.rsplit(" ", 1)
                counted[word] = int(count)
    except (OSError, ValueError, AttributeError):
        return None
    return counted if len(counted) == header["distinct"] else None


def _write_counts(path, srcs, tokenizer, counted):
    header = {"format_version": FORMAT_VERSION, "tokenizer": tokenizer, "sources": srcs,
              "distinct": len(counted)}
    order = sorted(counted.items(), key=lambda wc: (-wc[1], wc[0]))  # the vocabulary's order: its sort is quick
    files.write_text(path, json.dumps(header) + "\n" + "".join(f"{w} {c}\n" for w, c in order))


def release(streams, upto):
    """Drop from this process's resident memory the pages holding the first `upto` positions of
    each stream of `streams` (N, L), a view of a mapped cache: clean file pages, read again from
    the file (or the page cache) if touched again. Training calls it as it walks an epoch, so
    its memory does not grow with the part of the corpus already read. A no-op for arrays that
    are not mapped.

    What stays resident is the block around each stream's position: the kernel maps a file's
    pages in blocks (up to 2 MB where the page cache holds large folios), so training holds at
    most about N × 2 MB of the ids, whatever the corpus size."""
    found = _mapping_of(streams)
    if found is None or upto <= 0:
        return
    mm, base = found
    page = mmap.PAGESIZE
    for row in range(streams.shape[0]):
        start = streams[row].ctypes.data - base
        first, last = -(-start // page) * page, (start + upto * streams.itemsize) // page * page
        if last > first:
            mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def _mapping_of(array):
    """(the mmap under `array`, its start address), or None."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    if not isinstance(base, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    return base, np.frombuffer(base, dtype=np.uint8, count=1).ctypes.data
