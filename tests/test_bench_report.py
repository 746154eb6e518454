"""The bench's HTML report (also opened in headless Chromium) and its CSV / Parquet export, on
the synthetic bench of tests/synthetic_bench.py: every cell with its 95% interval, the summary
table's protocol columns and general-ability changes, the claims section. Aggregates and the
console are tested in tests/test_bench_summary.py, the claims in tests/test_bench_claims.py."""

from __future__ import annotations

import csv
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kedit.bench.export import COLUMNS, export_results
from kedit.bench.findings import NOT_RUN, PARTLY, evaluate_claims
from kedit.bench.general_change import general_change_estimate
from kedit.bench.plan import BASELINE_JOB
from kedit.bench.report import render_report, write_report
from kedit.bench.store import BenchStore
from kedit.bench.summary import STATUS_NOT_APPLICABLE, BenchSummary
from kedit.formatting import format_relative
from tests.synthetic_bench import (
    BASELINE,
    COMPACT,
    DATASET,
    MIB,
    MODEL,
    N_CASES,
    NOT_APPLICABLE_NOTE,
    SEQUENTIAL,
    SINGLE,
    cell,
    stopped_short,
)

#: the summary table's headings of the headline measures: reliability under three protocols
HEADLINE = [
    "Rel. P(new)>P(old) ↑",
    "Rel. teacher-forced ↑",
    "Rel. free generation ↑",
    "Gen. ↑",
    "Loc. ↑",
]
SEQ_JOB = f"rome/{SEQUENTIAL}"


@pytest.fixture(scope="module")
def report(bench) -> Path:
    return write_report(bench)


# -- report -----------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """The text of every table cell (whitespace and line breaks as one space), per row, per
    table."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def tables_of(text: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(text)
    return parser.tables


def general_cells(summary: BenchSummary, job: str, k: int) -> list[str]:
    """A job's general-ability cells in the summary: the score with its interval, and the
    change from the unedited model with its paired interval."""
    out = []
    for task in sorted(BASELINE):
        change = general_change_estimate(summary, job, k, task)
        fmt = format_relative if task == "wikitext" else "{:+.3f}".format
        bounds = f"[{fmt(change.low)}, {fmt(change.high)}]"
        out.append(f"{cell(summary.estimate(job, k, task))} {fmt(change.value)} {bounds}")
    return out


