"""Fine-tune a pre-trained BERT on a GLUE task: the teacher for task distillation (configs/task.py).

python -m tinybert_jax.main --config=configs/finetune.py --workdir=DIR --config.task=sst2 \
    --config.data.source=glue_data/SST-2 [--config.model.path=bert-base-uncased]
Writes DIR/export (Hugging Face BertForSequenceClassification + tokenizer + label names) and DIR/report.json.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.pipeline = "finetune"
    c.seed = 0
    # Compute dtype of teacher and student matmuls ("float32" | "bfloat16"); they accumulate in float32, and
    # trainable parameters, optimizer state, the embedding sum, biases, LayerNorm, softmax and losses stay float32.
    c.dtype = "float32"
    c.task = "sst2"  # cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli
    c.model = ml_collections.ConfigDict(dict(path="bert-base-uncased"))  # HF dir or hub id
    c.data = ml_collections.ConfigDict(dict(
        source="",  # a GLUE TSV directory (train.tsv, dev.tsv, ...) or "tfds" (glue/<task> in tfds_data_dir)
        tfds_data_dir="",
        seq_len=0,  # 0: 64 for single-sentence tasks, 128 for pairs
    ))
    c.train = ml_collections.ConfigDict(dict(
        batch_size=32, num_epochs=3.0, num_steps=0,
        optimizer=ml_collections.ConfigDict(dict(
            name="adamw", learning_rate=2e-5, schedule="linear", warmup_ratio=0.1, b1=0.9, b2=0.999, eps=1e-6,
            weight_decay=0.01, clip_norm=1.0)),
    ))
    c.eval = ml_collections.ConfigDict(dict(every_steps=500, batch_size=64))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, rules=[("batch", ("data", "fsdp")), ("embed", "fsdp")]))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=2))
    c.log = ml_collections.ConfigDict(dict(every_steps=50))
    return c
