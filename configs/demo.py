"""Offline end-to-end demo on 2 CPU cores: pre-train a small BERT teacher by masked-LM on the embedded corpus
(standard-library docstrings), then run TinyBERT general distillation from it into a smaller student.

python -m tinybert_jax.main --config=configs/demo.py --workdir=DIR
Every key of configs/general.py applies to the distillation stage; teacher_training.* sizes the teacher.
"""
import ml_collections

from configs import general


def get_config() -> ml_collections.ConfigDict:
    c = general.get_config()
    c.pipeline = "demo"
    c.teacher.path = ""  # set by the pipeline to WORKDIR/teacher/export
    c.data.seq_len = 64

    c.teacher_training = ml_collections.ConfigDict(dict(
        vocab_size=4096,  # WordPiece vocabulary learned from the corpus
        model=ml_collections.ConfigDict(dict(
            hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
            max_position_embeddings=128, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)),
        batch_size=32, num_steps=600, mask_prob=0.15, checkpoint_every_steps=200,
        optimizer=ml_collections.ConfigDict(dict(
            name="adamw", learning_rate=1e-3, schedule="linear", warmup_ratio=0.05, b1=0.9, b2=0.98, eps=1e-6,
            weight_decay=0.01, clip_norm=1.0)),
    ))

    # Student: half the teacher's depth, half its width, same head count (attention maps are compared per head).
    c.student.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    c.train.update(batch_size=32, num_steps=400)
    c.optimizer.update(learning_rate=1e-3, warmup_ratio=0.05)
    c.checkpoint.every_steps = 200
    c.log.every_steps = 20
    return c
