"""trtrun.data: data folder, text sets, tokenizers (local only), encoding, ids files."""

import json
import os

import numpy as np
import pytest

from trtrun import data
from trtrun.errors import InputError, TrtrunError

REAL = data.data_dir()
needs_real = pytest.mark.skipif(
    not (REAL / "rt_polarity.tsv").exists() or not (REAL / "minilm").exists(),
    reason=f"real data missing in {REAL}: run ../shared/data/get-data.sh .data",
)


@pytest.fixture
def fake_data(tmp_path, monkeypatch):
    (tmp_path / "rt_polarity.tsv").write_text("1\ta good film\n0\ta bad film\n\n1\tfine\n0\tdull , slow\n")
    (tmp_path / "imdb.tsv").write_text("1\tloved it\n0\thated it\n")
    (tmp_path / "wiki.txt").write_text("First paragraph.\n\nSecond paragraph.\nThird.\n")
    monkeypatch.setenv("TRTRUN_DATA", str(tmp_path))
    return tmp_path


def test_data_dir_follows_env(fake_data):
    assert data.data_dir() == fake_data


def test_load_texts_all_in_file_order(fake_data):
    assert data.load_texts("rt") == ["a good film", "a bad film", "fine", "dull , slow"]
    assert data.load_texts("imdb") == ["loved it", "hated it"]
    assert data.load_texts("wiki") == ["First paragraph.", "Second paragraph.", "Third."]


def test_load_texts_sample_is_seeded_and_distinct(fake_data):
    a = data.load_texts("rt", n=3, seed=1)
    assert a == data.load_texts("rt", n=3, seed=1)
    assert len(set(a)) == 3 and set(a) <= set(data.load_texts("rt"))
    # the four 3-of-4 samples from ten seeds are not all the same one
    assert len({tuple(data.load_texts("rt", n=3, seed=s)) for s in range(10)}) > 1


def test_load_texts_bad_arguments(fake_data):
    with pytest.raises(ValueError, match="unknown data set 'sst2'"):
        data.load_texts("sst2")
    with pytest.raises(ValueError, match="only 4"):
        data.load_texts("rt", n=5)


def test_rt_labeled(fake_data):
    texts, labels = data.load_rt_labeled()
    assert texts[1] == "a bad film"
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 1, 0]


def test_missing_file_names_file_and_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTRUN_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(TrtrunError) as ei:
        data.load_texts("wiki")
    msg = str(ei.value)
    assert "wiki.txt" in msg and "get-data.sh" in msg


