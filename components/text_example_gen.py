"""TextExampleGen: labelled texts from CSV/TSV tables or aclImdb-style review folders.

Layouts (see detect_text_layout):
  * tables   *.csv / *.tsv with a header row; *.txt files whose first line is such a header
             (tfx's imdb_small_with_labels.txt) are read as CSV. The text column defaults to
             the first of text|review|sentence, the label column to label|sentiment|class.
  * folders  <label>/<review>.txt, optionally under <split>/ as in aclImdb
             (train/pos, test/neg, ...): an existing train/test split is kept as the
             pipeline's train/eval splits instead of hashing. aclImdb's unlabelled `unsup`
             folder is ignored.
Labels are any strings; with class_names, a label is either one of the names or an integer
index into them. Every row is checked while scanning, so a bad row (empty text or label,
unknown label, wrong column count, bytes that are not UTF-8, a quote that is never closed)
stops ingestion with its file and line, or, with skip_bad_rows, is skipped and recorded on
the artifact; the rows after it are still read.
"""
import codecs
import contextlib
import csv
import dataclasses
import glob
import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from components.errors import IngestError
from components.labelled_example_gen import (LABEL_NAME, LabelledExamplesExecutor, Scan,
                                             hash_split_output, options_to_custom_config)
from components.spans import latest_span_folder
from modules import features as F

TEXT_KEY = F.TEXT
TEXT_COLUMNS = ("text", "review", "sentence")
LABEL_COLUMNS = ("label", "sentiment", "class")
DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": ","}
UNLABELLED_FOLDERS = ("unsup",)
SINGLE_SPLIT = "single_split"
# aclImdb's own split; the pipeline's Trainer and Evaluator read `train` and `eval`.
EXISTING_SPLITS = (("train", "train/*/*.txt"), ("eval", "test/*/*.txt"))


@dataclasses.dataclass
class TextLayout:
    """Where the inputs are: input_base plus (split name, pattern) pairs. A single
    SINGLE_SPLIT pattern is hashed into train/eval; named splits are kept as they are."""
    input_base: str
    splits: List[Tuple[str, str]]


def _visible(folder: str) -> List[str]:
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))


def _has_review_folders(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, d)) and
               any(f.endswith(".txt") for f in os.listdir(os.path.join(folder, d)))
               for d in _visible(folder))


def detect_text_layout(data_path: str) -> TextLayout:
    """The layout of --data: a table file, a folder of tables, or review folders."""
    if os.path.isfile(data_path):
        if os.path.splitext(data_path)[1].lower() not in DELIMITERS:
            raise IngestError(f"{data_path}: expected a .csv, .tsv or .txt table of texts and labels")
        return TextLayout(os.path.dirname(os.path.abspath(data_path)),
                          [(SINGLE_SPLIT, os.path.basename(data_path))])
    if not os.path.isdir(data_path):
        raise IngestError(f"{data_path}: data file or directory does not exist")
    entries = _visible(data_path)
    if not entries:
        raise IngestError(f"{data_path}: data directory is empty")
    if {"train", "test"} <= set(entries) and all(
            _has_review_folders(os.path.join(data_path, s)) for s in ("train", "test")):
        return TextLayout(data_path, list(EXISTING_SPLITS))
    tables = sorted({os.path.splitext(e)[1].lower() for e in entries} & {".csv", ".tsv"})
    if len(tables) > 1:
        raise IngestError(f"{data_path}: holds both .csv and .tsv files; choose with --input-pattern")
    if tables:
        return TextLayout(data_path, [(SINGLE_SPLIT, f"*{tables[0]}")])
    if _has_review_folders(data_path):
        return TextLayout(data_path, [(SINGLE_SPLIT, "*/*.txt")])
    if any(e.endswith(".txt") for e in entries):
        return TextLayout(data_path, [(SINGLE_SPLIT, "*.txt")])
    raise IngestError(f"{data_path}: no texts found (expected .csv/.tsv tables with a header row, "
                      "<label>/<review>.txt folders, or train/ and test/ holding such folders)")


# Files saved by spreadsheet programs on Windows are often Windows-1252 (a superset of Latin-1).
NOT_UTF8_HINT = "text files must be UTF-8; convert e.g. with `iconv -f CP1252 -t UTF-8`"


