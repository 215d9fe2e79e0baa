"""Hugging Face inputs: save_to_disk folders read through datasets.load_from_disk, streamed
datasets through datasets.load_dataset(..., streaming=True), hub names offline."""

import json
from pathlib import Path

import pyarrow as pa
import pytest

from curamix.config import ConfigError, IngestConfig, InputSpec
from curamix.io import inputs
from curamix.io.inputs import expand_inputs, hf_stream_unit
from curamix.io.records import STATS_REASON, ReadUnit, read_unit_table
from tests.conftest import write_jsonl


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _rows(units: list[ReadUnit]) -> list[dict]:
    return pa.concat_tables([read_unit_table(u) for u in units]).to_pylist()


RECORDS = {
    "id": ["a", "b", None, "d", "e", "f", "g"],
    "text": ["first doc", "second doc", "no id here", None, "   ", "sixth doc", "last doc"],
    "label": [0, 1, 0, 1, 0, 1, 0],
}


def test_save_to_disk_dataset_is_read_through_load_from_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict(RECORDS).save_to_disk(str(tmp_path / "myset"), num_shards=3)
    ex = expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "myset"), format="hf")]))
    # One unit per Arrow file, each reading its rows of the split through datasets.
    assert [u.format for u in ex.units] == ["hf_disk"] * 3
    assert [u.hf["rows"] for u in ex.units] == [[0, 3], [3, 5], [5, 7]]
    assert {u.hf["folder"] for u in ex.units} == {str((tmp_path / "myset").resolve())}
    assert [Path(f).suffix for f in ex.files] == [".arrow"] * 3
    assert all(fp["size"] > 0 for fp in ex.fingerprints)
    rows = _rows(ex.units)
    docs = [r for r in rows if r["reason"] is None]
    assert [d["text"] for d in docs] == [
        "first doc",
        "second doc",
        "no id here",
        "sixth doc",
        "last doc",
    ]
    assert [d["id"] for d in docs[:2]] == ["a", "b"] and docs[2]["id"].startswith("myset/")
    assert {d["domain"] for d in docs} == {"myset"}
    assert json.loads(docs[1]["meta"]) == {"label": 1}
    # Records are numbered from 1 in each Arrow file, as for every other table format.
    first, second, third = (Path(f).name for f in ex.files)
    assert sorted(
        (Path(r["source"]).name, r["record"], r["reason"]) for r in rows if r["reason"]
    ) == [
        (first, 3, STATS_REASON),
        (second, 1, "missing_text"),
        (second, 2, STATS_REASON),
        (second, 2, "empty_text"),
        (third, 2, STATS_REASON),
    ]
    # A unit survives the JSON trip to a Spark task.
    assert ReadUnit.from_json(ex.units[1].to_json()) == ex.units[1]


def test_dataset_dict_splits_and_auto_format(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["one", "two", "three"]}),
            "test": datasets.Dataset.from_dict({"text": ["four"]}),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    path = str(tmp_path / "dd")

    def texts(**spec) -> list[str]:
        ex = expand_inputs(IngestConfig(inputs=[InputSpec(path=path, **spec)]))
        return [r["text"] for r in _rows(ex.units) if r["reason"] is None]

    assert texts(format="hf", hf_split="test") == ["four"]
    assert sorted(texts(format="hf")) == ["four", "one", "three", "two"]
    # format: auto recognizes the folder (its JSON metadata is not read as JSON Lines).
    assert sorted(texts()) == ["four", "one", "three", "two"]
    with pytest.raises(ConfigError, match=r"ingest\.inputs\.0\.hf_split: 'valid' not in"):
        texts(format="hf", hf_split="valid")


def test_not_a_save_to_disk_folder_and_bad_names(tmp_path):
    (tmp_path / "plain").mkdir()
    write_jsonl(tmp_path / "plain" / "a.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match="not a datasets save_to_disk folder"):
        expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "plain"), format="hf")]))
    with pytest.raises(ConfigError, match=r"ingest\.inputs\.0\.path: nothing exists at .*hub"):
        expand_inputs(IngestConfig(inputs=[InputSpec(path=str(tmp_path / "nope"), format="hf")]))
    # A data file given with format: hf is read as the file it is.
    ex = expand_inputs(
        IngestConfig(inputs=[InputSpec(path=str(tmp_path / "plain" / "a.jsonl"), format="hf")])
    )
    assert [u.format for u in ex.units] == ["jsonl"]


