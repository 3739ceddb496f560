"""TextExampleGen on every input layout (scan for the validation cases, the real executor
and Beam for the tf.Examples), and data/imdb's bundled data and aclImdb unpacking."""
import io
import json
import os
import tarfile

import pytest

from components.labelled_example_gen import IngestError
from components.text_example_gen import (EXISTING_SPLITS, SINGLE_SPLIT, Executor, TextExampleGen,
                                         TextLayout, detect_text_layout)
from data import imdb
from tests.support.helpers import SHARED_DATA, read_examples, run_example_gen


def _write(path, content, mode="w"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "w":
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(content)
    else:
        with open(path, "wb") as f:
            f.write(content)
    return str(path)


def _review_tree(root, splits=("train", "test"), counts=None):
    counts = counts or {"pos": 3, "neg": 2}
    for split in splits:
        for label, count in counts.items():
            for i in range(count):
                _write(os.path.join(root, split, label, f"{i}_7.txt"), f"{split} {label} review {i}<br />ok")
    return str(root)


def _scan(path, **options):
    return Executor().scan(str(path), options)


def _features(example):
    f = example.features.feature
    return (f["text"].bytes_list.value[0].decode("utf-8"), f["label"].int64_list.value[0],
            f["label_name"].bytes_list.value[0].decode("utf-8"))


# --- layout detection -------------------------------------------------------------------

def test_detect_single_file_folder_of_tables_and_review_folders(tmp_path):
    csv_file = _write(tmp_path / "a" / "reviews.csv", "text,label\nx,1\n")
    assert detect_text_layout(csv_file) == TextLayout(str(tmp_path / "a"), [(SINGLE_SPLIT, "reviews.csv")])
    assert detect_text_layout(str(tmp_path / "a")).splits == [(SINGLE_SPLIT, "*.csv")]
    _write(tmp_path / "b" / "x.tsv", "text\tlabel\n")
    assert detect_text_layout(str(tmp_path / "b")).splits == [(SINGLE_SPLIT, "*.tsv")]
    assert detect_text_layout(_review_tree(tmp_path / "c")).splits == list(EXISTING_SPLITS)
    folders = _review_tree(tmp_path / "d", splits=("",))
    _write(tmp_path / "d" / "README.txt", "not data")
    assert detect_text_layout(folders).splits == [(SINGLE_SPLIT, "*/*.txt")]


def _empty_dir(root):
    os.makedirs(root / "empty")
    return str(root / "empty")


def _mixed_tables(root):
    _write(root / "m" / "a.csv", "")
    _write(root / "m" / "b.tsv", "")
    return str(root / "m")


@pytest.mark.parametrize("setup, message", [
    (lambda root: str(root / "missing"), "does not exist"),
    (_empty_dir, "data directory is empty"),
    (lambda root: _write(root / "data.json", "{}"), "expected a .csv, .tsv or .txt table"),
    (_mixed_tables, "both .csv and .tsv"),
    (lambda root: os.path.dirname(_write(root / "n" / "x.json", "{}")), "no texts found"),
])
def test_detect_errors_name_the_path(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(IngestError, match=message) as e:
        detect_text_layout(path)
    assert path in str(e.value)


def test_explicit_input_pattern_is_hash_split_and_needs_a_folder(tmp_path):
    path = _write(tmp_path / "span-1" / "r.csv", "text,label\nx,a\ny,b\n")
    component = TextExampleGen(input_base=str(tmp_path), input_pattern="span-{SPAN}/*.csv", eval_percent=30)
    assert component.exec_properties["input_base"] == str(tmp_path)
    input_config = json.loads(component.exec_properties["input_config"])
    output_config = json.loads(component.exec_properties["output_config"])
    assert [s["pattern"] for s in input_config["splits"]] == ["span-{SPAN}/*.csv"]
    assert [s["hash_buckets"] for s in output_config["split_config"]["splits"]] == [70, 30]
    with pytest.raises(IngestError, match="--input-pattern needs a data folder, not a file"):
        TextExampleGen(input_base=path, input_pattern="*.csv")


# --- formats ----------------------------------------------------------------------------

def test_csv_with_multiline_quoted_field_keeps_line_numbers(tmp_path):
    path = _write(tmp_path / "r.csv", 'review,sentiment\n'
                                      '"Great film.<br /><br />Second ""para""\nthird line",positive\n'
                                      'Dull,negative\n'
                                      ',negative\n')
    with pytest.raises(IngestError, match=r"r\.csv line 5: empty text in column 'review'"):
        _scan(path)
    scan = _scan(path, skip_bad_rows=True)
    assert scan.records == [
        {"text": 'Great film.<br /><br />Second "para"\nthird line', "label_name": "positive"},
        {"text": "Dull", "label_name": "negative"}]
    assert scan.skipped == [(f"{path} line 5", "empty text in column 'review'")]


def test_tsv_and_configured_columns(tmp_path):
    path = _write(tmp_path / "r.tsv", "id\tbody\ttopic\n1\tgoal scored\tsport\n2\tnew GPU\ttech\n")
    scan = _scan(path, text_column="body", label_column="topic")
    assert scan.records == [{"text": "goal scored", "label_name": "sport"},
                            {"text": "new GPU", "label_name": "tech"}]
    with pytest.raises(IngestError, match=r"r\.tsv line 1: the header \['id', 'body', 'topic'\] has no text "
                                          r"column 'text or review or sentence' \(set text_column"):
        _scan(path)


def test_tfx_bundled_txt_is_a_csv_table_with_integer_labels():
    path = imdb.bundled_reviews_path()
    scan = _scan(path)
    assert len(scan.records) == 100 and {r["label_name"] for r in scan.records} == {"0", "1"}
    named = _scan(path, class_names=["neg", "pos"])
    assert {r["label_name"] for r in named.records} == {"neg", "pos"}
    assert [r["text"] for r in named.records] == [r["text"] for r in scan.records]


def test_multiclass_with_class_names_by_name_or_index(tmp_path):
    path = _write(tmp_path / "r.csv", "text,label\na,0\nb,world\nc,2\nd,sport\n")
    scan = _scan(path, class_names=["world", "sport", "tech"])
    assert [r["label_name"] for r in scan.records] == ["world", "world", "tech", "sport"]


def test_shared_imdb_2500_csv():
    path = os.path.join(SHARED_DATA, "imdb", "imdb_reviews_2500.csv")
    if not os.path.exists(path):
        pytest.skip(f"{path} not available")
    scan = _scan(path)
    assert len(scan.records) == 2500 and not scan.skipped
    assert {r["label_name"] for r in scan.records} == {"positive", "negative"}


# --- bad rows ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows, options, line, reason", [
    ("ok,pos\n,neg\n", {}, 3, "empty text in column 'text'"),
    ("ok,pos\n   ,neg\n", {}, 3, "empty text"),
    ("ok,pos\nfine,\n", {}, 3, "empty label"),
    ("ok,pos\nfine,maybe\n", {"class_names": ["neg", "pos"]}, 3, "label 'maybe' is neither one of class_names"),
    ("ok,pos\nfine,5\n", {"class_names": ["neg", "pos"]}, 3, "label '5' is neither"),
    ("ok,pos\nfine,pos,extra\n", {}, 3, "has 3 columns, the header has 2"),
    ("ok,pos\n\"multi\nline\",neg\nlonely\n", {}, 5, "has 1 columns"),
])
def test_bad_row_names_file_and_line(tmp_path, rows, options, line, reason):
    path = _write(tmp_path / "bad.csv", "text,label\n" + rows)
    with pytest.raises(IngestError) as e:
        _scan(path, **options)
    assert f"{path} line {line}: {reason}" in str(e.value)
    assert "--skip-bad-rows" in str(e.value)
    skipped = _scan(path, skip_bad_rows=True, **options)
    assert skipped.records[0] == {"text": "ok", "label_name": "pos"}
    assert skipped.skipped[0][0] == f"{path} line {line}"


