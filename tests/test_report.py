"""The run log (log_history.jsonl), report.html with its plots, `seqtune report`, TensorBoard.

One real Trainer run (6 steps, evaluation every 3, prediction, --report_to tensorboard) feeds
most tests; the kill test runs its own. The report is rendered in headless Chromium.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
from conftest import LOOP_SCRIPT, TRAINER_SCRIPT, quick_args, run_script

from seqtune import report
from seqtune.checkpoints import checkpoint_step, newest_checkpoint

PLOTS = {"plot_training_loss.png", "plot_learning_rate.png", "plot_eval_loss.png", "plot_eval_rouge.png"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NOT_A_TERMINAL = {"SEQTUNE_PROGRESS": ""}  # captured output is a pipe: line-based progress


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def image_sources(page: str) -> list[str]:
    parser = _Images()
    parser.feed(page)
    return parser.sources


def records_of(out, event):
    return [r for r in report.read_log(str(out)) if r["event"] == event]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, t5_model, corpus_files):
    out = tmp_path_factory.mktemp("report") / "run"
    args = quick_args(
        t5_model,
        corpus_files,
        out,
        "--do_train",
        "--do_eval",
        "--do_predict",
        "--predict_with_generate",
        "--max_steps",
        "6",
        "--logging_steps",
        "1",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "3",
        "--save_steps",
        "3",
        "--max_eval_samples",
        "8",
        "--max_predict_samples",
        "6",
        "--report_to",
        "tensorboard",
    )
    result = run_script(TRAINER_SCRIPT, args, env=NOT_A_TERMINAL)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


# --------------------------------------------------------------------------- run log


def test_run_log_has_every_logged_step_and_evaluation(finished_run):
    out, _ = finished_run
    lines = (out / "log_history.jsonl").read_text(encoding="utf-8").splitlines()
    raw = [json.loads(line) for line in lines]  # every line is one complete JSON record
    assert raw[0]["event"] == "start" and raw[0]["step"] == 0
    train = records_of(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(r["loss"] > 0 and r["learning_rate"] > 0 for r in train)
    evals = records_of(out, "eval")
    assert [r["step"] for r in evals] == [3, 6, 6]  # two during training, the final evaluate()
    assert all("eval_rouge1" in r and "eval_loss" in r for r in evals)
    predict = records_of(out, "predict")
    assert len(predict) == 1 and predict[0]["step"] == 6 and "predict_rouge1" in predict[0]


def test_read_log_skips_a_cut_line_and_a_restart_supersedes_later_records(tmp_path):
    log = report.RunLog(str(tmp_path))
    log.start(0)
    for step in range(1, 6):
        log.append({"step": step, "loss": 10.0 - step, "learning_rate": 1e-3})
    log.append({"step": 4, "eval_loss": 3.0})
    with open(tmp_path / report.LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"step": 6, "loss": 1.')  # the run was killed in the middle of a write
    log.start(3)  # resumed from checkpoint-3: steps 4 and 5 are trained again
    for step in (4, 5):
        log.append({"step": step, "loss": 100.0 + step, "learning_rate": 1e-3})

    records = report.read_log(str(tmp_path))
    steps, losses = report.series(records, "train", "loss")
    assert steps == [1, 2, 3, 4, 5]
    assert losses == [9.0, 8.0, 7.0, 104.0, 105.0]
    assert not [r for r in records if r["event"] == "eval"]  # the evaluation at step 4 belonged to the lost attempt


# --------------------------------------------------------------------------- report


def test_report_shows_plots_metrics_configuration_and_examples(finished_run, corpus_files):
    out, _ = finished_run
    page = (out / "report.html").read_text(encoding="utf-8")
    assert set(image_sources(page)) == PLOTS
    for name in PLOTS:
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert not [n for n in os.listdir(out) if n.startswith("plot_") and n not in PLOTS]

    results = json.loads((out / "all_results.json").read_text())
    for key in ("train_loss", "eval_rouge1", "eval_loss", "predict_rougeLsum"):
        assert f"<td>{key}</td>" in page
        assert f"{results[key]:.4f}" in page
    assert "Status: finished" in page
    assert "<td>learning_rate</td>" in page and "<td>source_prefix</td>" in page

    # Source, reference and generated summary side by side, for the first test rows.
    test_rows = [json.loads(line) for line in open(corpus_files["test"], encoding="utf-8")]
    generated = (out / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    table = page.split('<table class="examples">', 1)[1].split("</table>", 1)[0]
    rows = table.split("<tr>")[2:]
    assert len(rows) == report.REPORT_EXAMPLES
    for row, test_row, prediction in zip(rows, test_rows, generated):
        cells = re.findall(r"<td><div>(.*?)</div></td>", row, flags=re.S)
        assert [html.unescape(c) for c in cells] == [test_row["document"], test_row["summary"], prediction]


def tensorboard_scalars(folder) -> dict[str, list[int]]:
    """{tag: [steps]} of every scalar in the TensorBoard event files under `folder`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = [
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.startswith("events.out.tfevents")
    ]
    assert event_files, f"no event files under {folder}"
    scalars: dict[str, list[int]] = {}
    for path in event_files:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(event.step for event in accumulator.Scalars(tag))
    return scalars


