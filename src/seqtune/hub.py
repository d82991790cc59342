"""Sharing the model on the Hugging Face Hub: one pusher for both training scripts.

    pusher = HubPusher.from_arguments(loop_args, model_args)   # None without --push_to_hub
    pusher.check()                     # at start, before data and training: reachable? token valid?
                                       # repository created (or there)? else UserError, exit 2
    pusher.push_checkpoint(folder, step)   # after each published checkpoint, per --hub_strategy
    pusher.push_final(output_dir)      # at the end: final model, card, results; retried

- Token: `--hub_token` (or `--token`), then `HF_TOKEN`, then the stored log-in
  (`hf auth login`). It is taken out of the arguments objects (the Trainer pickles its
  arguments into training_args.bin) and lives only in this object, never in a file.
- Repository: `--hub_model_id` (`--push_to_hub_model_id`), `name` or `namespace/name`;
  without one, the basename of `--output_dir`, in the token owner's namespace.
- `--hub_strategy`: `end` (final push only), `every_save` (the model files of each
  checkpoint to the repository root), `checkpoint` (plus the whole checkpoint under
  `last-checkpoint/`, for resuming), `all_checkpoints` (plus each under its own name: `checkpoint-N/`,
  or the no_trainer script's `step_N/` and `epoch_E/`).
  A checkpoint that is not a loadable model (no config.json: Accelerate's save_state, as
  the no_trainer script writes) goes under `last-checkpoint/` instead of the root.
- A failed upload during training is logged and remembered; training goes on and the
  final push carries what is missing. The final push is tried a few times; if it still
  fails, the local output is complete and the run ends with a UserError saying how to
  upload it later.

Pushes are synchronous and made by the main process only. seqtune does not use the
Trainer's own push machinery: that one pushes from checkpoint folders while they are
still being staged, writes its own card, and reaches the hub from background threads.
"""

from __future__ import annotations

import logging
import os
import time

from .checkpoints import MANIFEST_NAME, is_complete, newest_checkpoint
from .errors import UserError
from .outputs import shareable_files
from .runtime import is_main_process

logger = logging.getLogger(__name__)

STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
LAST_CHECKPOINT = "last-checkpoint"
FINAL_COMMIT_MESSAGE = "End of training"
FINAL_PUSH_ATTEMPTS = 3
FINAL_PUSH_WAIT_S = 1.0  # doubled after each failed attempt

# Files of a checkpoint that hold training state rather than the model (Trainer and Accelerate names).
_TRAINING_STATE_PREFIXES = (
    "optimizer",
    "scheduler",
    "rng_state",
    "random_states",
    "scaler",
    "sampler",
    "custom_checkpoint",
    "dl_state",
)
_TRAINING_STATE_NAMES = ("trainer_state.json", MANIFEST_NAME)

UPLOAD_FIX = (
    'hf upload {repo} {folder} . --exclude "checkpoint-*" --exclude "step_*" --exclude "epoch_*" --exclude ".*" '
    '--exclude "seqtune_run.json"'
)


def resolve_token(flag_token: str | None, flag_name: str = "--hub_token") -> tuple[str | None, str | None]:
    """(token, where it came from): the flag, then HF_TOKEN, then the stored log-in."""
    if flag_token and flag_token.strip():
        return flag_token.strip(), flag_name
    if os.environ.get("HF_TOKEN", "").strip():
        return os.environ["HF_TOKEN"].strip(), "HF_TOKEN"
    from huggingface_hub import get_token

    stored = get_token()
    if stored:
        return stored, "the stored log-in (hf auth login)"
    return None, None


def model_files_in_checkpoint(folder: str) -> list[str]:
    """The top-level files of a checkpoint that make up the model (not optimizer, RNG or trainer state)."""
    names = []
    for name in sorted(os.listdir(folder)):
        if not os.path.isfile(os.path.join(folder, name)) or name.startswith("."):
            continue
        if name in _TRAINING_STATE_NAMES or name.startswith(_TRAINING_STATE_PREFIXES):
            continue
        names.append(name)
    return names