def test_non_utf8_bytes_name_their_line(tmp_path):
    path = _write(tmp_path / "latin1.csv", "text,label\nfine,pos\ncaf\xe9 noir,neg\nok,neg\n".encode("latin-1"), "wb")
    with pytest.raises(IngestError, match=r"latin1\.csv line 3: byte 0xe9 at column 4 is not valid UTF-8"):
        _scan(path)
    scan = _scan(path, skip_bad_rows=True)
    assert [r["text"] for r in scan.records] == ["fine", "ok"]
    assert len(scan.skipped) == 1


def test_files_saved_in_other_encodings_or_dialects_say_how_to_fix_them(tmp_path):
    body = "review,sentiment\nschöner Film,pos\nawful,neg\n"
    latin1 = _write(tmp_path / "latin1.csv", body.encode("latin-1"), "wb")
    with pytest.raises(IngestError, match=r"latin1\.csv line 2: byte 0xf6 .* not valid UTF-8 \(text files must "
                                          r"be UTF-8; convert e\.g\. with `iconv -f CP1252 -t UTF-8`\)"):
        _scan(latin1)
    utf16 = _write(tmp_path / "utf16.csv", body.encode("utf-16"), "wb")
    with pytest.raises(IngestError, match=r"utf16\.csv: the file is UTF-16/UTF-32 encoded .* must be UTF-8"):
        _scan(utf16, skip_bad_rows=True)  # a whole-file problem: not skippable row by row
    mac = _write(tmp_path / "mac.csv", body.replace("\n", "\r").encode(), "wb")
    with pytest.raises(IngestError, match=r"mac\.csv: lines end with CR alone .* LF or CRLF"):
        _scan(mac)
    semicolons = _write(tmp_path / "semi.csv", body.replace(",", ";"))
    with pytest.raises(IngestError, match=r"semi\.csv line 1: the header \['review;sentiment'\] has no text "
                                          r"column .*separated by semicolons, but this file must be "
                                          r"comma-separated \(\.csv\)"):
        _scan(semicolons)
    crlf = _write(tmp_path / "crlf.csv", body.replace("\n", "\r\n").encode(), "wb")  # Windows: fine
    assert [r["text"] for r in _scan(crlf).records] == ["schöner Film", "awful"]


