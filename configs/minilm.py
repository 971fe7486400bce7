"""MiniLMv2-style general distillation (docs/recipes.md): the last student layer learns the Q-Q, K-K and V-V
self-attention relations of the teacher's last layer over 48 relation heads; no projection, so the student's
width and head count are free (default MiniLM L6 x H384).

python -m tinybert_jax.main --config=configs/minilm.py --workdir=DIR [--config.key=value ...]
--config.loss.preset=minilm_v1 switches to MiniLMv1 (attention distributions + value relations of the last layer;
equal head counts). configs/minilm.py:smoke runs offline in seconds (a tiny teacher pre-trained first).
"""
import ml_collections

from configs import common, general


def get_config(arg=None) -> ml_collections.ConfigDict:
    smoke = common.variant(arg, "configs/minilm.py") == "smoke"
    c = general.get_config()
    c.student.preset = "minilm-l6-h384"
    c.loss.preset = "minilm_v2"
    c.loss.weights = ml_collections.ConfigDict(dict(relations=1.0, attention=1.0, value_relation=1.0))
    c.loss.relation_heads = 48
    if smoke:  # 4 relation heads divide both widths (16 and the tiny teacher's 32)
        common.smoke_distillation(c, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32)
        c.loss.relation_heads = 4
    return c
