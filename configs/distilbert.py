"""DistilBERT-style general distillation (docs/recipes.md): a 6-layer student initialised from the teacher's
embeddings and layers 1,3,5,8,10,12 (DistilBERT's 0,2,4,7,9,11), dynamic masking with rare-token smoothing,
loss 5 * KL(MLM logits, T=2) * T^2 + 2 * masked-LM cross-entropy + 1 * cosine of last hidden states.

python -m tinybert_jax.main --config=configs/distilbert.py --workdir=DIR [--config.key=value ...]
The teacher needs its MLM head (a BertForMaskedLM / BertForPreTraining checkpoint); the export is a
BertForMaskedLM. configs/distilbert.py:smoke runs offline in seconds (a tiny teacher pre-trained first).
"""
import ml_collections

from configs import common, general


def get_config(arg=None) -> ml_collections.ConfigDict:
    smoke = common.variant(arg, "configs/distilbert.py") == "smoke"
    c = general.get_config()
    c.student.preset = "distilbert6"
    c.student.init = "teacher"
    c.student.mlm_head = True
    c.loss.preset = "distilbert"
    c.loss.weights = ml_collections.ConfigDict(dict(ce=5.0, mlm=2.0, cos=1.0))
    c.loss.temperature = 2.0
    c.optimizer = common.optimizer(5e-4, warmup_ratio=0.05, b2=0.98, weight_decay=0.0, clip_norm=5.0)
    if smoke:  # copied from the tiny teacher's layers, so its width
        common.smoke_distillation(c, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64)
    return c