def test_utf8_bom_and_non_ascii_text_are_fine(tmp_path):
    path = _write(tmp_path / "bom.csv", "\ufefftext,label\nNaïve café — 良い,pos\nbad,neg\n".encode("utf-8"), "wb")
    assert _scan(path).records[0] == {"text": "Naïve café — 良い", "label_name": "pos"}


def test_header_problems_are_not_skippable(tmp_path):
    empty = _write(tmp_path / "empty.csv", "")
    with pytest.raises(IngestError, match="empty file, expected a header row"):
        _scan(empty, skip_bad_rows=True)
    no_label = _write(tmp_path / "nolabel.csv", "text,score\nx,1\n")
    with pytest.raises(IngestError, match=r"nolabel\.csv line 1: .* no label column 'label or sentiment or class'"):
        _scan(no_label, skip_bad_rows=True)


def test_bad_review_files_name_file_and_line(tmp_path):
    root = _review_tree(tmp_path / "data", splits=("",))
    bad = _write(os.path.join(root, "neg", "bad.txt"), b"first line\nbroken \xff byte\n", "wb")
    with pytest.raises(IngestError, match=rf"{bad} line 2: byte 0xff is not valid UTF-8"):
        _scan(os.path.join(root, "*", "*.txt"))
    empty = _write(os.path.join(root, "pos", "empty.txt"), " \n")
    scan = _scan(os.path.join(root, "*", "*.txt"), skip_bad_rows=True)
    assert len(scan.records) == 5
    assert sorted(s for s, _ in scan.skipped) == [f"{bad} line 2", f"{empty} line 1"]
    with pytest.raises(IngestError, match=r"label folder 'neg': label 'neg' is neither one of class_names"):
        _scan(os.path.join(root, "*", "*.txt"), class_names=["pos", "other"])


