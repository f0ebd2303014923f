"""The exceptions a stage reports as one line, with the exit code that tells them apart."""


class UserError(Exception):
    """Bad input or a missing prerequisite: reported as one line, exit code 2, no traceback."""

    exit_code = 2


class RunFailed(Exception):
    """A job that could not complete (diverged training, an unusable tracking store): one line, exit 1."""

    exit_code = 1


class Diverged(RunFailed):
    """Training produced a non-finite loss; the run is FAILED and no model is written."""

    def __init__(self, epoch: int, name: str, value: float, limit: float | None = None):
        self.epoch, self.name, self.value = epoch, name, value
        what = f"became {value}" if limit is None else f"reached {value:.3g}, above trainer.max_loss={limit:g},"
        super().__init__(f"{name} {what} in epoch {epoch}: training diverged "
                         "(lower optimizer.lr); the run is FAILED and no model was written")


class StoreUnavailable(RunFailed):
    """The tracking store did not answer, or stayed locked, after bounded retries."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT during a run, raised as a KeyboardInterrupt so that every cleanup path runs."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(signal_name)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name if it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
