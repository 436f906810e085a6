"""Test-session settings: one intra-op thread per test process.

`make test` runs two pytest-xdist workers on a 2-core machine; letting each use torch's default thread pool as well
oversubscribes the cores and made the training-heavy tests several times slower.
"""

import os

os.environ.setdefault("PRUNEKIT_NO_PROGRESS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
