"""Job functions of the 0.7.0 upgrade test.

The jobs are stored by reference (``upgrade_jobs:mark``), so this module must
import under the same name in the 0.7.0 environment and in ours; it does not
import ``django_apscheduler``. Every run leaves a marker file in the folder
named by ``DJA_UPGRADE_MARKERS``, so the test can see which job ran, with
which arguments and under which django_apscheduler package.
"""

import json
import os
import sys
import uuid


def _leave_marker(tag, args, kwargs):
    package = sys.modules.get("django_apscheduler")
    marker = {
        "tag": tag,
        "args": list(args),
        "kwargs": kwargs,
        "pid": os.getpid(),
        "django_apscheduler": getattr(package, "__file__", None),
    }
    folder = os.environ["DJA_UPGRADE_MARKERS"]
    name = os.path.join(folder, f"{tag}.{uuid.uuid4().hex}")
    with open(name + ".tmp", "w") as f:
        json.dump(marker, f)
    os.replace(name + ".tmp", name + ".json")  # readers never see half a marker


def mark(tag, *args, **kwargs):
    """Records that the job ``tag`` ran."""
    _leave_marker(tag, args, kwargs)


def fail(tag, message):
    """Records that the job ``tag`` ran, then fails with ``message``."""
    _leave_marker(tag, (message,), {})
    raise ValueError(message)


def read_markers(folder):
    """All markers in ``folder``, as ``{tag: [marker, ...]}``."""
    found = {}
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".json"):
            with open(os.path.join(folder, entry)) as f:
                marker = json.load(f)
            found.setdefault(marker["tag"], []).append(marker)
    return found