def test_report_contents(report, bench, summary):
    assert report == bench / "report.html"
    text = report.read_text(encoding="utf-8")
    assert f"<title>kedit bench: {MODEL} on {DATASET}</title>" in text
    for fact in ("fp-1234", "0.1.0", "2.x", "4.x", "cpu", str(N_CASES)):
        assert f"<dd>{fact}</dd>" in text
    _summary, single, batch, sequential, costs, findings = tables_of(text)
    assert text.index("<h2>Summary</h2>") < text.index("<h2>Scenario single</h2>")
    assert single[0] == ["method", "reliability", "generalization", "locality"]
    measures = ["efficacy_score", "rewrite_gen_match", "rewrite_token_acc"]
    measures += ["paraphrase_score", "neighborhood_score"]
    assert single[1] == [f"{m} ↑" for m in measures]
    # every cell: the value and its 95% interval below it
    assert "0.950<br><small>[0.850, 1.000]</small>" in text
    pre = [cell(summary.estimate("ike/single", 1, m, "pre")) for m in measures]
    assert single[2] == ["unedited", *pre]
    assert single[3][:2] == ["ike", "1.000 [1.000, 1.000]"]  # every case succeeds
    assert single[4] == ["rome", *(cell(summary.estimate("rome/single", 1, m)) for m in measures)]
    assert single[4][1] == "0.950 [0.850, 1.000]"
    assert batch[3] == [
        "memit",
        "10",
        *(cell(summary.estimate("memit/batch:10", 10, m)) for m in measures),
    ]
    assert batch[3][2].startswith("0.850 [")
    assert "general" in sequential[0]
    assert "wikitext ↓" in sequential[1]
    rome_20 = next(r for r in sequential if r[:2] == ["rome", "20"])
    columns = [c.split()[0] for c in sequential[1]]
    assert rome_20[2:] == [cell(summary.estimate(SEQ_JOB, 20, m)) for m in columns]
    assert rome_20[2].startswith("0.300 [") and rome_20[-1].startswith("42.000 [")
    unedited_20 = next(r for r in sequential if r[:2] == ["unedited", "20"])
    assert unedited_20[-1] == cell(summary.estimate(BASELINE_JOB, 0, "wikitext"))
    assert unedited_20[-1].startswith("30.000 [")  # the unedited model's perplexity
    assert NOT_APPLICABLE_NOTE in text
    assert costs[0][4:6] == ["median edit time per edit (s)", "median edit memory per update (MiB)"]
    assert costs[0][6] == "median peak memory (MiB)"
    assert ["rome", "single", "20", "0", "1.095", "10.0", "500", "0.200", "cpu rss"] in costs
    assert ["memit", "batch:10", "20", "0", "0.300", "–", "–", "–", "–"] in costs
    verdicts = {row[0]: row[1] for row in findings[1:]}
    assert verdicts["MEND degrades after 10–20 edits."] == NOT_RUN
    assert verdicts["ROME and KN degrade after about 10 edits."] == PARTLY
    locality = "Parameter-modifying methods drop on locality, except MEMIT."
    assert verdicts[locality] == "inconclusive at this sample size"
    assert '<td class="verdict inconclusive">inconclusive at this sample size</td>' in text
    assert re.search(r"Inconclusive at this sample size: about \d+ cases would settle it", text)
    # MMLU is at chance for the unedited model: shown, but counted toward no claim
    assert "not counted toward the claims" in text
    assert "<li><code>mmlu</code>: the unedited model is at chance (0.270 [" in text
    for threshold in (
        "DIFFERENCE = 0.0",
        "LOCALITY_DROP = 0.05",
        "DOWNSTREAM_DEGRADE = 0.05",
        "PERPLEXITY_DEGRADE = 0.1",
        "DEGRADE_CHECKPOINTS = (10, 20)",
        "STABLE_UP_TO = 40",
        "DOWNSTREAM_TOLERANCE = 0.02",
        "PERPLEXITY_TOLERANCE = 0.01",
    ):
        assert threshold in text
    assert "judged, as the survey reads them off its downstream-task plots" in text
    assert text.count("<img ") == 7
    assert text.count('src="data:image/png;base64,') == 7
    assert "&lt;portability&gt; probes &amp; aliases" in text
    assert "<portability>" not in text
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_report_summary_table(report, summary, rows):
    text = report.read_text(encoding="utf-8")
    table = tables_of(text)[0]
    seq = f"{SEQUENTIAL}, after 20 edits"
    assert table[0] == ["method", "single", "batch:10, batches of 10", seq]
    general = ["mmlu ↑", "rte ↑", "sst2 ↑", "wikitext ↓"]
    time = ["s/edit ↓"]
    # beside reliability's headline, the same quantity under the other protocols
    assert table[1] == [*HEADLINE, *time, *HEADLINE, *time, *HEADLINE, *general, *time]
    by_label = {row[0]: row[1:] for row in table[2:]}
    assert [row[0] for row in table[2:]] == ["unedited", *SINGLE]  # the store's method order
    unedited = [cell(summary.estimate("ike/single", 1, m, "pre")) for m in COMPACT]
    base = [cell(summary.estimate(BASELINE_JOB, 0, t)) for t in sorted(BASELINE)]
    assert by_label["unedited"] == [*unedited, "–", *unedited, "–", *unedited, *base, "–"]
    rome = by_label["rome"]
    assert rome == [
        *(cell(summary.estimate("rome/single", 1, m)) for m in COMPACT),
        "1.095",  # s/edit: median of 1.00 .. 1.19
        STATUS_NOT_APPLICABLE,  # a single cell across batch:10's columns
        *(cell(summary.estimate(SEQ_JOB, 20, m)) for m in COMPACT),
        *general_cells(summary, SEQ_JOB, 20),
        "0.595",
    ]
    # general ability after 20 edits, with its change from the unedited model
    assert re.fullmatch(r"0\.600 \[\S+, \S+\] -0\.200 \[-\S+, -\S+\]", rome[14])  # sst2
    assert re.fullmatch(r"42\.000 \[\S+, \S+\] \+40\.0% \[\+\S+%, \+\S+%\]", rome[15])
    grace = by_label["grace"]
    assert grace[12:16] == general_cells(summary, f"grace/{SEQUENTIAL}", 20)
    for i in (13, 14):  # rte, sst2: the same answers on every example
        assert grace[i].endswith(" +0.000 [+0.000, +0.000]")
    memit = by_label["memit"][6:12]
    assert memit[0].startswith("0.850 [") and memit[-1] == "0.300"  # 3 s / 10 edits
    assert by_label["ike"][6] == "–"  # no batch job
    assert "Headline measures: Rel. reliability (efficacy_score), Gen. generalization (" in text
    assert "Below each value, its 95% interval" in text

    # a job stopped short: at its own last checkpoint, named, and marked incomplete
    table = tables_of(render_report(BenchSummary.from_rows(**stopped_short(rows)), []))[0]
    ft_l = next(row for row in table if row[0].startswith("ft-l"))
    assert ft_l[0] == "ft-l (incomplete)"
    # single (6 cells), batch (one cell: no job), sequential: its values after 10 edits
    assert ft_l[7] == "–"
    assert ft_l[8].startswith("0.600 [") and ft_l[8].endswith("] (after 10)")
    assert ft_l[13:17] == general_cells(summary, f"ft-l/{SEQUENTIAL}", 10)
    assert " -0.040 [" in ft_l[14]  # rte 0.60 - 0.04