def _all_files(folder: str) -> list[str]:
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def _status(error) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _first_line(error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --------------------------------------------------------------------------- the start check, step by step


def _require_online() -> None:
    from huggingface_hub import constants

    # huggingface_hub 1.x asks is_offline_mode(); 0.x (the TensorFlow environment's) has the constant only.
    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    if offline:
        raise UserError(
            "--push_to_hub needs the network, but offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE). "
            "Fix: unset HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE, or drop --push_to_hub."
        )


def _require_token(token: str | None) -> None:
    if not token:
        raise UserError(
            "--push_to_hub needs a Hub token with write access and none was found. "
            "Fix: run `hf auth login`, set HF_TOKEN, or pass --hub_token."
        )


def _http_errors() -> tuple[type[BaseException], ...]:
    """What the installed huggingface_hub raises for hub answers and network failures: httpx2's errors
    (1.x and later) or requests' (0.x, the TensorFlow environment's)."""
    try:
        import httpx2

        return (httpx2.HTTPError,)
    except ModuleNotFoundError:
        import requests

        return (requests.RequestException,)


def _whoami(api, endpoint: str, token_source: str | None) -> dict:
    """The token owner's account, as the hub describes it; UserError when the hub cannot say."""
    try:
        return api.whoami()
    except _http_errors() as error:  # hub errors (HfHubHTTPError) and network errors alike
        raise _whoami_failure(error, endpoint, token_source) from None


def _whoami_failure(error, endpoint: str, token_source: str | None) -> UserError:
    """Tell a rejected token, a hub in trouble and an unreachable hub apart: each has its own fix."""
    status = _status(error)
    if status == 401:
        return UserError(
            f"the Hub at {endpoint} rejected the token from {token_source} (401 Unauthorized). "
            f"Fix: create a token with write access at https://huggingface.co/settings/tokens, then pass "
            f"--hub_token, set HF_TOKEN, or run `hf auth login --force`."
        )
    if status is not None:
        return UserError(
            f"the Hub at {endpoint} answered {status} when checking the token: {_first_line(error)}. "
            f"Fix: try again later, or drop --push_to_hub and upload the output dir afterwards."
        )
    return UserError(
        f"cannot reach the Hub at {endpoint} ({type(error).__name__}: {_first_line(error)}). "
        f"--push_to_hub checks this before training so that no run is lost. "
        f"Fix: check the network connection (and HF_ENDPOINT if you set it), or drop --push_to_hub."
    )


def _require_write_role(who: dict, token_source: str | None) -> None:
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise UserError(
            f"the token from {token_source} (user {who.get('name')}) is read-only and cannot upload. "
            f"Fix: create a token with write access at https://huggingface.co/settings/tokens."
        )


def _require_valid_repo_id(repo_id: str, origin: str) -> None:
    """`origin` names what the id came from (the flag or the folder), for the message."""
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except ValueError as error:
        raise UserError(
            f"{origin} does not make a valid Hub repository name: {error} "
            f"Fix: pass --hub_model_id NAME (letters, digits, '-', '_', '.')."
        ) from None


def _create_repo(api, repo_id: str, private: bool | None, user: str | None) -> None:
    """Create the repository, or make sure an existing one is ours to use."""
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
    except _http_errors() as error:
        status = _status(error)
        raise UserError(
            f"cannot create or use the Hub repository {repo_id} as user {user} "
            f"({status or type(error).__name__}: {_first_line(error)}). Fix: pass --hub_model_id NAME for a "
            f"repository in your namespace, or ORG/NAME for an organization you may write to."
        ) from None


# --------------------------------------------------------------------------- what goes where (--hub_strategy)


def _operations(folder: str, names: list[str], prefix: str = "") -> list:
    """Uploads of `folder`'s files `names` (relative paths) to `prefix` + the same path in the repository."""
    from huggingface_hub import CommitOperationAdd

    return [
        CommitOperationAdd(
            path_in_repo=f"{prefix}{name}".replace(os.sep, "/"), path_or_fileobj=os.path.join(folder, name)
        )
        for name in names
    ]


def _whole_folder_operations(folder: str, under: str) -> list:
    return _operations(folder, _all_files(folder), prefix=f"{under}/")


def _is_loadable_model(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "config.json"))


