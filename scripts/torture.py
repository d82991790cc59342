#!/usr/bin/env python
"""Kill torture: SIGKILL a training run again and again, resume it with the same command, check it.

A preemptible machine may die at any instant: while a step runs, while a checkpoint is
written, while an old checkpoint is deleted, while the final model is saved. This script
runs one of seqtune's training scripts on a tiny model with a checkpoint every few steps,
kills its whole process group with SIGKILL at random moments of those kinds, and starts it
again with exactly the same command each time. It checks:

- after every kill: every visible `checkpoint-N` (Trainer) or `step_N` (no_trainer) folder is
  complete (its manifest lists files that exist with the recorded sizes, the weights load, the
  recorded step is N);
- on every restart: the run resumes from the newest complete checkpoint the kill left
  (or, with none, starts again: seqtune recognises its own unfinished run);
- at the end: the run finishes (exit 0, marker "finished") with the expected number of
  steps, leaves no scratch behind, and (`--same_weights`, the default for the no_trainer
  script) its final weights equal those of an uninterrupted run of the same command.

    python scripts/torture.py --kills 20                      # the Trainer script
    python scripts/torture.py --script examples/pytorch/summarization/run_summarization_no_trainer.py

Exit status 0 when every check held, 1 otherwise. Nothing is downloaded: the tiny model and
the data are built with seqtune.demo's builders into --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

TRAINER_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization.py")
LOOP_SCRIPT = os.path.join(REPO, "examples", "pytorch", "summarization", "run_summarization_no_trainer.py")

MANIFEST_NAME = "seqtune_checkpoint.json"  # written by seqtune.checkpoints; checked here independently
STAGING_NAME = ".seqtune-staging"
TRASH_PREFIX = ".seqtune-trash-"
# The Trainer script's checkpoint-N and the no_trainer script's step_N (the Hugging Face scripts' names).
DCP_FOLDER = "fsdp"  # seqtune.fsdp.FOLDER: where an --fsdp checkpoint keeps its DCP shards
CHECKPOINT_RE = re.compile(r"^(?:checkpoint-|step_)(\d+)$")

# When to kill: at a random moment of start-up, of a training step, of a checkpoint write,
# of a rotation (an old checkpoint being deleted), of the final model save.
MODES = ("startup", "step", "checkpoint", "rotation")
FINAL_MODE = "final"


# --------------------------------------------------------------------------- the command


def is_loop_script(script: str) -> bool:
    return "no_trainer" in os.path.basename(script)


def build_command(
    script: str,
    model: str,
    files: dict,
    output_dir: str,
    max_steps: int,
    save_steps: int,
    save_total_limit: int,
    seed: int = 0,
    processes: int = 1,
    deepspeed: str | None = None,
    fsdp: bool = False,
) -> list[str]:
    """The one command every attempt runs (same flags each time, as a user would); with `processes` > 1
    under torchrun (--standalone: a free rendezvous port each attempt), with `deepspeed` a ZeRO config,
    with `fsdp` the script's --fsdp (FSDP2, DCP checkpoints)."""
    common = [
        "--model_name_or_path",
        model,
        "--train_file",
        files["train"],
        "--source_prefix",
        "summarize: ",
        "--output_dir",
        output_dir,
        "--max_source_length",
        "96",
        "--max_target_length",
        "24",
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "1e-3",
        "--seed",
        str(seed),
        "--report_to",
        "none",
    ]
    if is_loop_script(script):
        specific = [  # this loop evaluates after every epoch, so it needs a validation file
            "--validation_file",
            files["validation"],
            "--per_device_eval_batch_size",
            "16",
            "--max_eval_samples",
            "4",
            "--max_train_steps",
            str(max_steps),
            "--checkpointing_steps",
            str(save_steps),
            "--save_total_limit",
            str(save_total_limit),
        ]
    else:
        specific = [
            "--do_train",
            "--max_steps",
            str(max_steps),
            "--save_steps",
            str(save_steps),
            "--save_total_limit",
            str(save_total_limit),
            "--logging_steps",
            str(save_steps),
            "--disable_tqdm",
            "true",
        ]
    if deepspeed:
        specific += ["--deepspeed", deepspeed]
    if fsdp:  # the Trainer script's --fsdp takes transformers' words (on CPUs: seqtune's FSDP2, as the loop's)
        specific += ["--fsdp"] if is_loop_script(script) else ["--fsdp", "full_shard auto_wrap"]
    if processes > 1:  # the kill hits torchrun's whole process group: every rank dies at once
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        return [*launcher, script, *common, *specific]
    return [sys.executable, script, *common, *specific]


