"""Build a TinyBERT4-size student (random init, or copied from a Hugging Face checkpoint), print its size, and
write it as a Flax checkpoint (WORKDIR/flax) and a Hugging Face directory (WORKDIR/hf).
configs/init_student.py:smoke builds a tiny one."""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
    smoke = common.variant(arg, "configs/init_student.py") == "smoke"
    config = ml_collections.ConfigDict()
    config.pipeline = "init_student"
    config.seed = 0
    config.model = ml_collections.ConfigDict(dict(
        init="random",  # "random", or a Hugging Face checkpoint directory / hub id (its sizes are used)
        vocab_size=30522, hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200,
        max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02,
        dtype="float32", param_dtype="float32", pooler=True, mlm_head=False, num_labels=0,
    ))
    if smoke:
        config.model.update(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=37, max_position_embeddings=64)
    config.export = ml_collections.ConfigDict(dict(
        hf=True,  # also write a Hugging Face directory
        tokenizer="",  # directory whose tokenizer files are copied into the export ("" = none)
    ))
    return config
