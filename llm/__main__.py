"""python -m llm --config configs/llm.py:NAME [--workdir DIR] [--resume] [--stages a,b]

Runs the config's stages in order (each in <workdir>/<stage>), then writes <workdir>/report.md.
Multi-host: the same command on every host, with --config.distributed.* or MODESEEK_* variables
(see llm/distributed.py and launch/README.md).
"""

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/llm.py:smollm2_min_length",
                                "experiment config", lock_config=True)
flags.DEFINE_string("workdir", "", "run folder (default runs/llm-<config>-<time>)")
flags.DEFINE_bool("resume", False, "continue from the latest checkpoints in --workdir")
flags.DEFINE_list("stages", [], "run only these stages (default: the config's stage_order)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    cfg = FLAGS.config
    from llm import distributed

    distributed.initialize(cfg.distributed.coordinator, cfg.distributed.num_processes,
                           cfg.distributed.process_id, auto=cfg.distributed.auto)
    from llm import report, train

    workdir = FLAGS.workdir or os.path.join("runs", f"llm-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(workdir, exist_ok=True)
    if distributed.is_main():
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(cfg.to_json_best_effort(indent=2))
    started = time.time()
    for name in FLAGS.stages or cfg.stage_order:
        summary = train.run_stage(cfg, cfg.stages[name], os.path.join(workdir, name),
                                  resume=FLAGS.resume)
        if distributed.is_main():
            print(json.dumps({"stage": name, **summary}), flush=True)
        if summary.get("status") == "preempted":
            return 0
    if distributed.is_main():
        path = report.write_report(workdir, cfg, wall_seconds=time.time() - started)
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
