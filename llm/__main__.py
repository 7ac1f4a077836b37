"""python -m llm --config configs/llm.py:NAME [--workdir DIR] [--resume] [--stages a,b]
                 [--dry_run] [--allow_config_change]

Runs the config's stages in order (each in <workdir>/<stage>), then writes <workdir>/report.md.
Multi-host: the same command on every host, with --config.distributed.* or MODESEEK_* variables
(see llm/distributed.py and launch/README.md).

Before anything compiles: unknown `--config.*` keys, bad fields and missing or unparsable files
(model, data rows, reward paths: `llm.config_checks`) end
the run with a one-line error and exit status 2. The run's config is stored once in
<workdir>/config.json (`llm.run_folder.claim_workdir`): a new run refuses a workdir holding one,
--resume refuses a workdir without one, and --resume with result-affecting changes refuses
unless --allow_config_change (the changes are then appended to <workdir>/config_changes.jsonl
with the stage and step they take effect at). Finished stages are skipped.

On Linux the command first re-executes itself once with glibc's transparent-huge-page
tunable set (`llm.huge_pages`: 1.2× on a CPU training step; GLIBC_TUNABLES=glibc.malloc.hugetlb=0
opts out).

Exit status: 0 done; 1 a runtime error (traceback); 2 a refused config or run folder;
75 (`run_folder.PREEMPTED_EXIT_CODE`, EX_TEMPFAIL) a SIGTERM saved a checkpoint and stopped the
run: requeue the same command with --resume.
"""

import dataclasses
import importlib.util
import json
import os
import sys
import time

if __name__ == "__main__":  # before jax loads: glibc reads its tunables at process start
    from llm.huge_pages import reexec_with_huge_pages

    reexec_with_huge_pages()

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from llm import config_checks, run_folder  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/llm.py:smollm2_min_length",
                                "experiment config", lock_config=True)
flags.DEFINE_string("workdir", "", "run folder (default runs/llm-<config>-<time>)")
flags.DEFINE_bool("resume", False, "continue from the latest checkpoints in --workdir; exit "
                  f"status {run_folder.PREEMPTED_EXIT_CODE} after a SIGTERM asks for this")
flags.DEFINE_list("stages", [], "run only these stages (default: the config's stage_order)")
flags.DEFINE_bool("dry_run", False, "print the mesh, model and every stage's memory plan, then "
                  "exit without loading or compiling anything")
flags.DEFINE_bool("allow_config_change", False, "with --resume: accept result-affecting config "
                  "changes (logged in <workdir>/config_changes.jsonl with their step)")
FLAGS = flags.FLAGS


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _load_config(spec: str):
    """The ConfigDict named by a `path.py[:arg]` --config value (as config_flags loads it)."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_llm_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def check_argv(argv) -> None:
    """Unknown `--config.a.b` keys → one line naming the closest field, exit 2 (absl would
    otherwise fail inside flag parsing with a traceback)."""
    keys = config_checks.override_keys(argv)
    if not keys:
        return
    spec = next((a.split("=", 1)[1] if "=" in a else argv[i + 1]
                 for i, a in enumerate(argv) if a.split("=", 1)[0] == "--config"
                 and ("=" in a or i + 1 < len(argv))), FLAGS["config"].default)
    try:
        config_checks.check_overrides(_load_config(spec).to_dict(), keys)
    except config_checks.ConfigError as e:
        _fail(str(e))


def parse_flags(argv):
    check_argv(argv)
    return FLAGS(argv)


def main(argv):
    del argv
    cfg = FLAGS.config
    from llm import distributed

    distributed.initialize(cfg.distributed.coordinator, cfg.distributed.num_processes,
                           cfg.distributed.process_id, auto=cfg.distributed.auto)
    from llm import report, train
    from llm import sharding as shd

    mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    try:
        config_checks.validate_llm_config(cfg, stages=FLAGS.stages,
                                          data_parallel=int(mesh.shape["data"]
                                                            * mesh.shape["fsdp"]))
        config_checks.check_paths(cfg, stages=FLAGS.stages)  # files exist, rows parse
    except config_checks.ConfigError as e:
        _fail(str(e))
    if FLAGS.dry_run:
        import jax

        from llm.dry_run import dry_run_report

        print(dry_run_report(cfg, jax.devices()), flush=True)
        return 0
    workdir = FLAGS.workdir or os.path.join("runs", f"llm-{time.strftime('%Y%m%d-%H%M%S')}")
    changes = []
    try:
        stored = run_folder.claim_workdir(workdir, cfg.to_dict(), resume=FLAGS.resume) \
            if distributed.is_main() else None
        if stored is not None:
            changes = run_folder.compare_resume_config(
                stored, cfg.to_dict(), allow_change=FLAGS.allow_config_change)
    except run_folder.RunFolderError as e:
        _fail(str(e))
    started = time.time()
    for name in FLAGS.stages or cfg.stage_order:
        def on_start(step, name=name):  # the first stage that trains records the changes
            if changes and distributed.is_main():
                run_folder.record_config_changes(
                    workdir, [dataclasses.replace(c, step=step) for c in changes],
                    stage=name)
                changes.clear()
        try:
            summary = train.run_stage(cfg, cfg.stages[name], os.path.join(workdir, name),
                                      resume=FLAGS.resume, on_start=on_start)
        except (run_folder.RunFolderError, config_checks.ConfigError) as e:
            _fail(str(e))
        if distributed.is_main():
            print(json.dumps({"stage": name, **summary}), flush=True)
        if summary.get("status") == "preempted":
            return run_folder.PREEMPTED_EXIT_CODE
    if distributed.is_main():
        path = report.write_report(workdir, cfg, wall_seconds=time.time() - started)
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=parse_flags))