def _checkpoint_place(folder: str, strategy: str) -> str | None:
    """Where the whole checkpoint goes in the repository (None: only its model files, at the root)."""
    if strategy == "checkpoint" or not _is_loadable_model(folder):
        return LAST_CHECKPOINT
    if strategy == "all_checkpoints":
        return os.path.basename(os.path.normpath(folder))
    return None


def _checkpoint_operations(folder: str, place: str | None) -> list:
    """A checkpoint's model files to the root (when it is a loadable model), and the whole of it under `place`."""
    operations = []
    if _is_loadable_model(folder):
        operations += _operations(folder, model_files_in_checkpoint(folder))
    if place is not None:
        operations += _whole_folder_operations(folder, place)
    return operations


def _final_operations(output_dir: str, failed_checkpoints: list[tuple[str, str | None]]) -> list:
    """The finished output dir, plus the checkpoints whose push failed (the root model supersedes theirs)."""
    operations = _operations(output_dir, shareable_files(output_dir))
    places = {place for _, place in failed_checkpoints}
    if LAST_CHECKPOINT in places:
        newest = newest_checkpoint(output_dir)
        if newest is not None:
            operations += _whole_folder_operations(newest, LAST_CHECKPOINT)
    for folder, place in failed_checkpoints:
        if place not in (None, LAST_CHECKPOINT) and is_complete(folder):  # it may have been rotated away
            operations += _whole_folder_operations(folder, place)
    return operations


# --------------------------------------------------------------------------- the pusher


