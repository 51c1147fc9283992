"""Input sources of ``mxc run --input``: JSON Lines (plain, ``.gz``, ``.zst``), Parquet (a file, a folder
or a glob of shards) and Hugging Face datasets saved on disk (``datasets.save_to_disk``).

Every source streams ``(position, raw)`` pairs: ``raw`` is a line's bytes (JSON Lines) or a dict (a
Parquet or dataset row); positions run 0, 1, ... over the whole input, shards in sorted name order, so
a row's position is the same on every run (``--resume`` knows rows without an id by it). Nothing is
read ahead beyond one record batch, so memory does not grow with the input. Each row is parsed and
checked by the engine on its own: a bad row fails alone. An input that cannot be opened is an
:class:`InputError` before the run starts; one that breaks mid-read (a corrupt shard) raises it from
the iterator, and the run stops there (``--resume`` continues).
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BATCH_ROWS = 1024          # rows per record batch read from Parquet and Arrow
HF_PREFIX = "hf:"
HF_MARKERS = ("state.json", "dataset_dict.json")   # what datasets.save_to_disk writes


class InputError(ValueError):
    """The input cannot be opened or read; the message says which file and why."""


Row = tuple[int, Any]


@dataclass(slots=True)
class Source:
    """One resolved input: ``kind`` is ``jsonl``, ``parquet`` or ``hf``; ``paths`` its files, absolute
    (a dataset's folder for ``hf``; driver shards read them in actors of their own); ``split`` the
    dataset split."""

    spec: str
    kind: str
    paths: list[str]
    split: str | None = None

    def rows(self, limit: int | None = None) -> Iterator[Row]:
        """``(position, raw)`` of every input row, streamed, at most ``limit``."""
        it = {"jsonl": self._jsonl, "parquet": self._parquet, "hf": self._hf}[self.kind]()
        for pos, raw in enumerate(it):
            if limit is not None and pos >= limit:
                break
            yield pos, raw

    def count(self, limit: int | None = None) -> int | None:
        """Rows in the input (None for standard input): Parquet and datasets from their metadata."""
        if self.paths == ["-"]:
            return None
        if self.kind == "parquet":
            n = sum(_parquet_file(p).metadata.num_rows for p in self.paths)
        elif self.kind == "hf":
            n = _hf_dataset(self.paths[0], self.split).num_rows
        else:
            n = sum(1 for _ in self._jsonl(stop=limit))
        return n if limit is None else min(n, limit)

    # -- readers -------------------------------------------------------------------------------------
    def _jsonl(self, stop: int | None = None) -> Iterator[bytes]:
        """Non-blank lines as bytes, split on ``\\n`` alone (JSON Lines: a bare CR is whitespace)."""
        path = self.paths[0]
        n = 0
        with _open_lines(path) as f:
            try:
                for line in f:
                    if not line.strip():
                        continue
                    if stop is not None and n >= stop:
                        return
                    n += 1
                    yield line
            except (OSError, EOFError, ValueError) as e:
                raise InputError(f"input {path!r} cannot be read after {n} rows: {e}") from None

    def _parquet(self) -> Iterator[dict]:
        import pyarrow as pa

        for path in self.paths:
            n = 0
            try:
                for batch in _parquet_file(path).iter_batches(batch_size=BATCH_ROWS):
                    rows = batch.to_pylist()
                    n += len(rows)
                    yield from rows
            except (OSError, pa.ArrowException) as e:
                raise InputError(f"Parquet shard {path!r} cannot be read after {n} rows: {e}") from None

    def _hf(self) -> Iterator[dict]:
        import pyarrow as pa

        ds = _hf_dataset(self.paths[0], self.split)
        n = 0
        try:
            for table in ds.with_format("arrow").iter(batch_size=BATCH_ROWS):
                rows = table.to_pylist()
                n += len(rows)
                yield from rows
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"dataset {self.spec!r} cannot be read after {n} rows: {e}") from None


def open_input(spec: str) -> Source:
    """Resolve ``--input``: ``-`` (JSON Lines on standard input), ``hf:PATH[:SPLIT]``, a folder saved by
    ``datasets``, a folder of ``*.parquet`` shards, a glob, a ``.parquet`` file, or a JSON Lines file
    (``.gz`` and ``.zst`` are decompressed). InputError when it names nothing readable."""
    if spec == "-":
        return Source(spec, "jsonl", ["-"])
    if spec.startswith(HF_PREFIX):
        path, split = _hf_spec(spec[len(HF_PREFIX):])
        src = Source(spec, "hf", [os.path.abspath(path)], split)
        _hf_dataset(path, split)
        return src
    p = Path(spec)
    if p.is_dir():
        if any((p / m).is_file() for m in HF_MARKERS):
            _hf_dataset(spec, None)
            return Source(spec, "hf", [os.path.abspath(spec)])
        shards = sorted(str(x) for x in p.rglob("*.parquet") if x.is_file())
        if not shards:
            raise InputError(f"input {spec!r} is a folder with no *.parquet shards and no saved dataset")
        return _parquet_source(spec, shards)
    if glob.has_magic(spec):
        files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
        if not files:
            raise InputError(f"input {spec!r}: no file matches")
        if not all(f.endswith(".parquet") for f in files):
            raise InputError(f"input {spec!r}: a glob must name Parquet shards (*.parquet)")
        return _parquet_source(spec, files)
    if not p.is_file():
        raise InputError(f"input {spec!r}: no such file")
    if p.suffix == ".parquet":
        return _parquet_source(spec, [spec])
    _open_lines(spec).close()
    return Source(spec, "jsonl", [os.path.abspath(spec)])


def _parquet_source(spec: str, files: list[str]) -> Source:
    for f in files:
        _parquet_file(f)            # every footer readable before the run starts
    return Source(spec, "parquet", [os.path.abspath(f) for f in files])


def _parquet_file(path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"Parquet shard {path!r} cannot be opened: {e}") from None


def _hf_spec(rest: str) -> tuple[str, str | None]:
    """``PATH[:SPLIT]``: a split only when PATH itself is not a folder."""
    if not rest:
        raise InputError("--input hf: needs a path: hf:PATH[:SPLIT]")
    if Path(rest).is_dir() or ":" not in rest:
        return rest, None
    path, split = rest.rsplit(":", 1)
    return path, split or None


def _hf_dataset(path: str, split: str | None) -> Any:
    """The dataset saved at ``path`` (``split`` of a DatasetDict; its only split when there is one)."""
    if not Path(path).is_dir():
        raise InputError(f"dataset {path!r}: no such folder")
    try:
        import datasets
    except ImportError as e:
        raise InputError(f"reading a Hugging Face dataset needs the `datasets` package: {e}") from None
    try:
        ds = datasets.load_from_disk(path)
    except (OSError, ValueError, FileNotFoundError) as e:
        raise InputError(f"dataset {path!r} cannot be loaded: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = sorted(ds)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None:
            raise InputError(f"dataset {path!r} has splits {', '.join(splits)}: name one, hf:{path}:SPLIT")
        if split not in ds:
            raise InputError(f"dataset {path!r} has no split {split!r} (splits: {', '.join(splits)})")
        return ds[split]
    if split is not None:
        raise InputError(f"dataset {path!r} has no splits (asked for {split!r})")
    return ds


def _open_lines(path: str) -> Any:
    """A binary line iterator over a JSON Lines file, decompressing ``.gz`` and ``.zst``."""
    if path == "-":
        return _NoClose(sys.stdin.buffer)
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")
        if path.endswith(".zst"):
            try:
                import zstandard
            except ImportError as e:
                raise InputError(f"reading {path!r} needs the `zstandard` package: {e}") from None
            raw = open(path, "rb")  # noqa: SIM115 - closed with the reader
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
        return open(path, "rb")  # noqa: SIM115
    except OSError as e:
        raise InputError(f"input {path!r} cannot be opened: {e.strerror or e}") from None


class _NoClose:
    """Standard input as a context manager that leaves it open."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> Any:
        return self.f

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.f)

    def close(self) -> None:
        return None