# --- through the executor and Beam ------------------------------------------------------

def test_csv_file_through_beam_gives_hash_split_examples(tmp_path):
    rows = "".join(f'"review {i}, ""quoted""\nnext line",{"positive" if i % 2 else "negative"}\n'
                   for i in range(40))
    path = _write(tmp_path / "data" / "r.csv", "review,sentiment\n" + rows + "oops,\n")
    component = TextExampleGen(input_base=path, skip_bad_rows=True)
    examples = run_example_gen(component, str(tmp_path / "out"))
    train, evaluation = read_examples(examples.uri, "train"), read_examples(examples.uri, "eval")
    assert len(train) + len(evaluation) == 40 and evaluation
    assert json.loads((tmp_path / "out" / "label_names.json").read_text()) == ["negative", "positive"]
    assert json.loads((tmp_path / "out" / "skipped.json").read_text()) == [
        {"source": f"{path} line 82", "reason": "empty label"}]
    for example in train + evaluation:
        text, label, name = _features(example)
        assert text.startswith("review ") and text.endswith(', "quoted"\nnext line')
        assert name == ("positive" if int(text.split()[1][:-1]) % 2 else "negative")
        assert ["negative", "positive"][label] == name


def test_aclimdb_folders_keep_their_train_test_split(tmp_path):
    root = _review_tree(tmp_path / "acl", counts={"pos": 4, "neg": 3})
    _write(os.path.join(root, "train", "unsup", "0_0.txt"), "unlabelled, ignored")
    examples = run_example_gen(TextExampleGen(input_base=root), str(tmp_path / "out"))
    assert json.loads(examples.split_names) == ["train", "eval"]
    for split, source in (("train", "train"), ("eval", "test")):
        records = [_features(e) for e in read_examples(examples.uri, split)]
        assert len(records) == 7
        assert all(text.startswith(f"{source} {name} review") for text, _, name in records)
        assert {(name, label) for _, label, name in records} == {("neg", 0), ("pos", 1)}


# --- data/imdb --------------------------------------------------------------------------

def test_bundled_reviews_materialised_once(tmp_path):
    folder = imdb.bundled_reviews_dir(str(tmp_path / "home"))
    assert folder == str(tmp_path / "home" / "data" / "imdb_small")
    assert os.listdir(folder) == ["reviews.csv"]
    scan = _scan(os.path.join(folder, "*.csv"))
    assert len(scan.records) == 100
    assert {r["label_name"] for r in scan.records} == {"negative", "positive"}
    assert "absolutely terrible movie" in scan.records[0]["text"]  # tfx labels it 0
    assert scan.records[0]["label_name"] == "negative"
    stamp = os.stat(os.path.join(folder, "reviews.csv")).st_mtime_ns
    imdb.bundled_reviews_dir(str(tmp_path / "home"))
    assert os.stat(os.path.join(folder, "reviews.csv")).st_mtime_ns == stamp


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return f"file://{path}"


def test_download_aclimdb_unpacks_labelled_reviews_only(tmp_path):
    url = _tar(tmp_path / "acl.tar.gz", {
        "aclImdb/README": b"readme", "aclImdb/imdb.vocab": b"a\nb\n",
        "aclImdb/train/pos/0_9.txt": b"great", "aclImdb/train/neg/1_2.txt": b"awful",
        "aclImdb/train/unsup/2_0.txt": b"unlabelled", "aclImdb/train/urls_pos.txt": b"http://x",
        "aclImdb/test/pos/0_8.txt": b"fine", "aclImdb/test/neg/1_1.txt": b"bad"})
    target = imdb.download_aclimdb(str(tmp_path / "acl"), url=url)
    found = sorted(os.path.relpath(os.path.join(d, f), target) for d, _, fs in os.walk(target) for f in fs)
    assert found == ["test/neg/1_1.txt", "test/pos/0_8.txt", "train/neg/1_2.txt", "train/pos/0_9.txt"]
    assert detect_text_layout(target).splits == list(EXISTING_SPLITS)
    assert sorted(os.listdir(tmp_path)) == ["acl", "acl.tar.gz"]  # no temp files left


