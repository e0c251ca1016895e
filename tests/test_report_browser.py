"""The reviewer's report opens in a real browser: the small twin's `snakemake --report`
(the session's run, conftest.small_twin) loaded in headless Chromium, whose JavaScript renders
the menu. A script added to a copy of the page clicks through the menu as a reader would
(every category, every folder) and records what each view lists; the test checks the figures
and tables are there. A screenshot of the front page goes to results/report_front_page.png
(results/ is not committed). Skipped where Chromium is not installed (.ci/run installs
Debian's chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

SCREENSHOT = ROOT / "results" / "report_front_page.png"
# headless, as root, offline: no sandbox (root), no GPU, no network services, no first-run UI
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Runs in the page after Snakemake's report app has rendered: clicks each category of the
# menu, each of its folders (a category with one folder opens it directly), records the rows
# of each results table, goes back through the breadcrumbs; writes the record as JSON into
# <pre id="mrsflow-walk"> (or the error into <pre id="mrsflow-walk-error">).
WALK_MENU_JS = r"""
(function () {
  const GENERAL = ["Workflow", "Statistics", "About"];
  const pause = () => new Promise((resolve) => setTimeout(resolve, 200));
  const side = () => document.querySelector("#app nav");
  const entries = () => [...side().querySelectorAll("ul li > a > span")];
  const labels = () => entries().map((s) => s.textContent.trim());
  const open = (label) => {
    const span = entries().find((s) => s.textContent.trim() === label);
    if (!span) throw new Error("no menu entry " + JSON.stringify(label));
    span.parentElement.click();
  };
  const crumbs = () => [...side().querySelectorAll("nav ol li a")];
  const back = (label) => {
    const link = label === undefined ? crumbs()[0]
      : crumbs().find((a) => a.textContent.trim() === label);
    if (!link) throw new Error("no breadcrumb " + JSON.stringify(label));
    link.click();
  };
  const rows = () => [...side().querySelectorAll("table tr")]
    .map((tr) => tr.innerText.replace(/\s+/g, " ").trim());
  async function walk() {
    const record = { front: labels(), categories: {} };
    for (const category of record.front.filter((l) => !GENERAL.includes(l))) {
      open(category);
      await pause();
      const folders = {};
      if (side().querySelector("table")) {
        folders[""] = rows();
      } else {
        for (const folder of labels()) {
          open(folder);
          await pause();
          folders[folder] = rows();
          back(category);
          await pause();
        }
      }
      record.categories[category] = folders;
      back();
      await pause();
    }
    return record;
  }
  const report = (id, text) => {
    const pre = document.createElement("pre");
    pre.id = id;
    pre.textContent = text;
    document.body.appendChild(pre);
  };
  window.addEventListener("load", () => setTimeout(() => walk().then(
    (record) => report("mrsflow-walk", JSON.stringify(record)),
    (error) => report("mrsflow-walk-error", String(error))), 500));
})();
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run "
                    "installs it)")
    return exe


def run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run with a fresh, empty profile folder."""
    profile.mkdir(parents=True)
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def expected_figures() -> list[str]:
    """The figure labels the rules put in the report (figures.smk: labels={"figure": ...})."""
    text = (ROOT / "workflow" / "rules" / "figures.smk").read_text()
    return re.findall(r'labels=\{"figure": "([^"]+)"\}', text)


@pytest.mark.slow
def test_report_opens_in_chromium_and_lists_the_figures_and_tables(small_twin, chromium,
                                                                   tmp_path):
    run = small_twin.report or small_twin.main  # the report, or why there is none
    assert small_twin.report is not None and run.returncode == 0, run.stderr[-3000:]
    report = small_twin.results / "report.html"
    page = report.read_text()
    end = page.rfind("</body>")  # the page's own (embedded results may contain others)
    assert end > 0

    # the page as a reader's browser renders it, with the menu walked through
    walked = tmp_path / "report_walked.html"
    walked.write_text(page[:end] + f"<script>{WALK_MENU_JS}</script>" + page[end:])
    proc = run_chromium(chromium, tmp_path / "profile-walk", "--virtual-time-budget=30000",
                        "--dump-dom", walked.as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = proc.stdout
    error = re.search(r'<pre id="mrsflow-walk-error">(.*?)</pre>', dom, flags=re.S)
    assert error is None, html.unescape(error.group(1))
    found = re.search(r'<pre id="mrsflow-walk">(.*?)</pre>', dom, flags=re.S)
    assert found, "the report's menu did not render (no record of the walk in the DOM)"
    record = json.loads(html.unescape(found.group(1)))

    # the front page: the general entries, then the categories, numbered once each, in order
    assert record["front"] == ["Workflow", "Statistics", "About", "1. Methods", "2. Results",
                               "3. Quality control", "4. Verification"], record["front"]
    cats = record["categories"]

    methods = cats["1. Methods"]
    assert any(r.startswith("results/basis/") and r.endswith(".png")
               for r in methods["Basis set"]), methods
    assert "results/report/mrsinmrs.html" in methods["Reporting standards"]
    assert "results/report/provenance.html" in methods["Provenance"]

    results = cats["2. Results"]
    figures = results["Figures"]
    assert figures[0] == "FIGURE" and set(expected_figures()) <= set(figures[1:]), figures
    assert {"results/tables/metabolites.tsv", "results/tables/exclusions.tsv"} <= set(
        results["Tables"]), results
    assert "results/stats/summary.md" in results["Statistics"]

    qc = cats["3. Quality control"]
    assert "results/report/qc_scans.html" in qc["All scans"]
    participants = pd.read_csv(small_twin.results / "twin" / "raw" / "participants.tsv",
                               sep="\t").participant_id.tolist()
    assert len(participants) == 8
    for pid in participants:  # one folder per participant, listing its QC pages
        assert qc[pid] and qc[pid][0] == "PARTICIPANT", (pid, qc.get(pid))

    verification = cats["4. Verification"]
    assert "results/verification.html" in verification["Checks"]
    assert "results/twin/recovery/recovery.png" in verification["Ground-truth recovery"]

    # a screenshot of the front page, for a person to look at
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    proc = run_chromium(chromium, tmp_path / "profile-shot", "--virtual-time-budget=10000",
                        "--window-size=1400,1000", f"--screenshot={SCREENSHOT}",
                        report.as_uri())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert png_size(SCREENSHOT) == (1400, 1000)
    assert SCREENSHOT.stat().st_size > 20_000  # a rendered page, not a blank one
