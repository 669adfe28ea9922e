import os

# Small CPU models: OpenMP threads that spin while waiting make every tiny op 10-100x slower
# when the two cores are shared. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# Tests are CPU-only and small; two threads match the project's reference machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))