class HubPusher:
    """Uploads a run's model to one hub repository (see the module docstring)."""

    def __init__(
        self,
        output_dir: str,
        model_id: str | None = None,
        token: str | None = None,
        token_source: str | None = None,
        private: bool | None = None,
        strategy: str = "every_save",
        revision: str | None = None,
    ):
        strategy = getattr(strategy, "value", strategy)
        if strategy not in STRATEGIES:
            raise UserError(f"--hub_strategy {strategy!r} is not one of {', '.join(STRATEGIES)}.")
        self.output_dir = os.path.abspath(output_dir)
        self.model_id = model_id
        self._token = token
        self.token_source = token_source
        self.private = private
        self.strategy = strategy
        self.revision = revision
        self.repo_id: str | None = None
        self.failed_checkpoints: list[tuple[str, str | None]] = []  # (folder, place in the repository)
        self._api = None

    def __repr__(self) -> str:  # never the token
        return (
            f"HubPusher(repo_id={self.repo_id or self.model_id!r}, strategy={self.strategy!r}, "
            f"private={self.private!r})"
        )

    @classmethod
    def from_arguments(cls, loop_args, model_args=None) -> HubPusher | None:
        """A pusher for `--push_to_hub` (None without it), from any loop's arguments.

        Reads push_to_hub, hub_model_id, hub_token, hub_private_repo, hub_strategy and
        hub_revision where the dataclass has them, and `--token` from the model arguments.
        Clears --hub_token from the loop's arguments, which the Trainer pickles into files
        (--token stays: the model loading needs it, and nothing saves the model arguments raw).
        """
        flag_token, flag_name = getattr(loop_args, "hub_token", None), "--hub_token"
        if not flag_token and model_args is not None and getattr(model_args, "token", None):
            flag_token, flag_name = model_args.token, "--token"
        if getattr(loop_args, "hub_token", None):
            loop_args.hub_token = None
        if not getattr(loop_args, "push_to_hub", False):
            if flag_token and flag_name == "--hub_token":
                logger.warning("--hub_token is only used with --push_to_hub; ignoring it.")
            return None
        token, source = resolve_token(flag_token, flag_name)
        return cls(
            loop_args.output_dir,
            model_id=getattr(loop_args, "hub_model_id", None),
            token=token,
            token_source=source,
            private=getattr(loop_args, "hub_private_repo", None) or None,  # not asked: the hub's default
            strategy=getattr(loop_args, "hub_strategy", "every_save"),
            revision=getattr(loop_args, "hub_revision", None),
        )

    @property
    def endpoint(self) -> str:
        from huggingface_hub import constants

        return constants.ENDPOINT

    def _client(self):
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(endpoint=self.endpoint, token=self._token)
        return self._api

    def check(self) -> str | None:
        """Fail now, not after training: the hub answers, the token is valid and may write, the repository exists.

        Returns the repository id (main process; None elsewhere)."""
        if not is_main_process():
            return None
        _require_online()
        _require_token(self._token)
        api = self._client()
        who = _whoami(api, self.endpoint, self.token_source)
        _require_write_role(who, self.token_source)
        name = self.model_id or os.path.basename(os.path.normpath(self.output_dir))
        self.repo_id = name if "/" in name else f"{who['name']}/{name}"
        origin = "--hub_model_id" if self.model_id else f"the --output_dir folder name {name!r}"
        _require_valid_repo_id(self.repo_id, origin)
        _create_repo(api, self.repo_id, self.private, who.get("name"))
        visibility = {True: "private", False: "public"}.get(self.private, "default visibility")
        logger.info(
            "--push_to_hub: %s/%s (%s, strategy %s), token from %s.",
            self.endpoint,
            self.repo_id,
            visibility,
            self.strategy,
            self.token_source,
        )
        return self.repo_id

    def _commit(self, operations: list, message: str):
        info = self._client().create_commit(self.repo_id, operations, commit_message=message, revision=self.revision)
        logger.info(
            "Pushed %d files to %s/%s: %r (commit %s).",
            len(operations),
            self.endpoint,
            self.repo_id,
            message,
            (getattr(info, "oid", None) or "")[:10],
        )
        return info

    def push_checkpoint(self, folder: str, step: int) -> bool:
        """Push a published checkpoint per --hub_strategy. Never raises for upload problems."""
        if not is_main_process() or self.strategy == "end" or self.repo_id is None:
            return False
        place = _checkpoint_place(folder, self.strategy)
        try:
            self._commit(_checkpoint_operations(folder, place), f"Training in progress, step {step}")
        except (*_http_errors(), OSError) as error:  # network, hub answers, files gone: training goes on
            self.failed_checkpoints.append((folder, place))
            logger.warning(
                "Push of step %d to %s failed (%s: %s). Training goes on; the final push will upload what is missing.",
                step,
                self.repo_id,
                type(error).__name__,
                _first_line(error),
            )
            return False
        if place == LAST_CHECKPOINT:  # last-checkpoint/ is up to date again
            self.failed_checkpoints = [(f, p) for f, p in self.failed_checkpoints if p != LAST_CHECKPOINT]
        return True

    def push_final(self, output_dir: str | None = None, commit_message: str = FINAL_COMMIT_MESSAGE) -> None:
        """Push the finished output dir (model, card, results, plots), retrying; UserError if it never lands."""
        if not is_main_process() or self.repo_id is None:
            return
        output_dir = os.path.abspath(output_dir or self.output_dir)
        wait = FINAL_PUSH_WAIT_S
        error = None
        for attempt in range(1, FINAL_PUSH_ATTEMPTS + 1):
            try:
                self._commit(_final_operations(output_dir, self.failed_checkpoints), commit_message)
                self.failed_checkpoints.clear()
                return
            except (*_http_errors(), OSError) as caught:
                error = caught
                logger.warning(
                    "Final push to %s failed (attempt %d of %d: %s: %s).",
                    self.repo_id,
                    attempt,
                    FINAL_PUSH_ATTEMPTS,
                    type(caught).__name__,
                    _first_line(caught),
                )
                if attempt < FINAL_PUSH_ATTEMPTS:
                    time.sleep(wait)
                    wait *= 2
        raise UserError(
            f"training finished and everything is in {output_dir}, but the push to {self.endpoint}/{self.repo_id} "
            f"failed {FINAL_PUSH_ATTEMPTS} times ({type(error).__name__}: {_first_line(error)}). "
            f"Fix: when the Hub is reachable, upload it with: {UPLOAD_FIX.format(repo=self.repo_id, folder=output_dir)}"
        )


__all__ = ["HubPusher", "resolve_token", "model_files_in_checkpoint", "STRATEGIES"]
