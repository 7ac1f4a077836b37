"""Run-folder guards: nothing in a run folder is silently reused, overwritten or resumed wrongly.

API (paths are `etils.epath.Path`-compatible: local paths or gs://...):
  PREEMPTED_EXIT_CODE = 75            exit status after a SIGTERM-driven checkpoint-and-stop
                                      (sysexits.h EX_TEMPFAIL: "try again later"); a scheduler
                                      requeues the job with --resume on this code
  fingerprint(*, files=(), arrays=None, fields=None, file_identity="sha256") -> str
      hex SHA-256 key of what a derived artefact was computed from
  atomic_write_bytes(path, data) / atomic_write_text(path, text)   temp file + rename
  load_or_compute_cached(path, key, compute, *, on_mismatch="recompute", write=True) -> array
      a keyed `.npz` cache: reused only when its stored key equals `key`
  claim_stage_dir(path, *, resume) -> "fresh" | "resume" | "skip"
  mark_stage_done(path, summary)      summary.json, then the DONE_MARKER file, both atomic
  claim_workdir(workdir, config, *, resume) -> stored config (dict) or None for a new run
  compare_resume_config(stored, new, *, result_fields=("*",), neutral_fields=NEUTRAL_FIELDS,
                        allow_change=False, step=None) -> list[ConfigChange]
  record_config_changes(workdir, changes, *, stage="") -> path of config_changes.jsonl
  latest_valid_checkpoint(steps, restore, *, quarantine=None) -> (step, restored)
  quarantine_step_dir(checkpoint_dir, step)     move a corrupt step out of the manager's sight
  is_uri(path) -> bool                 an object-store path (gs://, s3://, ...)
  absolute(path) -> str                os.path.abspath for local paths, URIs unchanged
  parent_dir(path) -> str              the folder holding `path` (absolute)

Errors: `RunFolderError` (and its subclasses `StaleCacheError`, `ConfigChangeError`) name the
folder or file and the flag that resolves them (`--resume`, `--workdir`,
`--allow_config_change`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import json
import os
import uuid
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging
from etils import epath

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL
DONE_MARKER = "done"
CONFIG_FILE = "config.json"
# Fields whose change on --resume cannot alter the numbers a run produces (glob patterns on
# dotted keys). Everything else counts as result-affecting unless `result_fields` narrows it.
NEUTRAL_FIELDS = ("checkpoint_every", "wandb", "distributed.*", "stages.*.preempt_at_step",
                  "stages.*.max_zero_pair_iterations")


class RunFolderError(RuntimeError):
    """A run folder holds something this run must not reuse, overwrite or resume."""


class StaleCacheError(RunFolderError):
    """A cached artefact was computed from other inputs than the current run's."""


class ConfigChangeError(RunFolderError):
    """--resume with a config whose result-affecting fields differ from the stored one."""


# ------------------------------------------------------------------ paths
def is_uri(path: str | os.PathLike) -> bool:
    """An object-store path (`gs://bucket/...`, `s3://...`): never an `os`/`open` path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """`os.path.abspath` for a local path; a URI unchanged (abspath would turn `gs://b/run`
    into a local folder `<cwd>/gs:/b/run`)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_uri(path) else os.path.abspath(path)


def parent_dir(path: str | os.PathLike) -> str:
    """The absolute folder holding `path` (a stage folder's run folder)."""
    return os.fspath(epath.Path(absolute(path)).parent)


