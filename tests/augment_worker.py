"""One process of a multi-process (or multi-device) augmentation, for tests/test_augment.py:

    python tests/augment_worker.py MLM_DIR GLOVE_FILE SENTENCES_JSON OUT_DIR CHUNK_SIZE

joins JAX's distributed runtime from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (when set) and
augments the sentences (a single-sentence task) into OUT_DIR with its share of the chunks, on all its devices."""
import json
import sys
import types
from pathlib import Path

import numpy as np

from tinybert_jax import distributed
from tinybert_jax.data.augment import augment_examples, load_augmenter

if __name__ == "__main__":
    mlm, glove, sentences, out, chunk_size = sys.argv[1:]
    distributed.initialize(distributed.settings_from_env("auto", "", -1, -1))
    texts = json.loads(Path(sentences).read_text())
    augmenter = load_augmenter(mlm, glove, k=5, batch_size=4, max_seq_len=128)
    examples = types.SimpleNamespace(text_a=texts, text_b=None, labels=np.arange(len(texts)) % 2)
    augment_examples(examples, augmenter, out, chunk_size=int(chunk_size))