def test_report_of_an_empty_bench(tmp_path):
    with pytest.raises(FileNotFoundError, match="a bench folder"):
        write_report(tmp_path / "nothing")
    BenchStore(tmp_path / "empty").close()
    path = write_report(tmp_path / "empty", tmp_path / "out" / "empty.html")
    text = path.read_text(encoding="utf-8")
    assert "<title>kedit bench: model on dataset</title>" in text
    assert "<img" not in text
    assert "<h2>Summary</h2>" not in text
    verdicts = {f.verdict for f in evaluate_claims(BenchSummary.load(tmp_path / "empty"))}
    assert verdicts == {NOT_RUN}


def test_report_needs_matplotlib(bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'kedit\[report\]'"):
        write_report(bench, bench / "other.html")
    assert not (bench / "other.html").exists()


@pytest.mark.browser
def test_report_in_headless_chromium(report):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail(
            "the report's browser test needs Debian's chromium and chromium-driver "
            "(/usr/bin/chromium, /usr/bin/chromedriver): run ./scripts/setup.sh"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the report's browser test needs selenium: run ./scripts/setup.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(report.as_uri())
        assert driver.title == f"kedit bench: {MODEL} on {DATASET}"
        images = driver.execute_script(
            "return Array.from(document.images).map("
            "i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt}))"
        )
        assert len(images) == 7
        for image in images:
            assert image["complete"] and image["width"] > 0, image["alt"]
            assert "sequential edits" in image["alt"]
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()


# -- export -----------------------------------------------------------------------------------


def test_export_csv(bench, tmp_path):
    path = export_results(bench, tmp_path / "results.csv")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        exported = list(reader)
    with BenchStore(bench, create=False) as store:
        assert len(exported) == store.count("results")
    assert reader.fieldnames == [name for name, _ in COLUMNS]
    row = next(
        r
        for r in exported
        if r["job_id"] == "rome/single"
        and r["case_id"] == "c02"
        and r["measure"] == "efficacy_score"
    )
    assert row["family"] == "locate-and-edit"
    assert row["model"] == MODEL and row["kedit_version"] == "0.1.0"
    assert float(row["edit_time_s"]) == pytest.approx(1.02)
    assert int(row["edit_memory_bytes"]) == 10 * MIB


def test_export_parquet(bench, tmp_path):
    import pyarrow.parquet as pq

    path = export_results(bench, tmp_path / "results.parquet")
    table = pq.read_table(path)
    with BenchStore(bench, create=False) as store:
        assert table.num_rows == store.count("results")
    assert table.column_names == [name for name, _ in COLUMNS]
    data = table.to_pydict()
    families = dict(zip(data["method"], data["family"]))
    assert families["grace"] == "added-parameters"
    assert families["ike"] == "in-context"
    assert families["unedited"] is None
    general = [i for i, c in enumerate(data["case_id"]) if c == "general"]
    assert all(data["edit_time_s"][i] is None for i in general)


def test_export_rejects_unknown_format(bench, tmp_path):
    with pytest.raises(ValueError, match=r"supported formats are \.csv, \.parquet"):
        export_results(bench, tmp_path / "results.xlsx")
