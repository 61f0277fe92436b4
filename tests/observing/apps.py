import json
import os
import threading

from django.apps import AppConfig

_lock = threading.Lock()


def _writer(name: str):
    def receive(sender, job_id, run_time, execution=None, **kwargs):
        line = {
            "signal": name,
            "job_id": job_id,
            "run_time": run_time.isoformat(),
            "execution": execution.pk if execution is not None else None,
            "pid": os.getpid(),
            "exception": type(kwargs["exception"]).__name__ if kwargs.get("exception") else None,
            "late": kwargs["late"].total_seconds() if kwargs.get("late") is not None else None,
        }
        with _lock, open(os.environ["OBSERVING_OUTPUT"], "a") as out:
            out.write(json.dumps(line) + "\n")

    return receive


def _raising(sender, **kwargs):
    raise RuntimeError("a receiver that raises")


class ObservingConfig(AppConfig):
    name = "tests.observing"
    receivers: list = []

    def ready(self) -> None:
        from django_apscheduler import signals

        if not os.environ.get("OBSERVING_OUTPUT"):
            return
        for name, signal in signals.ALL.items():
            receiver = _writer(name)
            self.receivers.append(receiver)  # kept alive: signals hold weak references
            signal.connect(receiver)
        signals.job_succeeded.connect(_raising)
