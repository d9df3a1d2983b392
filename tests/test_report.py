"""The HTML report: renders for clean and faulted runs, reads in a browser, runs nothing."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from impdiff.report_html import CSP, load_run, plain_text, write_report

from .conftest import requires_llama_cpp
from .test_cli import assert_one_line_error, impdiff

REPORTS = Path(__file__).parent.parent / "reports"
EXAMPLES = {
    "gemma3-bracket-clean": "every runtime recalls the sentinel at every length",
    "gemma3-bracket-swa-on-global": "diverges from llama.cpp at layer 5 (global attention)",
    "gemma4-bisection-swa-on-global": "diverges from llama.cpp at layer 5 (global attention, "
                                      "MoE)",
    "gemma4-bisection-rope-prop-rotated-dims": "diverges from llama.cpp at layer 5 (global "
                                               "attention, MoE)",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAYLOADS = ("<script>alert('pwned')</script>", "<img src=x onerror=alert(1)>",
            "\"><svg onload=alert(2)>", "' onmouseover='alert(3)")


# ----------------------------------------------------------------------------------- helpers

class DomScan(HTMLParser):
    """Every element with its attributes, as the parser (or the browser's dump) has them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.text.append(data)

    def tags(self, name: str) -> list[dict]:
        return [a for t, a in self.elements if t == name]


def scan(page: str) -> DomScan:
    s = DomScan()
    s.feed(page)
    return s


def verdict_line(page: str) -> str:
    m = re.search(r'<h1 id="verdict">(.*?)</h1>', page, re.S)
    assert m, "no verdict at the top"
    return html.unescape(re.sub(r"<[^>]+>", "", m.group(1))).strip()


def valid_png(data: bytes) -> tuple[int, int]:
    from PIL import Image

    assert data[:8] == PNG_MAGIC
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.width > 0 and im.height > 0
        return im.size


def assert_images_are_pngs(dom: DomScan, at_least: int) -> None:
    imgs = dom.tags("img")
    assert len(imgs) >= at_least
    for a in imgs:
        src = a.get("src", "")
        assert src.startswith("data:image/png;base64,"), src[:40]
        valid_png(base64.b64decode(src.split(",", 1)[1], validate=True))


def assert_runs_nothing(dom: DomScan) -> None:
    assert not dom.tags("script")
    for tag, attrs in dom.elements:
        on = [k for k in attrs if k.lower().startswith("on")]
        assert not on, (tag, attrs)
        for k in ("src", "href"):
            assert not str(attrs.get(k, "")).lower().startswith("javascript:"), (tag, attrs)
    metas = [a for a in dom.tags("meta") if a.get("http-equiv", "").lower() ==
             "content-security-policy"]
    assert metas and metas[0]["content"] == CSP


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    pytest.skip("headless chromium is not installed (apt-get install chromium)")


def browse(page: Path, *, screenshot: Path | None = None, height: int = 3000) -> str:
    """Headless Chromium: the DOM after load (and a screenshot when asked)."""
    exe = chromium()
    with tempfile.TemporaryDirectory() as profile:
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                "--hide-scrollbars", f"--window-size=1400,{height}"]
        if screenshot is not None:
            proc = subprocess.run(args + [f"--screenshot={screenshot}",
                                          page.resolve().as_uri()],
                                  capture_output=True, text=True, timeout=180)
            assert screenshot.exists(), proc.stderr[-2000:]
        proc = subprocess.run(args + ["--dump-dom", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


def assert_not_blank(png: Path) -> None:
    from PIL import Image

    valid_png(png.read_bytes())
    with Image.open(png) as im:
        small = im.convert("RGB").resize((140, 300))
        colours = small.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 20, "screenshot is (nearly) one colour"


# --------------------------------------------------------------- 1: diff runs on a synthetic model

@pytest.fixture(scope="module")
def diff_runs(synth_model, tmp_path_factory):
    """A clean and a faulted `impdiff diff` run dir on the synthetic gemma3 (window 32)."""
    model = str(synth_model("gemma3"))
    root = tmp_path_factory.mktemp("report-runs")
    runs = {}
    for name, inject, code in (("clean", None, 0), ("faulted", "swa-on-global", 1)):
        args = ["diff", "--model", model, "--tokens", "80", "--out", str(root / name)]
        if inject:
            args += ["--inject", inject]
        proc = impdiff(*args)
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert "report:" in proc.stdout, proc.stdout + proc.stderr
        runs[name] = root / name
    return runs


@requires_llama_cpp
def test_diff_runs_write_reports(diff_runs):
    faulted = (diff_runs["faulted"] / "report.html").read_text()
    clean = (diff_runs["clean"] / "report.html").read_text()
    for page in (faulted, clean):
        dom = scan(page)
        assert_runs_nothing(dom)
        assert_images_are_pngs(dom, at_least=2)  # heatmap + error by position
        assert "http://" not in page and "https://" not in page  # nothing to fetch
        assert not dom.tags("link")
    text = plain_text(faulted)
    verdict = json.loads((diff_runs["faulted"] / "verdict.json").read_text())
    assert verdict_line(faulted) == verdict["verdict"]["sentence"].replace("`", "")
    assert "layer 5 (global attention)" in text and "positions ≥ 32" in text
    assert "32 tokens (from the GGUF)" in text  # the sliding window, read from the model
    # the diff run records what a report needs to be reproduced
    for key in ("versions", "model_sha256", "argv"):
        assert key in verdict
    assert verdict["versions"]["llama-cpp-python"]
    assert "impdiff diff --model" in text  # how to reproduce it
    ctext = plain_text(clean)
    assert "no divergence above the noise floor" in ctext
    assert "Noise floor per tap" in ctext and "top-1 agreement 100.0%" in ctext


@requires_llama_cpp
def test_report_command_rebuilds_from_small_files(diff_runs, tmp_path):
    """`impdiff report` rebuilds; without taps.parquet it uses the derived positions table."""
    run = tmp_path / "faulted"
    shutil.copytree(diff_runs["faulted"], run)
    (run / "report.html").unlink()
    (run / "taps.parquet").unlink()
    proc = impdiff("report", str(run))
    assert proc.returncode == 0, proc.stderr
    page = (run / "report.html").read_text()
    assert_images_are_pngs(scan(page), at_least=2)
    pos = pd.read_csv(run / "report_positions.csv")
    assert set(pos.role) == {"culprit", "input"}
    assert "Per-position tap errors are not in this directory" not in page
    data = load_run(run)
    assert data.sliding_window == 32 and data.layer_kinds[5] == "global attention"


# -------------------------------------------------------------- 2: committed examples in a browser

@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_reports_in_headless_chromium(name, tmp_path):
    page = REPORTS / name / "report.html"
    if not page.exists():
        pytest.skip(f"{page} not generated yet")
    shot = tmp_path / "shot.png"
    dom = scan(browse(page, screenshot=shot))
    verdicts = [a for a in dom.tags("h1") if a.get("id") == "verdict"]
    assert verdicts
    text = " ".join(" ".join(dom.text).split())
    assert EXAMPLES[name] in text
    assert_runs_nothing(dom)
    assert_images_are_pngs(dom, at_least=0 if "clean" in name else 2)
    assert_not_blank(shot)
    # the data files the page names lie beside it and are small enough to commit
    total = sum(p.stat().st_size for p in page.parent.rglob("*") if p.is_file())
    assert total < 30e6


# ----------------------------------------------------------------- 3: untrusted text runs nothing

def hostile_run_dir(root: Path) -> Path:
    """A gate run dir (bracket + diff/ + junit) whose texts carry markup and handlers."""
    evil = " ".join(PAYLOADS)
    run = root / "hostile"
    (run / "diff").mkdir(parents=True)
    config = {"model": "m", "sweep": [64, 128], "runtimes": ["engine", "llamacpp"],
              "depth": 0.5, "max_tokens": 12, "inject": "swa-on-global", "corpus": evil,
              "form": "code", "seed": 0, "resolution": 32, "chat": False, "device": "cpu",
              "diff": True}
    (run / "run.json").write_text(json.dumps({
        "config": config, "command": f"impdiff gate --prompt {evil}",
        "versions": {"impdiff": evil, "torch": "2", "llama-cpp-python": "0.3", "device": "cpu"},
        "model_path": f"/nowhere/{evil}.gguf", "model_sha256": evil}))
    results = [{"runtime": rt, "length": n, "n_tokens": n, "passed": ok, "answer": evil,
                "generated": f" {evil}\nmore {evil}", "seconds": 0.1, "phase": "sweep"}
               for n, e_ok in ((64, True), (128, False))
               for rt, ok in (("engine", e_ok), ("llamacpp", True))]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (run / "outcome.json").write_text(json.dumps({
        "summary": f"engine fails {evil}", "boundary": {"last_pass": 64, "first_fail": 128,
                                                         "resolution": 32}, "both_fail": []}))
    (run / "junit.xml").write_text(
        '<testsuite name="x"><testcase name="a &lt;script&gt;alert(4)&lt;/script&gt;">'
        '<failure message="&lt;img src=x onerror=alert(5)&gt;"/></testcase></testsuite>')
    positions = list(range(128))
    rows = [{"layer": layer, "tap": tap, "median": 0.5 if (layer, tap) == (1, "kqv") else 1e-3,
             "p99": 0.6, "max": 0.7, "cos_min": 0.9, "n_above": 64 if layer else 0, "n_jump": 0,
             "n": 128, "threshold": 0.01, "floor": 1e-3, "diverged": bool(layer), "by": "floor"}
            for layer in (0, 1) for tap in ("attn_norm", "kqv", "l_out")]
    pd.DataFrame(rows).to_csv(run / "diff" / "summary.csv", index=False)
    pd.DataFrame({"position": positions, "kl": [1e-4] * 128, "top1": [1.0] * 128,
                  "top5": [1.0] * 128}).to_csv(run / "diff" / "logits.csv", index=False)
    pd.DataFrame([{"layer": layer, "tap": tap, "position": p, "rel_l2": 0.5 if p >= 64 and
                   layer else 1e-3, "cos": 1.0, "nmse": 0.0, "max_abs": 0.0, "sqnr_db": 0.0}
                  for layer in (0, 1) for tap in ("attn_norm", "kqv", "l_out")
                  for p in positions]).to_parquet(run / "diff" / "taps.parquet")
    (run / "diff" / "verdict.json").write_text(json.dumps({
        "verdict": {"diverged": True, "layer": 1, "tap": "kqv", "layer_kind": evil,
                    "positions": positions[64:], "positions_text": "positions ≥ 64",
                    "error": 0.5, "threshold": 0.01, "n_positions": 64,
                    "substitution": "local to that layer", "substitution_detail": evil,
                    "sentence": f"engine diverges at layer 1 ({evil}), `kqv`"},
        "noise_floor": {"kqv": 1e-3}, "logits": {"top1": 1.0, "top5": 1.0, "kl_mean": 1e-4,
                                                  "kl_max": 1e-4, "n_positions": 128},
        "length": 128, "sentinel_token": 60, "inject": evil, "prompt": evil}))
    return run


def test_untrusted_text_is_escaped(tmp_path):
    run = hostile_run_dir(tmp_path)
    page = write_report(run).read_text()
    assert not re.search(r"<\s*script", page, re.I)
    assert not re.search(r"<\s*(img|svg)[^>]*\son\w+\s*=", page, re.I)
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    dom = scan(page)
    assert_runs_nothing(dom)
    assert len(dom.tags("img")) == 2  # the two figures, never the payload's <img src=x>
    text = plain_text(page)
    assert PAYLOADS[0] in text and PAYLOADS[1] in text  # shown, as text
    assert "Gate checks against the baseline" in text and "REGRESSION" in text


def test_untrusted_text_runs_nothing_in_chromium(tmp_path):
    chromium()
    run = hostile_run_dir(tmp_path)
    page = write_report(run)
    dom = scan(browse(page))
    assert_runs_nothing(dom)
    assert_images_are_pngs(dom, at_least=2)
    assert len(dom.tags("img")) == 2 and not dom.tags("svg")
    text = " ".join(dom.text)
    assert PAYLOADS[0] in text and PAYLOADS[1] in text


def test_agreement_bracket_report_speaks_of_agreement_not_recall(tmp_path):
    run = hostile_run_dir(tmp_path)
    meta = json.loads((run / "run.json").read_text())
    meta["config"].update(criterion="agreement", kl_max=1e-5)
    (run / "run.json").write_text(json.dumps(meta))
    rows = [json.loads(line) | {"kl_last": 0.0 if json.loads(line)["runtime"] == "llamacpp"
                                else 2.5e-4}
            for line in (run / "results.jsonl").read_text().splitlines()]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = " ".join(plain_text(write_report(run).read_text()).split())
    assert "Agreement with llama.cpp by document length" in text
    assert "the engine agrees at 64 tokens and diverges from 128" in text
    assert "engine — diverges KL at the last prompt position 0.00025" in text
    assert "llamacpp — reference" in text
    for recall_word in ("Sentinel recall", "recalled", "missed", "expected answer"):
        assert recall_word not in text


# ------------------------------------------------------------------------ 4: not a run directory

def test_report_on_a_non_run_dir_is_a_usage_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(impdiff("report", str(tmp_path)), str(tmp_path),
                          "not an impdiff run directory", "verdict.json", "run.json")
    assert_one_line_error(impdiff("report", str(tmp_path / "nope")), "nope", "no such directory")
    diff_dir = tmp_path / "half"
    diff_dir.mkdir()
    (diff_dir / "verdict.json").write_text("{}")
    (diff_dir / "summary.csv").write_text("layer,tap\n")
    assert_one_line_error(impdiff("report", str(diff_dir)), "half", "logits.csv")
    assert not (tmp_path / "report.html").exists()


# ------------------------------------------------------------- 5: a battery (and a battery gate)

def battery_run_dir(tmp_path: Path, junit: str | None = None) -> Path:
    """A battery run dir: one prompt agrees, one parts at token 3 with a diverged layer diff
    (the hostile bracket's diff/, moved to diff-json), model output carrying the payloads."""
    evil = PAYLOADS[0]
    run = tmp_path / "battery"
    run.mkdir()
    shutil.move(str(hostile_run_dir(tmp_path) / "diff"), str(run / "diff-json"))
    results = [
        {"id": "fact-capital", "kind": "fact", "n_prompt": 13, "text_a": " Paris",
         "text_b": " Paris", "correct_a": True, "correct_b": True, "first_divergence": None,
         "verdict": "", "diff_diverged": None, "diff_dir": ""},
        {"id": "json-person", "kind": "json", "n_prompt": 32, "text_a": f" {evil}",
         "text_b": " {}", "correct_a": False, "correct_b": True, "first_divergence": 3,
         "verdict": f"engine diverges at layer 1 ({evil}), `kqv`", "diff_diverged": True,
         "diff_dir": str(tmp_path / "elsewhere" / "diff-json")}]
    (run / "battery.json").write_text(json.dumps({
        "config": {"a": "engine:m", "b": "llamacpp:m", "inject": "transposed-block@1"},
        "labels": ["engine", "llama.cpp"], "summary": f"1 of 2 prompts part {evil}",
        "command": "impdiff battery --model m", "versions": {"impdiff": "0"},
        "model_path": None, "results": results}))
    if junit is not None:
        (run / "junit.xml").write_text(junit)
    return run


def test_battery_report_shows_the_prompts_and_links_each_diff(tmp_path):
    run = battery_run_dir(tmp_path)
    page = write_report(run).read_text()
    assert verdict_line(page) == f"1 of 2 prompts part {PAYLOADS[0]}"
    assert '<section class="verdict diverged">' in page
    dom = scan(page)
    assert_runs_nothing(dom)
    assert [a["href"] for a in dom.tags("a")] == ["diff-json/report.html"]
    assert (run / "diff-json" / "report.html").is_file()  # the linked page is written too
    text = plain_text(page)
    assert "Prompts: engine (a) against llama.cpp (b), greedy" in text
    assert "1 of 2 (engine vs llama.cpp, greedy)" in text and "transposed-block@1" in text
    assert "Layer diff of json-person up to its first divergent token" in " ".join(text.split())
    assert "&lt;script&gt;" in page and PAYLOADS[0] in text  # model output shown as text
    assert_images_are_pngs(dom, at_least=2)  # the culprit prompt's heatmap and positions


@pytest.mark.parametrize("failure, status, line", [
    ('<failure message="json-person: agreed in the baseline"/>', "regressed", "Gate fails"),
    ("", "clean", "Gate passes")])
def test_battery_gate_report_says_what_the_gate_says(tmp_path, failure, status, line):
    run = battery_run_dir(tmp_path, f'<testsuite name="g"><testcase name="json-person">'
                                    f'{failure}</testcase></testsuite>')
    data = load_run(run)
    assert (data.kind, data.status) == ("gate", status)
    assert data.secondary[0].startswith(line)
    assert "Gate checks against the baseline" in plain_text(write_report(run).read_text())