def _encoding_or_line_end_problem(head: bytes) -> str:
    """Why a table whose first bytes are `head` cannot be read line by line as UTF-8, or ''.

    UTF-16/32 text (what Excel's "Unicode text" saves) has NUL bytes; classic Mac files end
    lines with CR alone, so the whole file would be one line.
    """
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in head:
        return ("the file is UTF-16/UTF-32 encoded (it has NUL bytes); text files must be UTF-8: "
                "convert e.g. with `iconv -f UTF-16 -t UTF-8`")
    if b"\r" in head and b"\n" not in head:
        return "lines end with CR alone (classic Mac line endings); save it with LF or CRLF line ends"
    return ""


def _delimiter_hint(header: List[str], delimiter: str) -> str:
    """A hint when a one-column header looks separated by another character than `delimiter`."""
    if len(header) != 1:
        return ""
    for other, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "'|'"), (",", "commas")):
        if other != delimiter and other in header[0]:
            expected = "tab-separated (.tsv)" if delimiter == "\t" else "comma-separated (.csv)"
            return (f"; the header looks separated by {name}, but this file must be {expected}"
                    + ("" if other != "\t" else ": name it .tsv"))
    return ""


def _find_column(header: List[str], configured: Optional[str], candidates: Tuple[str, ...]) -> int:
    """Index of the configured column, else of the first candidate present; -1 if none."""
    names = [h.strip().lower() for h in header]
    for name in ([configured] if configured else candidates):
        if name.strip().lower() in names:
            return names.index(name.strip().lower())
    return -1


def resolve_label(raw: str, class_names: List[str]) -> Tuple[str, str]:
    """(class name, '') for a usable label, else ('', reason)."""
    label = raw.strip()
    if not label:
        return "", "empty label"
    if not class_names or label in class_names:
        return label, ""
    if label.lstrip("-").isdigit() and 0 <= int(label) < len(class_names):
        return class_names[int(label)], ""
    return "", f"label {label!r} is neither one of class_names {class_names} nor an index into them"


@contextlib.contextmanager
def _field_limit(limit: int) -> Iterator[None]:
    """csv.field_size_limit(limit) for the block (it is process-wide state)."""
    previous = csv.field_size_limit(max(limit, csv.field_size_limit()))
    try:
        yield
    finally:
        csv.field_size_limit(previous)


class _Lines:
    """A table file's lines, decoded as UTF-8 one by one and numbered from 1, so a non-UTF-8
    byte is reported with its line (noted in `bad`) and the csv reader can be restarted at
    any line of the record it is reading (`restart`).

    `starts` maps the line numbers read since the last `new_record()` to their byte offsets;
    it is cleared per record, so it holds the lines of one record at a time.
    """

    def __init__(self, f):
        self._f = f
        self.bad: Dict[int, str] = {}
        self.starts: Dict[int, int] = {1: 0}
        self.number = 0  # the last line read

    def new_record(self) -> None:
        self.starts.clear()

    def restart(self, number: int) -> Iterator[str]:
        """The lines from line `number` on; `number` must be a line of the current record."""
        offset = self.starts[number]
        self._f.seek(offset)
        self.number = number - 1
        return self._read(offset)

    def _read(self, offset: int) -> Iterator[str]:
        for raw in iter(self._f.readline, b""):
            self.number += 1
            self.starts[self.number] = offset
            offset += len(raw)
            if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                self.bad[self.number] = (f"byte 0x{raw[e.start]:02x} at column {e.start + 1} "
                                         f"is not valid UTF-8 ({NOT_UTF8_HINT})")
                yield raw.decode("utf-8", errors="replace")