def test_streaming_reader_with_a_local_builder(tmp_path):
    rows = [
        {"id": "s1", "text": "streamed one", "topic": "x"},
        {"id": "s2", "text": "", "topic": "y"},
        {"id": "s3", "text": None, "topic": "z"},
        {"id": "s4", "text": "streamed four", "topic": "w"},
    ]
    f = write_jsonl(tmp_path / "stream.jsonl", rows)
    unit = hf_stream_unit(
        {"path": "json", "data_files": str(f), "split": "train"},
        source="hf://local/stream/train",
        domain="stream",
        root="hf://local/stream",
    )
    assert ReadUnit.from_json(unit.to_json()) == unit
    got = read_unit_table(unit).to_pylist()
    docs = [r for r in got if r["reason"] is None]
    assert [(d["id"], d["text"], d["record"]) for d in docs] == [
        ("s1", "streamed one", 1),
        ("s4", "streamed four", 4),
    ]
    assert json.loads(docs[0]["meta"]) == {"topic": "x"} and docs[0]["domain"] == "stream"
    assert [(r["record"], r["reason"]) for r in got if r["reason"]] == [
        (2, "empty_text"),
        (3, "missing_text"),
        (4, STATS_REASON),
    ]
    # Same documents as reading the file as JSON Lines.
    plain = expand_inputs(IngestConfig(inputs=[InputSpec(path=str(f), domain="stream")]))
    want = [(r["id"], r["text"]) for r in _rows(plain.units) if r["reason"] is None]
    assert [(d["id"], d["text"]) for d in docs] == want


def test_hub_name_offline_is_a_config_error():
    spec = InputSpec(path="someorg/someset", format="hf")
    with pytest.raises(ConfigError) as err:
        expand_inputs(IngestConfig(inputs=[spec]))
    msg = str(err.value)
    assert "ingest.inputs.0.path" in msg and "'someorg/someset'" in msg
    assert "offline" in msg and "save_to_disk" in msg


def test_hub_name_without_network_is_a_config_error(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

    def no_network(name):
        raise ConnectionError(f"Couldn't reach 'https://huggingface.co/{name}'")

    monkeypatch.setattr(inputs, "_hub_splits", no_network)
    with pytest.raises(
        ConfigError, match=r"ingest\.inputs\.0\.path: cannot reach .*'org/x'.*save_to_disk"
    ):
        expand_inputs(IngestConfig(inputs=[InputSpec(path="org/x", format="hf")]))


def test_hub_name_online_streams_each_split(monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(inputs, "_hub_splits", lambda name: ["train", "test"])
    monkeypatch.setattr(inputs, "_hub_revision", lambda name: "abc123")
    ex = expand_inputs(IngestConfig(inputs=[InputSpec(path="org/x", format="hf")]))
    assert [u.format for u in ex.units] == ["hf_stream"] * 2
    assert [u.hf["load_dataset"] for u in ex.units] == [
        {"path": "org/x", "split": "train", "revision": "abc123"},
        {"path": "org/x", "split": "test", "revision": "abc123"},
    ]
    assert ex.files == ["hf://datasets/org/x/train", "hf://datasets/org/x/test"]
    assert {d for u in ex.units for d in u.domains} == {"x"}
    assert [fp["revision"] for fp in ex.fingerprints] == ["abc123", "abc123"]
    one = expand_inputs(
        IngestConfig(inputs=[InputSpec(path="org/x", format="hf", hf_split="test")])
    )
    assert [u.hf["load_dataset"]["split"] for u in one.units] == ["test"]


def test_import_curamix_does_not_import_datasets():
    import subprocess
    import sys

    code = "import curamix, curamix.io.inputs, curamix.io.records, sys; print('datasets' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