# ------------------------------------------------------------------ keys and atomic writes
def _canonical(value: Any) -> Any:
    """JSON-able, order-independent form of config values (ConfigDicts, tuples, numpy)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"fingerprint: field value {value!r} of type {type(value).__name__} is not "
                    "JSON-like")


def _hash_file(h, path: epath.Path, file_identity: str) -> None:
    if file_identity == "stat":
        st = path.stat()
        h.update(f"{os.fspath(path.resolve())}|{st.length}|{st.mtime}".encode())
        return
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _files_under(folder: epath.Path) -> list[epath.Path]:
    out = []
    for p in folder.iterdir():
        out.extend(_files_under(p) if p.is_dir() else [p])
    return out


def fingerprint(*, files: Iterable[str | os.PathLike] = (),
                arrays: Mapping[str, Any] | None = None, fields: Mapping[str, Any] | None = None,
                file_identity: str = "sha256") -> str:
    """SHA-256 (hex) over the inputs a derived artefact depends on.

    files: each file's bytes (`file_identity="sha256"`: renaming or touching a file keeps the
      key) or its resolved path, size and mtime (`"stat"`: cheap for multi-GB weights). A
      folder contributes every file under it, in sorted relative-path order, with that path.
    arrays: name -> array; dtype, shape and bytes count.  fields: config values (JSON-like).
    Every part is length-prefixed and labelled, so no two different input sets collide by
    concatenation.
    """
    if file_identity not in ("sha256", "stat"):
        raise ValueError(f"file_identity must be 'sha256' or 'stat', got {file_identity!r}")
    h = hashlib.sha256()
    for i, f in enumerate(files):
        path = epath.Path(f)
        if not path.exists():
            raise FileNotFoundError(f"fingerprint: {path} does not exist")
        h.update(f"file[{i}]".encode())
        members = sorted(_files_under(path)) if path.is_dir() else [path]
        for member in members:
            h.update(f"|{member.relative_to(path) if member != path else ''}|".encode())
            _hash_file(h, member, file_identity)
    for name, array in sorted((arrays or {}).items()):
        a = np.ascontiguousarray(np.asarray(array))
        h.update(f"array|{name}|{a.dtype.str}|{a.shape}|{a.nbytes}|".encode())
        h.update(a.tobytes())
    text = json.dumps(_canonical(dict(fields or {})), sort_keys=True, separators=(",", ":"))
    h.update(f"fields|{len(text)}|{text}".encode())
    return h.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: a reader
    (or a run killed mid-write) sees the old file or the new one, never a torn one."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        if not is_uri(path):
            with open(os.fspath(tmp), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        else:  # object stores: the rename is the commit point
            tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ------------------------------------------------------------------ keyed caches
_KEY_ENTRY = "__cache_key__"


def _read_cache(path: epath.Path) -> tuple[str | None, np.ndarray | None]:
    """(stored key, value); (None, None) for a file without a key or one that cannot be read."""
    try:
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
            if _KEY_ENTRY not in z.files or "value" not in z.files:
                return None, None
            return str(z[_KEY_ENTRY]), z["value"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        logging.warning("%s: unreadable cache (%s); treating it as stale", path, e)
        return None, None


def load_or_compute_cached(path: str | os.PathLike, key: str,
                           compute: Callable[[], np.ndarray], *, on_mismatch: str = "recompute",
                           write: bool = True) -> np.ndarray:
    """The array cached at `path` (an `.npz` holding `value` and its key) when its stored key
    equals `key`; otherwise `compute()`, stored atomically with `key` (when `write`, e.g. on
    process 0 only).

    A cache computed from other inputs (`key` differs, or no key: a file from an older version)
    is recomputed with a warning naming both keys, or, with `on_mismatch="refuse"`, raises
    StaleCacheError. This is what stops `ref_logps` of the old data serving new data.
    """
    if on_mismatch not in ("recompute", "refuse"):
        raise ValueError(f"on_mismatch must be 'recompute' or 'refuse', got {on_mismatch!r}")
    path = epath.Path(path)
    if path.exists():
        stored, value = _read_cache(path)
        if stored == key:
            return value
        message = (f"{path} was computed from other inputs (stored key {stored}, this run's "
                   f"{key})")
        if on_mismatch == "refuse":
            raise StaleCacheError(message + "; delete it or use a new --workdir")
        logging.warning("%s; recomputing it", message)
    value = np.asarray(compute())
    if write:
        buf = io.BytesIO()
        np.savez(buf, value=value, **{_KEY_ENTRY: np.array(key)})
        atomic_write_bytes(path, buf.getvalue())
    return value


# ------------------------------------------------------------------ stage and run folders
def claim_stage_dir(path: str | os.PathLike, *, resume: bool) -> str:
    """What a stage may do with its folder; never overwrites a finished or started stage.

    "skip": the stage finished (its DONE_MARKER exists): the caller logs and returns the
    stored summary.json, with or without --resume. "fresh": the folder is new or empty.
    "resume": --resume and the folder has outputs (the caller restores the latest valid
    checkpoint, or starts over when there is none). Outputs without --resume raise
    RunFolderError naming --resume and --workdir.
    """
    path = epath.Path(path)
    if (path / DONE_MARKER).exists():
        logging.info("%s is finished (%s exists): skipping this stage", path, DONE_MARKER)
        return "skip"
    contents = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if not contents:
        path.mkdir(parents=True, exist_ok=True)
        return "fresh"
    if not resume:
        raise RunFolderError(f"{path} already holds outputs of an unfinished run "
                             f"({', '.join(contents[:5])}); pass --resume to continue it or "
                             "choose a new --workdir")
    return "resume"


def mark_stage_done(path: str | os.PathLike, summary: Mapping[str, Any]) -> None:
    """summary.json, then the DONE_MARKER: a stage killed in between is resumed, not skipped."""
    path = epath.Path(path)
    atomic_write_text(path / "summary.json", json.dumps(dict(summary), indent=2))
    atomic_write_text(path / DONE_MARKER, "done\n")


def claim_workdir(workdir: str | os.PathLike, config: Mapping[str, Any], *,
                  resume: bool) -> dict | None:
    """Store the run's config once; returns the stored config on --resume (None for a new run).

    A new run refuses a workdir that already holds a config.json (name --resume / --workdir);
    --resume refuses a workdir without one (a mistyped --workdir must not start from scratch).
    """
    workdir = epath.Path(workdir)
    stored_path = workdir / CONFIG_FILE
    if resume:
        if not stored_path.exists():
            raise RunFolderError(f"--resume: {workdir} holds no run to resume (no {CONFIG_FILE});"
                                 " check --workdir, or drop --resume to start a new run")
        return json.loads(stored_path.read_text())
    if stored_path.exists():
        raise RunFolderError(f"{workdir} already holds a run ({CONFIG_FILE} exists); pass "
                             "--resume to continue it or choose a new --workdir")
    atomic_write_text(stored_path, json.dumps(_canonical(config), indent=2))
    return None


@dataclasses.dataclass(frozen=True)
class ConfigChange:
    key: str                 # dotted path, e.g. "stages.offline_dpo.learning_rate"
    old: Any                 # MISSING when the field is new
    new: Any                 # MISSING when the field was removed
    affects_results: bool
    step: int | None = None  # the step at which the change takes effect

    def __str__(self) -> str:
        at = "" if self.step is None else f" from step {self.step}"
        return f"{self.key}: {self.old!r} -> {self.new!r}{at}"


MISSING = "<absent>"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    tree = tree.to_dict() if hasattr(tree, "to_dict") else tree
    if not isinstance(tree, Mapping) or (prefix and not tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) or key.startswith(p + ".") for p in patterns)


def compare_resume_config(stored: Mapping[str, Any], new: Mapping[str, Any], *,
                          result_fields: Sequence[str] = ("*",),
                          neutral_fields: Sequence[str] = NEUTRAL_FIELDS,
                          allow_change: bool = False, step: int | None = None
                          ) -> list[ConfigChange]:
    """Every field that differs between the stored config and the resuming one.

    A field affects results when it matches a `result_fields` pattern (fnmatch on dotted
    keys; a pattern also covers everything below it) and no `neutral_fields` pattern. Such
    changes raise ConfigChangeError listing them unless `allow_change`
    (--allow_config_change); every change is logged with the `step` it takes effect at.
    Values compare after JSON round-trip, so tuples equal lists as in config.json.
    """
    old, cur = _flatten(_canonical(stored)), _flatten(_canonical(new))
    changes = []
    for key in sorted(set(old) | set(cur)):
        a, b = old.get(key, MISSING), cur.get(key, MISSING)
        if a != b:
            affects = _matches(key, result_fields) and not _matches(key, neutral_fields)
            changes.append(ConfigChange(key, a, b, affects, step))
    blocking = [c for c in changes if c.affects_results]
    if blocking and not allow_change:
        listing = "; ".join(str(c) for c in blocking)
        raise ConfigChangeError(f"--resume with a changed config: {listing}. These fields "
                                "change results; pass --allow_config_change to accept them (the "
                                "change is logged with its step) or use a new --workdir")
    for c in changes:
        logging.warning("config change on resume: %s", c)
    return changes


def record_config_changes(workdir: str | os.PathLike, changes: Sequence[ConfigChange], *,
                          stage: str = "") -> epath.Path:
    """Append the changes (one JSON line each: key, old, new, affects_results, step, stage) to
    <workdir>/config_changes.jsonl, rewritten atomically; the run's config.json stays as first
    stored, so the two together say which values held at which step."""
    path = epath.Path(workdir) / "config_changes.jsonl"
    old = path.read_text() if path.exists() else ""
    lines = [json.dumps({**dataclasses.asdict(c), "stage": stage}) + "\n" for c in changes]
    atomic_write_text(path, old + "".join(lines))
    return path


# ------------------------------------------------------------------ checkpoints
def latest_valid_checkpoint(steps: Iterable[int], restore: Callable[[int], Any], *,
                            quarantine: Callable[[int], None] | None = None
                            ) -> tuple[int | None, Any]:
    """(step, restore(step)) for the newest step that restores; (None, None) when `steps` is
    empty. A step whose restore raises is logged with its error (naming it and the step
    fallen back to) and handed to `quarantine` (e.g. moved aside, so that step can be saved
    again); when every step fails, RunFolderError lists them all."""
    failures = []
    for step in sorted(steps, reverse=True):
        try:
            restored = restore(step)
        except Exception as e:  # orbax/TensorStore raise many types for a damaged step
            failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            logging.warning("checkpoint step %d is unreadable (%s); trying the previous kept "
                            "one", step, failures[-1])
            if quarantine is not None:
                quarantine(step)
            continue
        if failures:
            logging.warning("resumed from checkpoint step %d instead of the corrupt %s", step,
                            "; ".join(failures))
        return step, restored
    if failures:
        raise RunFolderError("no checkpoint could be restored: " + "; ".join(failures))
    return None, None


def quarantine_step_dir(checkpoint_dir: str | os.PathLike, step: int) -> epath.Path:
    """Move `<checkpoint_dir>/<step>` to `<checkpoint_dir>.corrupt/<step>-<uuid>` (kept for
    inspection, out of the manager's sight); call `manager.reload()` afterwards."""
    checkpoint_dir = epath.Path(checkpoint_dir)
    target = epath.Path(os.fspath(checkpoint_dir) + ".corrupt")
    target.mkdir(parents=True, exist_ok=True)
    dest = target / f"{step}-{uuid.uuid4().hex[:8]}"
    (checkpoint_dir / str(step)).rename(dest)
    logging.warning("moved corrupt checkpoint step %d to %s", step, dest)
    return dest