@pytest.mark.parametrize("evil", ["../escape.txt", "/tmp/abs.txt", "aclImdb/../../up.txt"])
def test_download_aclimdb_rejects_path_traversal(tmp_path, evil):
    url = _tar(tmp_path / "evil.tar.gz", {"aclImdb/train/pos/0_9.txt": b"ok", evil: b"x"})
    with pytest.raises(imdb.UnsafeArchiveError, match="points outside the target folder"):
        imdb.download_aclimdb(str(tmp_path / "out" / "acl"), url=url)
    assert not os.path.exists(tmp_path / "out" / "acl")
    assert os.listdir(tmp_path / "out") == []
    assert not os.path.exists(tmp_path / "escape.txt")


# --- real-world edge cases (field sizes, malformed rows, classes, configured order) -------

def test_a_field_above_the_csv_module_default_limit_ingests(tmp_path):
    long_review = "a wonderful film " * 12000  # ~200 KiB, above csv's default 131,072
    path = _write(tmp_path / "long.csv", f'review,sentiment\n"{long_review}",positive\nshort,negative\n')
    scan = _scan(path)
    assert [r["text"] for r in scan.records] == [long_review, "short"]
    import csv
    assert csv.field_size_limit() == 131072  # the process-wide limit is restored


def test_a_malformed_row_is_named_and_skippable(tmp_path):
    path = _write(tmp_path / "m.csv", 'review,sentiment\nfine,positive\n"closed"then text,negative\nok,negative\n')
    with pytest.raises(IngestError, match=r"m\.csv line 3: not a valid CSV row .*--skip-bad-rows"):
        _scan(path)
    scan = _scan(path, skip_bad_rows=True)
    assert [r["text"] for r in scan.records] == ["fine", "ok"]
    assert [s for s, _ in scan.skipped] == [f"{path} line 3"]


def test_configured_class_names_keep_their_order(tmp_path):
    names = ["T-shirt/top", "Trouser", "Pullover"]  # Fashion-MNIST's published order, not sorted
    rows = "".join(f"review {i},{i % 3}\n" for i in range(30))
    path = _write(tmp_path / "data" / "r.csv", "text,label\n" + rows)
    examples = run_example_gen(TextExampleGen(input_base=path, class_names=names), str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "label_names.json").read_text()) == names
    for example in read_examples(examples.uri, "train") + read_examples(examples.uri, "eval"):
        text, label, name = _features(example)
        assert label == int(text.split()[1]) % 3 and name == names[label]


def test_a_class_only_in_the_eval_split_stops_ingestion(tmp_path):
    root = _review_tree(tmp_path / "acl", counts={"pos": 4, "neg": 3})
    for i in range(2):
        _write(os.path.join(root, "test", "neutral", f"{i}_5.txt"), f"so-so review {i}")
    with pytest.raises(IngestError, match=r"class\(es\) 'neutral' \(2 example\(s\) in all, none in train\) "
                                          r"have no training examples"):
        run_example_gen(TextExampleGen(input_base=root), str(tmp_path / "out"))


