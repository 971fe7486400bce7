"""`data`: preparation throughput (tokens/s) and loader throughput against what the training step consumes."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tinybert_jax.bench.timing import time_calls
from tinybert_jax.data import loader, prepare
from tinybert_jax.data.corpus import CorpusStats, iter_documents
from tinybert_jax.data.wordpiece import train_wordpiece


def bench_data(source: str, tokenizer: str, seq_len: int, batch: int, reps: int,
               step_examples_per_s: float) -> dict:
    """Prepare is timed on the corpus written out as plain text (one sentence per line), so the number is the
    tokenise + build + write rate a user with text files gets, not the speed of reading this corpus's source."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = tmp / "corpus.txt"
        with open(text, "w") as out:
            for document in iter_documents(source, CorpusStats()):
                out.write("\n".join(document) + "\n\n")
        if not tokenizer:
            tokenizer = str(train_wordpiece(str(text), tmp / "tokenizer", vocab_size=8192))
        start = time.perf_counter()
        metadata = prepare.prepare(str(text), tmp / "data", tokenizer, seq_len, seed=0)
        prepare_s = time.perf_counter() - start
        iterator = loader.make_train_iterator(tmp / "data", batch, seed=0)
        batches_per_rep = 50
        timing = time_calls(lambda: [next(iterator) for _ in range(batches_per_rep)], reps=reps, warmup=1)
    tokens = metadata["sequence_stats"]["tokens"]
    loader_rate = batches_per_rep * batch / timing.median
    return {"source": source, "prepare_s": prepare_s, "prepare_tokens": tokens,
            "prepare_tokens_per_s": tokens / prepare_s, "prepare_sequences": metadata["count"],
            "loader_sequences_per_s": loader_rate, "loader_batch": batch, "seq_len": seq_len,
            "step_examples_per_s": step_examples_per_s, "loader_over_step": loader_rate / step_examples_per_s}
