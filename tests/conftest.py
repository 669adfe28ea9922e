import os

# Small CPU models: OpenMP threads that spin while waiting make every tiny op 10-100x slower
# when the two cores are shared. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests are CPU-only and small; two threads match the project's reference machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="module")
def tok():
    """The built-in character tokenizer (``dasd.models.make_char_tokenizer``)."""
    from dasd.models import make_char_tokenizer

    return make_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """A small random Qwen3 over ``tok`` (``tests.fixtures_models.random_qwen3``, seed 0);
    a test module that needs another one defines its own ``model``."""
    from tests.fixtures_models import random_qwen3

    return random_qwen3(tok, seed=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random Qwen3 with the built-in character tokenizer, saved as a checkpoint
    directory (what ``--model PATH`` takes); shared by the command and probe tests."""
    from dasd.models import make_char_tokenizer
    from tests.fixtures_models import random_qwen3

    path = tmp_path_factory.mktemp("random-model")
    tok = make_char_tokenizer()
    random_qwen3(tok, seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path
