"""Training a BERT WordPiece tokenizer from a corpus, for teachers trained here (the offline demo)."""
from __future__ import annotations

from pathlib import Path

from absl import logging

from tinybert_jax.data.corpus import CorpusStats, iter_documents
from tinybert_jax.files import atomic_output_dir

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(source: str, out_dir: Path, vocab_size: int, lowercase: bool = True) -> Path:
    """Writes a transformers-loadable BertTokenizerFast (vocab.txt, tokenizer.json, ...) to out_dir."""
    import transformers
    from tokenizers import BertWordPieceTokenizer

    stats = CorpusStats()
    sentences = (sentence for document in iter_documents(source, stats) for sentence in document)
    tokenizer = BertWordPieceTokenizer(lowercase=lowercase)
    tokenizer.train_from_iterator(sentences, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  show_progress=False)
    with atomic_output_dir(out_dir, overwrite=True) as tmp:
        tokenizer.save_model(str(tmp))
        transformers.BertTokenizerFast(str(tmp / "vocab.txt"), do_lower_case=lowercase).save_pretrained(tmp)
    logging.info("trained a %d-piece WordPiece vocabulary on %s (%s)", tokenizer.get_vocab_size(), source,
                 stats.summary())
    return out_dir
