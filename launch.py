"""Run the DiWA pipeline: ``python launch.py --config experiments/calvin.py:quick --workdir runs/quick``.

Overrides: ``--config.ppo.actor_lr=3e-5``. Stage selection: ``--stages=world_model,featurize``.
Rerunning the same command resumes a killed run; complete stages are skipped.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:preset]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for every artifact of the run (created if missing)")
_STAGES = flags.DEFINE_list("stages", [], "stages to run, in pipeline order (default: all but the optional online)")
flags.mark_flags_as_required(["config", "workdir"])
# Multi-host runs (TPU pods, GPU clusters): start the same command on every host with its --process_id.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0 of a multi-process run; auto: from the cluster (TPU pod)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "processes in the run (1: no jax.distributed)")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "this process's index in [0, num_processes)")
_COORDINATOR_BIND = flags.DEFINE_string(
    "coordinator_bind_address", None,
    "HOST:PORT process 0's coordinator listens on (default: the interface of --coordinator_address only)")




def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep JAX's start-up INFO lines (no TPU, ...) off the console
    # Imported here so that `--help` and flag errors stay fast and free of JAX start-up noise.
    from diwa_jax import config as configlib
    from diwa_jax import distributed, pipeline, sweep
    from diwa_jax.errors import ConfigError, ExpectedFailure

    try:  # before anything touches a device
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               bind_address=_COORDINATOR_BIND.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        config = configlib.finalize(_CONFIG.value, _WORKDIR.value)
        # checks the workdir, then saves the resolved config, then runs (a sweep: shared stages, then each point's)
        (sweep.run if configlib.sweep_points(config) else pipeline.run)(config, _STAGES.value)
    except ExpectedFailure as e:  # one line naming the culprit and the fix, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    print(f"finished: outputs in {config.derived.workdir}")
    return 0


def _run():
    # absl prints a usage dump after flag errors; a bad config key or value should be one line.
    try:
        argv = flags.FLAGS(sys.argv)
    except (flags.Error, AttributeError, KeyError) as e:
        print(f"error: {_flag_message(e, sys.argv)}", file=sys.stderr)
        sys.exit(2)
    # the config file is loaded lazily, at first use: a missing one would end in a traceback
    config_file = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
    if not os.path.isfile(config_file):
        print(f"error: --config={flags.FLAGS['config'].config_filename}: no such file {config_file}", file=sys.stderr)
        sys.exit(2)
    app.run(main, argv=argv, flags_parser=lambda a: a)


def _flag_message(e: Exception, argv) -> str:
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an override names no field
        # the exception's first argument is the key, possibly followed by "Did you mean ..." on a new line
        # (ml_collections wraps the KeyError in an AttributeError)
        while isinstance(e, Exception) and e.args:
            e = e.args[0]
        first, *hint = str(e).splitlines()
        key = first.strip("\"' ")
        culprits = [a.split("=")[0] for a in argv if a.startswith("--config.") and key in a.split("=")[0].split(".")]
        where = culprits[0] if culprits else f"config key {key!r}"
        suggestion = f"; {hint[0].strip()}" if hint else ""
        return f"{where}: no such key in the config file{suggestion} (see experiments/calvin.py for the fields)"
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):  # error raised inside the config file
        return f"{lines[0].split(': Error')[0]}: {lines[-1]}"
    return " ".join(lines)


if __name__ == "__main__":
    _run()
