"""TinyBERT general distillation (stage 1 of the paper): BERT-base teacher -> TinyBERT4 student.

python -m tinybert_jax.main --config=configs/general.py --workdir=DIR [--config.key=value ...]
--config=configs/general.py:smoke runs offline in seconds: it pre-trains a tiny teacher first, as the demo does.
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
    smoke = common.variant(arg, "configs/general.py") == "smoke"
    c = common.base("general")

    # Pre-trained (not fine-tuned) BERT: HF directory or hub id. Its tokenizer prepares the data.
    c.teacher = ml_collections.ConfigDict(dict(path="bert-base-uncased"))

    # Student sizes (vocab, positions and token types always follow the teacher). Default: TinyBERT4.
    c.student = ml_collections.ConfigDict(dict(
        preset="",  # "tinybert4" | "tinybert6" | "minilm-l6-h384" | "distilbert6": replaces the four size keys
        # "random"; "teacher" (embeddings, layers init_layers and MLM head copied from the teacher: needs its
        # width); or a Hugging Face dir / Flax checkpoint dir to start from (its sizes are used)
        init="random",
        init_layers="",  # with init="teacher": 1-based teacher layers, "" = spread first..last (12->6: 1,3,5,8,10,12)
        hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200, hidden_act="gelu",
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02, layer_norm_eps=1e-12,
        mlm_head=False,  # needed by the logit and masked-LM terms
    ))

    # "uniform" | "top" | "bottom" | "spread" | "3,6,9,12" (one 1-based teacher layer per student layer); see
    # docs/layer_maps.md
    c.layer_map = "uniform"

    c.loss = ml_collections.ConfigDict(dict(
        # the recipe: "tinybert" | "distilbert" | "minilm_v1" | "minilm_v2", or "custom" (the terms in `matches`)
        preset="tinybert",
        mode="tinybert",  # TinyBERT losses: "tinybert" (the original semantics) or "masked" (valid tokens only)
        # weight per term of the preset; 0 leaves a term out. tinybert: embedding, attention, hidden, prediction;
        # distilbert: ce, mlm, cos; minilm_v1: attention, value_relation; minilm_v2: relations
        weights=ml_collections.ConfigDict(dict(embedding=1.0, attention=1.0, hidden=1.0, prediction=0.0)),
        temperature=1.0,  # of the logit terms (prediction, ce)
        # custom: "TERM LOSS STUDENT TEACHER WEIGHT" strings (docs/losses.md), a list or one string with ';'
        # between entries. Typed `object` so that both are accepted: ml_collections overrides no list field from
        # the command line, and a plain str field would refuse a list from an experiment file.
        matches=ml_collections.FieldReference("", field_type=object),
        relation_heads=12,  # MiniLMv2 relation heads (must divide both widths; 48 for BERT-base per the paper)
        relation_layer=0,  # MiniLMv2 teacher layer (0: the last)
        mask_prob=0.15, mask_smoothing=0.7,  # the masked-LM term's dynamic masking (DistilBERT)
    ))

    c.data = ml_collections.ConfigDict(dict(
        source="embedded",  # "embedded" (stdlib docstrings) | glob of text files | "tfds:NAME[/CONFIG][:SPLIT]"
        tfds_data_dir="",  # where prepared TFDS datasets live ("" = TFDS default)
        tfds_text_key="text",
        seq_len=128,
        prepared_dir="",  # where tokenised shards go ("" = WORKDIR/data); reused when they match
        short_seq_prob=0.1,
    ))

    c.train = ml_collections.ConfigDict(dict(
        batch_size=256,  # global, over all devices and hosts
        num_steps=0,  # > 0 overrides num_epochs
        num_epochs=3.0,
    ))
    c.optimizer = common.optimizer(1e-4)

    if smoke:  # student: half the tiny teacher's depth and width, same head count (attention maps are per head)
        common.smoke_distillation(c, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=32)
    return c