def test_a_class_too_small_for_the_hash_split_stops_ingestion(tmp_path):
    rows = "".join(f"common review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    # One 'rare' example lands in train or in eval (TFX's split is a stable hash of the
    # content); either way the class is refused, naming the split it lacks. Try candidate
    # texts until both cases are seen.
    messages = {}
    for k in range(30):
        path = _write(tmp_path / f"d{k}" / "r.csv", "text,label\n" + rows + f"rare review {k},rare\n")
        with pytest.raises(IngestError) as refused:
            run_example_gen(TextExampleGen(input_base=path), str(tmp_path / f"out{k}"))
        lacks = "train" if "none in train" in str(refused.value) else "eval"
        messages.setdefault(lacks, str(refused.value))
        if len(messages) == 2:
            break
    assert "class(es) 'rare' (1 example(s) in all, none in train) have no training examples" in messages["train"]
    assert ("class(es) 'rare' (1 example(s) in all, none in eval) have no eval examples: too few to split"
            in messages["eval"])
    assert not os.path.exists(tmp_path / "out0" / "label_names.json")


def test_a_configured_class_without_examples_stops_ingestion(tmp_path):
    rows = "".join(f"review {i},{i % 2}\n" for i in range(20))
    path = _write(tmp_path / "data" / "r.csv", "text,label\n" + rows)
    with pytest.raises(IngestError, match=r"'neutral' \(0 example\(s\) in all, none in train\)"):
        run_example_gen(TextExampleGen(input_base=path, class_names=["neg", "pos", "neutral"]), str(tmp_path / "out"))


def _reviews_with(bad_rows):
    """A CSV body of 40 learnable rows with `bad_rows` ({index: raw line}) swapped in."""
    rows = [f"review {i} was {'great' if i % 2 else 'awful'},{'pos' if i % 2 else 'neg'}" for i in range(40)]
    for index, line in bad_rows.items():
        rows[index] = line
    return "review,sentiment\n" + "\n".join(rows) + "\n"


@pytest.mark.parametrize("bad_rows, first, last, found, lost", [
    # never closed: the parser would read every following line into the field
    ({3: '"an unclosed quote, pos'}, 5, 41, "unexpected end of data", [3]),
    # closed by the quote that opens a later (valid) field, which the strict parser then refuses
    ({3: '"an unclosed quote, pos', 20: '"quoted, start",pos'}, 5, 22, "',' expected after '\"'", [3]),
    # closed at the end of a later line: the swallowed row has more columns than the header;
    # that line is a bad row of its own
    ({3: '"an unclosed quote, pos', 20: 'fine",pos,extra'}, 5, 22, "a row of 3 columns, the header has 2",
     [3, 20]),
])
def test_an_unclosed_quote_is_named_at_its_line_and_the_rows_after_it_are_kept(tmp_path, bad_rows, first,
                                                                               last, found, lost):
    path = _write(tmp_path / "q.csv", _reviews_with(bad_rows))
    with pytest.raises(IngestError) as e:
        _scan(path)
    message = str(e.value)
    assert message.startswith(f"{path} line {first}: a quoted field opened on this line is not closed")
    assert f"the next {last - first} line(s) ({first + 1}-{last})" in message and found in message
    assert "--skip-bad-rows" in message
    scan = _scan(path, skip_bad_rows=True)
    assert scan.skipped[0][0] == f"{path} line {first}"
    assert f"lines {first + 1}-{last} are read as rows of their own" in scan.skipped[0][1]
    # Only the rows that are bad on their own are lost, every other row after the quote is read.
    assert [s for s, _ in scan.skipped] == [f"{path} line {i + 2}" for i in lost]
    assert len(scan.records) == 40 - len(lost)
    assert scan.records[-1] == {"text": "review 39 was great", "label_name": "pos"}


def test_valid_multiline_quoted_fields_still_ingest_between_rows(tmp_path):
    body = _reviews_with({5: '"a review over\nthree lines, with ""quotes""\nand commas",pos'})
    path = _write(tmp_path / "m.csv", body)
    scan = _scan(path)
    assert len(scan.records) == 40 and not scan.skipped
    assert scan.records[5]["text"] == 'a review over\nthree lines, with "quotes"\nand commas'
