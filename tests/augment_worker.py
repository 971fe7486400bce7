"""One process of a multi-process (or multi-device) augmentation, for tests/unit/test_augment.py:

    python tests/augment_worker.py MLM_DIR GLOVE_FILE SENTENCES_JSON OUT_DIR CHUNK_SIZE [KILL_AT_CHUNK]

joins JAX's distributed runtime from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (when set) and
augments the sentences (a single-sentence task) into OUT_DIR with its share of the chunks, on all its devices.
With KILL_AT_CHUNK it SIGKILLs itself in the middle of that chunk (1-based), as a preemption or OOM kill would."""
import json
import os
import signal
import sys
import types
from pathlib import Path

import numpy as np

from tinybert_jax import distributed
from tinybert_jax.data.augment import Augmenter, augment_examples, load_augmenter


def kill_in_chunk(number: int) -> None:
    calls = []
    augment = Augmenter.augment

    def augment_then_die(self, *args, **kwargs):
        calls.append(1)
        result = augment(self, *args, **kwargs)
        if len(calls) == number:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    Augmenter.augment = augment_then_die


if __name__ == "__main__":
    mlm, glove, sentences, out, chunk_size, *kill_at = sys.argv[1:]
    if kill_at:
        kill_in_chunk(int(kill_at[0]))
    distributed.initialize(distributed.settings_from_env("auto", "", -1, -1))
    texts = json.loads(Path(sentences).read_text())
    augmenter = load_augmenter(mlm, glove, k=5, batch_size=4, max_seq_len=128)
    examples = types.SimpleNamespace(text_a=texts, text_b=None, labels=np.arange(len(texts)) % 2)
    augment_examples(examples, augmenter, out, chunk_size=int(chunk_size))
