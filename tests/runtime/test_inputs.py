"""Input sources without Ray: JSON Lines (plain, gz, zst), Parquet shards, saved Hugging Face datasets;
positions across shards; columnar values made JSON; clear errors for inputs that cannot be read."""

from __future__ import annotations

import datetime
import decimal
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from matrixlang.runtime.data.inputs import InputError, open_input
from matrixlang.runtime.semantics.rows import BadRow, RowValidator

ROWS = [{"id": f"r{i}", "n": i} for i in range(25)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    elif path.suffix == ".zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


def write_shards(folder: Path, rows: list[dict], per: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(0, len(rows), per):
        pq.write_table(pa.Table.from_pylist(rows[k:k + per]), folder / f"part-{k // per:04d}.parquet")
    return folder


def as_rows(src) -> list[tuple[int, dict]]:
    return [(p, json.loads(r) if isinstance(r, bytes) else r) for p, r in src.rows()]


@pytest.mark.parametrize("name", ["in.jsonl", "in.jsonl.gz", "in.jsonl.zst"])
def test_jsonl_plain_and_compressed(tmp_path, name):
    src = open_input(str(write_jsonl(tmp_path / name, ROWS)))
    assert src.kind == "jsonl" and src.count() == 25 and src.count(7) == 7
    assert as_rows(src) == list(enumerate(ROWS))


def test_parquet_file_folder_and_glob_number_rows_across_shards(tmp_path):
    folder = write_shards(tmp_path / "shards", ROWS, 10)          # 10 + 10 + 5 rows
    for spec in (str(folder), str(folder / "*.parquet"), str(folder / "part-0001.parquet")):
        src = open_input(spec)
        assert src.kind == "parquet"
    src = open_input(str(folder))
    assert src.count() == 25 and len(src.paths) == 3
    assert as_rows(src) == list(enumerate(ROWS))                  # positions run over the shards in order
    assert [p for p, _ in src.rows(limit=12)] == list(range(12))
    assert as_rows(open_input(str(folder / "part-0001.parquet"))) == list(enumerate(ROWS[10:20]))


def test_saved_hf_dataset_and_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5, 8))}).save_to_disk(str(tmp_path / "two"))
    one = open_input(str(tmp_path / "one"))                       # a saved folder is found by its markers
    assert one.kind == "hf" and one.count() == 25 and as_rows(one) == list(enumerate(ROWS))
    test = open_input(f"hf:{tmp_path / 'two'}:test")
    assert as_rows(test) == list(enumerate(ROWS[5:8])) and test.count() == 3
    with pytest.raises(InputError, match="splits test, train: name one"):
        open_input(f"hf:{tmp_path / 'two'}")
    with pytest.raises(InputError, match="no split 'dev'"):
        open_input(f"hf:{tmp_path / 'two'}:dev")


def test_inputs_that_cannot_be_read_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_input(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no \\*.parquet shards"):
        open_input(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no file matches"):
        open_input(str(tmp_path / "*.parquet"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="bad.parquet.*cannot be opened"):
        open_input(str(tmp_path / "bad.parquet"))
    with pytest.raises(InputError, match="no such folder"):
        open_input(f"hf:{tmp_path / 'nope'}")
    broken = tmp_path / "broken.jsonl.gz"                          # a gzip stream cut short
    data = gzip.compress("".join(json.dumps({"id": f"a{i}"}) + "\n" for i in range(5000)).encode())
    broken.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="cannot be read after"):
        list(open_input(str(broken)).rows())


def test_columnar_values_become_json_and_bad_values_fail_the_row():
    v = RowValidator({"properties": {"id": {"type": "string"}, "x": {"type": "number"}, "j": {}},
                      "required": ["id", "x"], "x-id-field": "id"})
    row = v.parse({"id": "a", "x": decimal.Decimal("2.5"), "j": {"d": datetime.date(2024, 1, 2),
                                                                  "b": b"\x00\x01", "m": [("k", 1)]}})
    assert row == {"id": "a", "x": 2.5, "j": {"d": "2024-01-02", "b": "AAE=", "m": [["k", 1]]}}
    json.dumps(row)
    with pytest.raises(BadRow, match="field 'x': nan is not a JSON number") as e:
        v.parse({"id": "a", "x": float("nan"), "j": None})
    assert e.value.row == {"id": "a", "x": None, "j": None}          # the rest of the row is kept