def child_env(workdir: str) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "HF_HOME": os.path.join(workdir, "hf-home"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


# --------------------------------------------------------------------------- looking at the output dir


def visible_checkpoints(output_dir: str) -> dict[int, str]:
    """Every folder named checkpoint-N or step_N (complete or not: the point is that all must be complete)."""
    if not os.path.isdir(output_dir):
        return {}
    found = {}
    for name in os.listdir(output_dir):
        match = CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found[int(match.group(1))] = os.path.join(output_dir, name)
    return found


def checkpoint_problems(folder: str, step: int) -> list[str]:
    """Independent of seqtune's reader: manifest, sizes, loadable weights, recorded step."""
    problems = []
    manifest_path = os.path.join(folder, MANIFEST_NAME)
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        return [f"{folder}: visible but its manifest is missing or unreadable ({error})"]
    if manifest.get("step") != step:
        problems.append(f"{folder}: manifest says step {manifest.get('step')}")
    for name, size in manifest.get("files", {}).items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            problems.append(f"{folder}: {name} listed but missing")
        elif os.path.getsize(path) != size:
            problems.append(f"{folder}: {name} has {os.path.getsize(path)} bytes, manifest says {size}")
    # safetensors weights, DeepSpeed's per-rank model states (the Accelerate script under DeepSpeed), or the
    # torch.distributed.checkpoint folder of either script under --fsdp (every shard read back)
    files = manifest.get("files", {})
    weights = [n for n in files if n.endswith((".safetensors", "model_states.pt"))]
    weights += sorted({n.split("/")[0] for n in files if n.startswith(DCP_FOLDER + "/")})
    if not weights:
        problems.append(f"{folder}: no weights (.safetensors, DeepSpeed model states or FSDP's DCP shards)")
    for name in weights:
        try:
            load_weights(os.path.join(folder, name))
        except Exception as error:  # a torn file shows up here
            problems.append(f"{folder}: {name} does not load ({type(error).__name__}: {error})")
    state = os.path.join(folder, "trainer_state.json")
    if os.path.isfile(state):
        try:
            with open(state, encoding="utf-8") as handle:
                recorded = json.load(handle).get("global_step")
            if recorded != step:
                problems.append(f"{folder}: trainer_state.json says global_step {recorded}")
        except (OSError, ValueError) as error:
            problems.append(f"{folder}: trainer_state.json unreadable ({error})")
    return problems


def load_weights(path: str) -> dict:
    if os.path.isdir(path):  # FSDP's DCP shards: gathered into one torch.save file, then read
        import torch
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as scratch:
            try:
                dcp_to_torch_save(path, os.path.join(scratch, "state.pt"))
            except CheckpointException as error:  # a BaseException: the checker's `except Exception` would miss it
                raise RuntimeError(str(error).strip().splitlines()[-1]) from None
            return torch.load(os.path.join(scratch, "state.pt"), map_location="cpu", weights_only=False)
    if path.endswith(".pt"):  # DeepSpeed's model states: a pickled dict written by torch.save
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    from safetensors.torch import load_file

    return load_file(path)


def newest_valid(output_dir: str) -> int | None:
    valid = [step for step, folder in visible_checkpoints(output_dir).items() if not checkpoint_problems(folder, step)]
    return max(valid) if valid else None


def _staging_entries(output_dir: str) -> set[tuple[str, int]]:
    root = os.path.join(output_dir, STAGING_NAME)
    try:
        return {(entry.name, entry.inode()) for entry in os.scandir(root)}
    except OSError:
        return set()


def _trash(output_dir: str) -> set[str]:
    try:
        return {name for name in os.listdir(output_dir) if name.startswith(TRASH_PREFIX)}
    except OSError:
        return set()


# --------------------------------------------------------------------------- one attempt


@dataclass
class Attempt:
    number: int
    mode: str | None  # how it was to be killed (None: left to finish)
    killed: bool = False
    returncode: int | None = None
    seconds: float = 0.0
    newest_after: int | None = None  # newest complete checkpoint when the attempt ended
    published: bool = False  # whether it made a checkpoint visible that was not there before
    log: str = ""
    notes: list[str] = field(default_factory=list)


def _wait(predicate, process, deadline: float, poll: float = 0.002) -> bool:
    """Poll until predicate() holds; False when the process ended or the deadline passed first."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(poll)
    return False


def kill_all(process) -> None:
    """SIGKILL the run and every process under it, as a machine that dies would. A process group is not
    enough: torchrun starts each worker in a session of its own, so killing its group left the workers
    training on (and writing) after the "kill"."""
    import psutil

    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    for worker in workers:
        try:
            worker.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    psutil.wait_procs(workers, timeout=10)


def _sleep_alive(seconds: float, process) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and process.poll() is None:
        time.sleep(0.002)


def run_attempt(
    number: int,
    command: list[str],
    output_dir: str,
    env: dict,
    log_dir: str,
    mode: str | None,
    rng: random.Random,
    startup_guess: float,
    timeout: float,
) -> Attempt:
    attempt = Attempt(number=number, mode=mode)
    log_path = os.path.join(log_dir, f"attempt-{number:02d}.log")
    attempt.log = log_path
    before_checkpoints = set(visible_checkpoints(output_dir))
    before_staging = _staging_entries(output_dir)
    before_trash = _trash(output_dir)  # a killed rotation leaves trash; wait for new trash
    started = time.monotonic()
    deadline = started + timeout
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            trigger = False
            if mode == "startup":
                _sleep_alive(rng.uniform(0.0, startup_guess), process)
                trigger = process.poll() is None
            elif mode == "step":
                # After the first checkpoint of this attempt, somewhere in the next few steps.
                trigger = _wait(
                    lambda: set(visible_checkpoints(output_dir)) - before_checkpoints, process, deadline, 0.005
                )
                if trigger:
                    _sleep_alive(rng.uniform(0.0, 0.3), process)
            elif mode in ("checkpoint", "rotation"):
                # While a checkpoint is written into the staging folder (files, manifest, rename), or while
                # an old one is deleted (renamed to trash, then removed). Short moments: a busy machine's
                # poll may miss them, so after 3 new checkpoints the kill comes anyway (and says so).
                if mode == "checkpoint":
                    seen = lambda: _staging_entries(output_dir) - before_staging  # noqa: E731
                else:
                    seen = lambda: _trash(output_dir) - before_trash  # noqa: E731
                trigger = _wait(
                    lambda: seen() or len(set(visible_checkpoints(output_dir)) - before_checkpoints) >= 3,
                    process,
                    deadline,
                    0.001,
                )
                if trigger and not seen():
                    attempt.notes.append(f"no {mode} moment caught; killed after a publish")
                elif trigger and mode == "checkpoint":
                    _sleep_alive(rng.uniform(0.0, 0.05), process)
            elif mode == FINAL_MODE:
                final = os.path.join(output_dir, STAGING_NAME, "final-model")
                trigger = _wait(lambda: os.path.isdir(final), process, deadline, 0.001)
                if trigger:
                    _sleep_alive(rng.uniform(0.0, 0.03), process)
            if trigger and process.poll() is None:
                kill_all(process)
                attempt.killed = True
            remaining = max(deadline - time.monotonic(), 1.0)
            attempt.returncode = process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            kill_all(process)
            attempt.returncode = process.wait()
            attempt.notes.append(f"timed out after {timeout:.0f} s")
        finally:
            if process.poll() is None:
                kill_all(process)
                process.wait()
    attempt.seconds = time.monotonic() - started
    attempt.newest_after = newest_valid(output_dir)
    attempt.published = bool(set(visible_checkpoints(output_dir)) - before_checkpoints)
    return attempt


def _resumed_from(log_path: str) -> int | None | str:
    """The checkpoint step an attempt's log says it resumed from (None: started afresh)."""
    with open(log_path, errors="replace") as handle:
        text = handle.read()
    match = re.search(r"Resuming from \S*(?:checkpoint-|step_)(\d+)", text)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- the torture


@dataclass
class Report:
    script: str
    kills: int = 0
    attempts: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    final_step: int | None = None
    expected_steps: int = 0
    weights_equal: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"kill torture of {os.path.basename(self.script)}: {self.kills} kills, "
            f"{len(self.attempts)} attempts, final step {self.final_step}/{self.expected_steps}"
        ]
        for a in self.attempts:
            how = f"killed ({a.mode})" if a.killed else f"exit {a.returncode}"
            lines.append(
                f"  attempt {a.number:2d}: {how:<22} after {a.seconds:5.1f} s; newest complete checkpoint "
                f"{a.newest_after}{'; ' + '; '.join(a.notes) if a.notes else ''}"
            )
        if self.weights_equal is not None:
            lines.append(f"  final weights equal to an uninterrupted run: {self.weights_equal}")
        lines.append("  OK" if self.ok else "  PROBLEMS:\n    " + "\n    ".join(self.problems))
        return "\n".join(lines)