def test_text_file_not_utf8_is_named(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(TrtrunError, match=r"latin1\.txt: not UTF-8 text"):
        data.load_text_file(p)


def test_malformed_tsv_line_is_named(tmp_path, monkeypatch):
    (tmp_path / "rt_polarity.tsv").write_text("1\tok\nno label here\n")
    monkeypatch.setenv("TRTRUN_DATA", str(tmp_path))
    with pytest.raises(TrtrunError, match=r"rt_polarity.tsv:2"):
        data.load_texts("rt")


@needs_real
def test_real_sets_have_expected_sizes():
    texts, labels = data.load_rt_labeled()
    assert len(texts) == 8530 and set(labels.tolist()) == {0, 1}
    assert abs(int(labels.sum()) - 4265) < 100  # the polarity corpus is balanced
    assert len(data.load_texts("imdb", n=5)) == 5
    assert all(len(p) > 0 for p in data.load_texts("wiki", n=20))


# ------------------------------------------------------------------------------------ tokenizers

@needs_real
def test_bert_tokenizer_known_ids_and_padding():
    tok = data.tokenizer_for(REAL / "minilm")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    enc = data.encode(tok, ["hello world", "a"], max_len=16)
    # bert-base-uncased WordPiece: [CLS]=101, hello=7592, world=2088, a=1037, [SEP]=102, [PAD]=0
    assert enc["input_ids"].tolist() == [[101, 7592, 2088, 102], [101, 1037, 102, 0]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert enc["token_type_ids"].tolist() == [[0] * 4] * 2
    assert all(v.dtype == np.int64 and v.flags.c_contiguous for v in enc.values())


@needs_real
def test_encode_truncates_to_max_len():
    tok = data.tokenizer_for(REAL / "minilm")
    enc = data.encode(tok, ["word " * 50, "short"], max_len=10)
    assert enc["input_ids"].shape == (2, 10)
    assert enc["input_ids"][0, -1] == 102  # truncation keeps [SEP] last


@needs_real
def test_gpt2_tokenizer_known_ids_and_empty_text():
    tok = data.tokenizer_for(REAL / "gpt2-tokenizer")
    enc = data.encode(tok, ["Hello world", "x y z"], max_len=8)
    # GPT-2 BPE: "Hello"=15496, " world"=995; padding uses <|endoftext|>=50256, masked
    assert enc["input_ids"][0, :2].tolist() == [15496, 995]
    assert enc["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert "token_type_ids" not in enc
    with pytest.raises(InputError, match="text 1"):
        data.encode(tok, ["fine", ""], max_len=8)


class _FakePlan:
    def __init__(self, vocab, source="/nonexistent/model.onnx"):
        self.header = {"model": {"vocab_size": vocab}, "source": {"path": source}}


@needs_real
def test_tokenizer_for_plan_by_vocab():
    assert data.tokenizer_for(_FakePlan(30522)).vocab_size == 30522
    assert data.tokenizer_for(_FakePlan(50257)).vocab_size == 50257


@needs_real
def test_tokenizer_for_plan_prefers_folder_beside_source():
    tok = data.tokenizer_for(_FakePlan(999, source=str(REAL / "gpt2-tokenizer" / "model.onnx")))
    assert tok.vocab_size == 50257


def test_tokenizer_for_unknown_vocab_or_folder():
    with pytest.raises(TrtrunError, match="--tokenizer"):
        data.tokenizer_for(_FakePlan(123))
    with pytest.raises(TrtrunError, match="neither"):
        data.tokenizer_for("/no/such/place")


def test_tokenizer_folder_without_tokenizer(tmp_path):
    with pytest.raises(TrtrunError, match="holds no tokenizer"):
        data.load_tokenizer(tmp_path)


# ------------------------------------------------------------------------------------ ids files

def test_load_ids_npy_npz_json(tmp_path):
    ids = np.array([[5, 6, 7], [8, 9, 10]], dtype=np.int32)
    np.save(tmp_path / "a.npy", ids)
    f = data.load_ids(tmp_path / "a.npy")
    assert f["input_ids"].dtype == np.int64 and f["input_ids"].tolist() == ids.tolist()
    assert f["attention_mask"].tolist() == [[1, 1, 1]] * 2

    np.savez(tmp_path / "b.npz", input_ids=ids, attention_mask=np.array([[1, 1, 0], [1, 1, 1]]))
    assert data.load_ids(tmp_path / "b.npz")["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]

    (tmp_path / "c.json").write_text(json.dumps([[1, 2, 3], [4]]))
    f = data.load_ids(tmp_path / "c.json")
    assert f["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert f["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]

    (tmp_path / "d.json").write_text(json.dumps({"input_ids": [3, 4]}))
    assert data.load_ids(tmp_path / "d.json")["input_ids"].shape == (1, 2)


@pytest.mark.parametrize("name, content, match", [
    ("f.npy", np.ones((2, 3), np.float32), "must be integers"),
    ("r.npy", np.ones((2, 3, 4), np.int64), r"\[batch, sequence\]"),
    ("x.json", {"attention_mask": [[1]]}, "no input_ids"),
    ("y.json", {"input_ids": [[1, 2]], "attention_mask": [[1, 1, 1]]}, "shape"),
    ("z.json", [[1, "a"]], "integers"),
    ("t.txt", "1 2 3", "expected .npy"),
    ("bad.json", "{not json", "cannot read"),
    ("bad.npy", b"\x93NUMPY garbage", "cannot read"),
    ("mixed.json", [[1, 2], [3], 5], r"row 2 is 5, not a list"),
])
def test_load_ids_rejects(tmp_path, name, content, match):
    p = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(p, content)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content)
    else:
        p.write_text(json.dumps(content))
    with pytest.raises(InputError, match=match):
        data.load_ids(p)


def test_load_ids_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        data.load_ids(tmp_path / "none.npy")
