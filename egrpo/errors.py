"""User-facing errors: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """A mistake in the user's input (config, paths, prompt files)."""


class ConfigError(UserError):
    """The config does not match the schema or contradicts itself."""


class RunStopped(UserError):
    """The run stopped for a reason outside the code (a time limit, a lost peer, out of memory):
    one line, no traceback; `exit_code` tells a scheduler what happened."""
    exit_code = 2


class TimeLimitStop(RunStopped):
    """Stopped at an iteration boundary before the job's time limit, resume state saved: submit the
    job again and it continues (EX_TEMPFAIL)."""
    exit_code = 75


class PeerLost(RunStopped):
    """A process of a multi-process job stopped answering; this one gives up."""


class OutOfMemory(RunStopped):
    """A device ran out of memory: the message names the stage, the phase, the peak and the knobs."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's cancel, `kill`): raised like Ctrl-C so that every open MLflow run, file
    and process group unwinds; the CLI exits 143."""