def final_problems(output_dir: str, expected_steps: int, loop: bool) -> tuple[list[str], int | None]:
    """What must hold once the run has finished."""
    problems = []
    try:
        with open(os.path.join(output_dir, "seqtune_run.json"), encoding="utf-8") as handle:
            status = json.load(handle).get("status")
    except (OSError, ValueError):
        status = None
    if status != "finished":
        problems.append(f"run marker status is {status!r}, not 'finished'")
    final_step = None
    if loop:  # the optimizer steps the loop's own progress record says it took
        final_step = loop_completed_steps(os.path.join(output_dir, f"step_{expected_steps}"))
    else:
        with open(os.path.join(output_dir, "trainer_state.json"), encoding="utf-8") as handle:
            final_step = json.load(handle).get("global_step")
    if final_step != expected_steps:
        problems.append(f"the run finished at step {final_step}, expected {expected_steps}")
    for step, folder in visible_checkpoints(output_dir).items():
        problems += checkpoint_problems(folder, step)
    if expected_steps not in visible_checkpoints(output_dir):
        problems.append(f"no checkpoint of step {expected_steps}")
    leftovers = [name for name in os.listdir(output_dir) if name.startswith(".seqtune-")]
    if leftovers:
        problems.append(f"scratch left behind: {leftovers}")
    if not os.path.isfile(os.path.join(output_dir, "model.safetensors")):
        problems.append("no final model.safetensors")
    return problems, final_step