class Executor(LabelledExamplesExecutor):
    """Scans tables or review folders of texts (see the module docstring)."""

    KIND = "text"

    def scan(self, pattern: str, options: Dict[str, Any]) -> Scan:
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise IngestError(f"{pattern}: no input files matched")
        files: List[str] = []
        for path in paths:
            if os.path.isdir(path):  # a pattern like `*` that matched label folders
                files.extend(os.path.join(path, f) for f in _visible(path))
            else:
                files.append(path)
        scan = Scan(records=[])
        for path in files:
            if os.path.basename(path).startswith("."):
                continue
            extension = os.path.splitext(path)[1].lower()
            if extension not in DELIMITERS:
                self._bad(scan, options, path, "not a .csv, .tsv or .txt file")
            elif extension != ".txt" or self._is_table(path, options):
                self._scan_table(path, DELIMITERS[extension], options, scan)
            elif os.path.basename(os.path.dirname(path)) not in UNLABELLED_FOLDERS:
                self._scan_review_file(path, options, scan)
        return scan

    @staticmethod
    def _bad(scan: Scan, options: Dict[str, Any], source: str, reason: str) -> None:
        if not options.get("skip_bad_rows"):
            raise IngestError(f"{source}: {reason}; fix or remove it, or pass --skip-bad-rows")
        scan.skipped.append((source, reason))

    @staticmethod
    def _is_table(path: str, options: Dict[str, Any]) -> bool:
        """A .txt file is a table when its first line is a header naming text and label columns."""
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace").lstrip("\ufeff")
        header = next(csv.reader([first]), [])
        return (_find_column(header, options.get("text_column"), TEXT_COLUMNS) >= 0 and
                _find_column(header, options.get("label_column"), LABEL_COLUMNS) >= 0)

    def _scan_table(self, path: str, delimiter: str, options: Dict[str, Any], scan: Scan) -> None:
        """Reads one RFC-4180 table (strict quoting); a quoted field may span lines.

        No field is too large: the csv module's field limit (131,072 characters by default)
        is raised to the file's size for the read, so memory, not a constant, bounds a field.
        A row the csv parser rejects is named by its line and is skippable like any other bad
        row; a bad header is not. A quote that is never closed would make the parser read
        every following line into one field: a row that spans lines and then fails (csv
        error, or a column count other than the header's) is reported at its first line,
        where that quote opened, with the lines it swallowed, and those lines are read again
        as rows of their own.
        """
        class_names = options.get("class_names") or []
        kind = "TSV" if delimiter == "\t" else "CSV"
        with open(path, "rb") as f, _field_limit(os.fstat(f.fileno()).st_size + 1):
            problem = _encoding_or_line_end_problem(f.read(65536))
            if problem:
                raise IngestError(f"{path}: {problem}")
            f.seek(0)
            lines = _Lines(f)

            def reader_from(number: int):
                return csv.reader(lines.restart(number), delimiter=delimiter, strict=True)

            reader = reader_from(1)
            try:
                header = next(reader, None)
            except csv.Error as e:
                raise IngestError(f"{path} line 1: not a valid {kind} header ({e})") from e
            if header is None:
                raise IngestError(f"{path}: empty file, expected a header row")
            if 1 in lines.bad:
                raise IngestError(f"{path} line 1: {lines.bad[1]}")
            text_at = _find_column(header, options.get("text_column"), TEXT_COLUMNS)
            label_at = _find_column(header, options.get("label_column"), LABEL_COLUMNS)
            for index, what, key, candidates in ((text_at, "text", "text_column", TEXT_COLUMNS),
                                                 (label_at, "label", "label_column", LABEL_COLUMNS)):
                if index < 0:
                    expected = options.get(key) or " or ".join(candidates)
                    raise IngestError(f"{path} line 1: the header {header} has no {what} column "
                                      f"'{expected}' (set {key} to name it)"
                                      f"{_delimiter_hint(header, delimiter)}")
            while True:
                lines.new_record()
                first_line = lines.number + 1
                try:
                    row, problem = next(reader, None), ""
                except csv.Error as e:
                    row, problem = [], str(e)
                last_line = lines.number
                if row is None:
                    break
                source = f"{path} line {first_line}"
                if row and last_line > first_line and len(row) != len(header):
                    problem = f"a row of {len(row)} columns, the header has {len(header)}"
                if problem and last_line > first_line:
                    # The row's first line break is inside a quoted field opened on its first line.
                    reason = (f"a quoted field opened on this line is not closed where its row should "
                              f"end: the {kind} parser ran on over the next {last_line - first_line} "
                              f"line(s) ({first_line + 1}-{last_line}) and then found {problem}")
                    if options.get("skip_bad_rows"):
                        reason += f"; lines {first_line + 1}-{last_line} are read as rows of their own"
                    self._bad(scan, options, source, reason)
                    reader = reader_from(first_line + 1)
                    continue
                if problem:  # the parser has dropped the rest of that line and goes on
                    self._bad(scan, options, source, f"not a valid {kind} row ({problem})")
                    continue
                if not row:  # blank line
                    continue
                reason = self._row_problem(row, header, text_at, label_at, class_names,
                                           [lines.bad[n] for n in range(first_line, last_line + 1)
                                            if n in lines.bad])
                if reason:
                    self._bad(scan, options, source, reason)
                    continue
                name, _ = resolve_label(row[label_at], class_names)
                scan.records.append({TEXT_KEY: row[text_at], LABEL_NAME: name})

    @staticmethod
    def _row_problem(row: List[str], header: List[str], text_at: int, label_at: int,
                     class_names: List[str], encoding_problems: List[str]) -> str:
        if encoding_problems:
            return encoding_problems[0]
        if len(row) != len(header):
            return f"has {len(row)} columns, the header has {len(header)}"
        if not row[text_at].strip():
            return f"empty text in column '{header[text_at]}'"
        return resolve_label(row[label_at], class_names)[1]

    def _scan_review_file(self, path: str, options: Dict[str, Any], scan: Scan) -> None:
        folder = os.path.basename(os.path.dirname(path))
        with open(path, "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            problem = _encoding_or_line_end_problem(data[:65536])
            self._bad(scan, options, f"{path} line {line}",
                      problem if problem.startswith("the file is UTF-16") else
                      f"byte 0x{data[e.start]:02x} is not valid UTF-8 ({NOT_UTF8_HINT})")
            return
        label, reason = resolve_label(folder, options.get("class_names") or [])
        if not text.strip():
            reason = "empty text"
        elif reason:
            reason = f"label folder '{folder}': {reason}"
        if reason:
            self._bad(scan, options, f"{path} line 1", reason)
            return
        scan.records.append({"path": path, LABEL_NAME: label})

    @staticmethod
    def load(record: Dict[str, Any]) -> Dict[str, Any]:
        if TEXT_KEY in record:
            return {TEXT_KEY: record[TEXT_KEY]}
        with open(record["path"], "rb") as f:
            return {TEXT_KEY: f.read()}


class TextExampleGen(FileBasedExampleGen):
    """FileBasedExampleGen over texts (see module docstring)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: str, input_pattern: Optional[str] = None, eval_percent: int = 20,
                 skip_bad_rows: bool = False, text_column: Optional[str] = None,
                 label_column: Optional[str] = None, class_names=None):
        """Declares the component; the layout is detected now, the rows are read when it runs.

        Args:
          input_base: a table file, or the folder of tables or review folders (see the
            module docstring for the layouts).
          input_pattern: glob under `input_base` instead of layout detection; may contain
            TFX span specs such as span-{SPAN} (see components/spans.py).
          eval_percent: share of examples, in percent (1..99), hashed into the eval split
            when the input has no train/test split of its own.
          skip_bad_rows: skip bad rows (recorded on the artifact) instead of failing.
          text_column: the tables' text column (default: the first of TEXT_COLUMNS).
          label_column: the tables' label column (default: the first of LABEL_COLUMNS).
          class_names: the allowed labels; a label may also be an integer index into them.
        Outputs:
          `outputs['examples']`: Examples with splits train and eval of GZIP TFRecord
          tf.Examples (features: see components/labelled_example_gen.py), the sorted class
          names (`label_names`) and the skipped rows (`skipped`).
        Raises:
          IngestError: `input_base` does not exist, is empty or has no recognisable layout,
            `input_pattern` is given with a file, or a span pattern matches no span. Bad rows
            are reported when the component runs, also as IngestError.
        """
        if input_pattern:
            if os.path.isfile(input_base):
                raise IngestError(f"{input_base}: --input-pattern needs a data folder, not a file")
            span_folder = latest_span_folder(input_base, input_pattern)
            if span_folder:  # e.g. incoming/span-{SPAN}: the latest span's layout completes the glob
                prefix = input_pattern.rstrip("/")
                layout = TextLayout(input_base, [(name, f"{prefix}/{pattern}") for name, pattern
                                                 in detect_text_layout(span_folder).splits])
            else:
                layout = TextLayout(input_base, [(SINGLE_SPLIT, input_pattern)])
        else:
            layout = detect_text_layout(input_base)
        input_config = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name=name, pattern=pattern) for name, pattern in layout.splits])
        if len(layout.splits) == 1:
            output_config = hash_split_output(eval_percent)
        else:
            output_config = example_gen_pb2.Output()  # keep the input splits
        options: Dict[str, Any] = {"skip_bad_rows": skip_bad_rows}
        for key, value in (("text_column", text_column), ("label_column", label_column),
                           ("class_names", list(class_names) if class_names else None)):
            if value:
                options[key] = value
        super().__init__(input_base=layout.input_base, input_config=input_config,
                         output_config=output_config,
                         custom_config=options_to_custom_config(options))