def test_tensorboard_event_files_hold_the_losses(finished_run):
    out, _ = finished_run
    scalars = tensorboard_scalars(out / "runs")
    assert sorted(scalars["train/loss"]) == [1, 2, 3, 4, 5, 6]
    assert 3 in scalars["eval/loss"] and 6 in scalars["eval/rouge1"]


def test_progress_is_line_based_when_output_is_not_a_terminal(finished_run):
    _, result = finished_run
    output = result.stdout + result.stderr
    assert "\r" not in output  # no bar redrawn in place: nothing for a CI log to choke on
    assert "it/s]" not in output and "█" not in output
    assert re.search(r"Loading the data: done in \d+:\d\d", output)
    assert re.search(r"Tokenizing the train split: done in \d+:\d\d", output)
    training = re.findall(r"Training: (\d)/6 steps \(\d+%\) \| loss [\d.]+ \| lr [\d.e-]+ \| .*elapsed", output)
    assert training and training[-1] == "6"
    assert re.search(r"Training: \d/6 steps .*\| ETA \d+:\d\d", output)
    assert re.search(r"Evaluating: 1/1 batches \(100%\)", output)
    assert re.search(r"Predicting: 1/1 batches \(100%\)", output)
    assert re.search(r"step 3: eval_loss [\d.]+, eval_rouge1", output)


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--hide-scrollbars",
]