def loop_completed_steps(checkpoint: str) -> int | None:
    """completed_steps of the no_trainer loop's TrainingProgress, saved by Accelerate in a checkpoint."""
    import torch

    path = os.path.join(checkpoint, "custom_checkpoint_0.pkl")
    if not os.path.isfile(path):
        return None
    return torch.load(path, weights_only=True).get("completed_steps")


def compare_weights(path_a: str, path_b: str) -> tuple[bool, str]:
    import torch

    a, b = load_weights(path_a), load_weights(path_b)
    if set(a) != set(b):
        return False, f"different tensors: {sorted(set(a) ^ set(b))[:5]}"
    worst = max(((name, (a[name].float() - b[name].float()).abs().max().item()) for name in a), key=lambda x: x[1])
    equal = all(torch.equal(a[name], b[name]) for name in a)
    return equal, f"largest difference {worst[1]:.3g} in {worst[0]}"


def build_world(workdir: str) -> tuple[str, dict]:
    from seqtune.demo import make_base_model, make_corpus_files

    model = make_base_model(os.path.join(workdir, "tiny-t5"), kind="t5")
    files = make_corpus_files(os.path.join(workdir, "data"), train=64, validation=8, test=8)
    return model, files


def torture(
    script: str = TRAINER_SCRIPT,
    kills: int = 3,
    workdir: str | None = None,
    seed: int = 0,
    modes: list[str] | None = None,
    model: str | None = None,
    files: dict | None = None,
    save_steps: int = 2,
    save_total_limit: int = 2,
    max_steps: int | None = None,
    same_weights: bool | None = None,
    processes: int = 1,
    deepspeed: str | None = None,
    fsdp: bool = False,
    attempt_timeout: float = 300.0,
    verbose: bool = True,
) -> Report:
    """Kill `script` `kills` times at random moments, resume it each time, and check everything.

    `modes` fixes the kind of each kill in order (default: random, with a kill during the
    final save last when there are at least 4 kills).
    """
    rng = random.Random(seed)
    workdir = os.path.abspath(workdir or tempfile.mkdtemp(prefix="seqtune-torture-"))
    os.makedirs(workdir, exist_ok=True)
    if model is None or files is None:
        model, files = build_world(workdir)
    loop = is_loop_script(script)
    same_weights = loop if same_weights is None else same_weights
    if modes is None:
        modes = [rng.choice(MODES) for _ in range(kills)]
        if kills >= 4:
            modes[-1] = FINAL_MODE
    modes = list(modes)[:kills]
    if max_steps is None:  # each kill costs at most a couple of checkpoints of progress
        max_steps = save_steps * (3 * kills + 6)
    report = Report(script=script, expected_steps=max_steps)
    env = child_env(workdir)
    log_dir = os.path.join(workdir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    output_dir = os.path.join(workdir, "run")
    launch = {"processes": processes, "deepspeed": deepspeed, "fsdp": fsdp}
    command = build_command(script, model, files, output_dir, max_steps, save_steps, save_total_limit, seed, **launch)
    say = print if verbose else (lambda *a, **k: None)
    say("command: " + " ".join(command))

    startup_guess = 8.0
    expected_resume = None  # what the next attempt must resume from
    number = 0
    for mode in modes + [None]:
        number += 1
        attempt = run_attempt(number, command, output_dir, env, log_dir, mode, rng, startup_guess, attempt_timeout)
        report.attempts.append(attempt)
        resumed = _resumed_from(attempt.log)
        # A run killed during start-up may not have chosen yet; once it trains, it must have chosen right.
        decided = resumed is not None or not attempt.killed or attempt.published
        if decided and resumed != expected_resume:
            report.problems.append(
                f"attempt {number} resumed from checkpoint {resumed}, "
                f"but the newest complete one was {expected_resume} "
                f"(log: {attempt.log})"
            )
        for step, folder in visible_checkpoints(output_dir).items():
            report.problems += [f"after attempt {number}: {p}" for p in checkpoint_problems(folder, step)]
        if attempt.killed:
            report.kills += 1
            expected_resume = attempt.newest_after
            if attempt.seconds > 1.0 and mode != "startup" and attempt.newest_after is not None:
                startup_guess = max(2.0, min(startup_guess, attempt.seconds))
            say(
                f"attempt {number}: killed ({mode}) after {attempt.seconds:.1f} s; newest complete checkpoint "
                f"{attempt.newest_after}"
            )
            continue
        if attempt.returncode != 0:
            report.problems.append(
                f"attempt {number} failed with exit status {attempt.returncode} (log: {attempt.log})"
            )
            break
        if mode is not None:
            attempt.notes.append(f"finished before the {mode} kill came")
        say(f"attempt {number}: finished after {attempt.seconds:.1f} s")
        break
    else:  # pragma: no cover - the last attempt has mode None and always breaks
        pass

    if report.ok:
        problems, report.final_step = final_problems(output_dir, max_steps, loop)
        report.problems += problems
    if report.ok and same_weights:
        reference_dir = os.path.join(workdir, "reference")
        shutil.rmtree(reference_dir, ignore_errors=True)
        reference = build_command(
            script, model, files, reference_dir, max_steps, save_steps, save_total_limit, seed, **launch
        )
        result = subprocess.run(
            reference, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=attempt_timeout
        )
        if result.returncode != 0:
            report.problems.append(f"the uninterrupted reference run failed:\n{result.stdout[-3000:]}")
        else:
            equal, detail = compare_weights(
                os.path.join(output_dir, "model.safetensors"), os.path.join(reference_dir, "model.safetensors")
            )
            report.weights_equal = equal
            if not equal:
                report.problems.append(f"final weights differ from an uninterrupted run ({detail})")
    say(report.summary())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--script", default=TRAINER_SCRIPT, help="the training script to torture (default: the Trainer one)"
    )
    parser.add_argument("--kills", type=int, default=20, help="how many times to SIGKILL the run (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule and of the run")
    parser.add_argument("--workdir", default=None, help="where the model, data, run and logs go (default: a temp dir)")
    parser.add_argument("--save_steps", type=int, default=2)
    parser.add_argument("--save_total_limit", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=None, help="default: enough for every kill to land")
    parser.add_argument("--processes", type=int, default=1, help="run under torchrun with this many processes")
    parser.add_argument("--deepspeed", default=None, help="a DeepSpeed config (e.g. configs/deepspeed/zero2.json)")
    parser.add_argument(
        "--fsdp", action="store_true", help="the script's --fsdp (FSDP2 on CPUs; use with --processes 2)"
    )
    parser.add_argument(
        "--modes", default=None, help=f"comma-separated kill kinds in order, of {MODES + (FINAL_MODE,)}"
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument(
        "--same_weights",
        dest="same_weights",
        action="store_true",
        default=None,
        help="also compare the final weights with an uninterrupted run (default for no_trainer)",
    )
    weights.add_argument("--no_same_weights", dest="same_weights", action="store_false")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.script):
        parser.error(f"no such script: {args.script}")
    modes = args.modes.split(",") if args.modes else None
    if modes and set(modes) - set(MODES + (FINAL_MODE,)):
        parser.error(f"unknown kill kinds: {sorted(set(modes) - set(MODES + (FINAL_MODE,)))}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="seqtune-torture-")
    print(f"work dir (model, data, run, one log per attempt): {workdir}")
    kills = len(modes) if modes else args.kills
    report = torture(
        args.script,
        kills=kills,
        workdir=workdir,
        seed=args.seed,
        modes=modes,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        max_steps=args.max_steps,
        same_weights=args.same_weights,
        processes=args.processes,
        deepspeed=os.path.abspath(args.deepspeed) if args.deepspeed else None,
        fsdp=args.fsdp,
    )
    ok = report.ok and report.kills == kills
    if not ok and report.kills != kills:
        print(f"only {report.kills} of {kills} kills landed before the run finished: raise --max_steps")
    if ok and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        print(f"logs kept in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