# Added to a copy of the report (next to the original, so the same relative image paths
# resolve): once the page has loaded, write how many images decoded into the DOM.
IMAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  var marker = document.createElement("pre");
  marker.id = "image-check";
  marker.textContent = "images " + loaded.length + "/" + images.length;
  document.body.appendChild(marker);
});
</script>"""


def render(chromium: str, page: str, profile, *extra: str) -> subprocess.CompletedProcess:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, f"file://{page}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def loaded_images(chromium: str, folder, profile) -> str:
    page = (folder / "report.html").read_text(encoding="utf-8").replace("</body>", IMAGE_CHECK + "</body>")
    probe = folder / "report-image-check.html"
    probe.write_text(page, encoding="utf-8")
    try:
        result = render(chromium, str(probe), profile, "--virtual-time-budget=5000", "--dump-dom")
    finally:
        probe.unlink()
    found = re.search(r'<pre id="image-check">images (\d+)/(\d+)</pre>', result.stdout)
    assert found, f"no image check in the DOM: {result.stdout[-500:]} {result.stderr[-1500:]}"
    return f"{found.group(1)}/{found.group(2)}"


def test_report_renders_in_headless_chromium_with_every_image(finished_run, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("SEQTUNE_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (make test installs it: .ci/ensure_chromium)")
        pytest.skip("chromium is not installed (make test installs it: .ci/ensure_chromium)")
    out, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoint-*", "runs", "*.safetensors"))

    screenshot = tmp_path / "report.png"
    result = render(
        chromium,
        str(copy / "report.html"),
        tmp_path / "profile-1",
        "--window-size=1200,1800",
        f"--screenshot={screenshot}",
    )
    assert result.returncode == 0 and screenshot.exists(), result.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(str(screenshot))
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05  # a page was drawn, not a blank canvas

    assert loaded_images(chromium, copy, tmp_path / "profile-2") == f"{len(PLOTS)}/{len(PLOTS)}"
    # The check notices a missing plot.
    (copy / "plot_eval_rouge.png").unlink()
    assert loaded_images(chromium, copy, tmp_path / "profile-3") == f"{len(PLOTS) - 1}/{len(PLOTS)}"


def test_no_trainer_script_writes_the_log_the_report_and_tensorboard(
    t5_model, corpus_files, tmp_path, isolated_hf_home
):
    out = tmp_path / "loop"
    args = quick_args(
        t5_model,
        corpus_files,
        out,
        "--do_predict",
        "--max_train_steps",
        "4",
        "--logging_steps",
        "1",
        "--max_eval_samples",
        "8",
        "--max_predict_samples",
        "6",
        "--with_tracking",
        "--report_to",
        "tensorboard",
    )
    result = run_script(LOOP_SCRIPT, args, env=NOT_A_TERMINAL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in records_of(out, "train")] == [1, 2, 3, 4]
    assert [r["step"] for r in records_of(out, "eval")] == [4]
    assert len(records_of(out, "predict")) == 1
    page = (out / "report.html").read_text(encoding="utf-8")
    assert set(image_sources(page)) == PLOTS and "Status: finished" in page
    assert all((out / name).read_bytes().startswith(PNG_MAGIC) for name in PLOTS)
    output = result.stdout + result.stderr
    assert "\r" not in output and re.search(r"Training: 4/4 steps \(100%\) \| loss [\d.]+ \| lr", output)
    assert re.search(r"Predicting: 1/1 batches \(100%\)", output)
    scalars = tensorboard_scalars(out)
    assert sorted(scalars["train_loss"]) == [1, 2, 3, 4] and scalars["eval_rouge1"] == [4]


# --------------------------------------------------------------------------- killed and resumed


def logged_past_newest_checkpoint(out) -> bool:
    checkpoint = newest_checkpoint(str(out)) if out.exists() else None
    if checkpoint is None:
        return False
    steps = [r["step"] for r in records_of(out, "train")]
    return bool(steps) and max(steps) > checkpoint_step(os.path.basename(checkpoint)) + 1


def test_report_of_a_killed_run_and_the_log_after_resuming(t5_model, corpus_files, tmp_path, isolated_hf_home):
    out = tmp_path / "run"
    common = ["--do_train", "--logging_steps", "1", "--save_steps", "4", "--max_train_samples", "32"]
    command = [sys.executable, TRAINER_SCRIPT, *quick_args(t5_model, corpus_files, out, *common, "--max_steps", "400")]
    env = dict(os.environ, SEQTUNE_PROGRESS="")
    log_path = tmp_path / "killed-run.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:  # until a checkpoint exists and steps after it are logged
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the run logged nothing after its first checkpoint"
            if logged_past_newest_checkpoint(out):
                # Freeze the run and look again: it may have published a newer checkpoint since the first look.
                process.send_signal(signal.SIGSTOP)
                if logged_past_newest_checkpoint(out):
                    break
                process.send_signal(signal.SIGCONT)
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)

    killed_at = max(r["step"] for r in records_of(out, "train"))
    assert report.main([str(out)]) == str(out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "No final metrics yet" in page and "running, or stopped before it finished" in page
    assert {"plot_training_loss.png", "plot_learning_rate.png"} <= set(image_sources(page))
    assert (out / "plot_training_loss.png").read_bytes().startswith(PNG_MAGIC)

    # Resume (same output dir, no --overwrite_output_dir) and finish at a nearer step.
    resumed_from = checkpoint_step(os.path.basename(newest_checkpoint(str(out))))
    end = killed_at + 2
    result = run_script(
        TRAINER_SCRIPT, quick_args(t5_model, corpus_files, out, *common, "--max_steps", str(end)), env=NOT_A_TERMINAL
    )
    assert result.returncode == 0, result.stderr[-3000:]
    raw_steps = [
        json.loads(line).get("step")
        for line in (out / "log_history.jsonl").read_text().splitlines()
        if '"event": "train"' in line
    ]
    assert raw_steps.count(resumed_from + 1) == 2  # logged by the killed attempt and by the resumed one
    assert [r["step"] for r in records_of(out, "train")] == list(range(1, end + 1))
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Status: finished" in page and "<td>train_loss</td>" in page


def test_seqtune_report_refuses_a_folder_without_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        report.main([str(tmp_path)])
    assert exit_.value.code == 2
    assert "holds no seqtune run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing")])
    assert "no such folder" in capsys.readouterr().err


def test_report_shows_a_command_line_that_pastes_back_unchanged(tmp_path):
    """`--source_prefix "summarize: "` keeps its trailing space when the shown command is pasted into a shell."""
    import shlex

    out = tmp_path / "my run"
    out.mkdir()
    command = [
        "run_summarization.py",
        "--source_prefix",
        "summarize: ",
        "--output_dir",
        str(out),
        "--text_column",
        "it's",
        "--hub_token",
        "<redacted>",
    ]
    (out / "seqtune_run.json").write_text(json.dumps({"status": "running", "started_at": 0, "command": command}))
    page = (out / "report.html").read_text() if report.build_report(str(out)) else ""
    shown = re.search(r"<p><code>(.*?)</code></p>", page)
    assert shown, page[:2000]
    assert shlex.split(html.unescape(shown.group(1))) == command
    rebuild = re.search(r"Rebuild with <code>seqtune report (.*?)</code>", page)
    assert shlex.split(html.unescape(rebuild.group(1))) == [str(out)]
