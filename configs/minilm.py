"""MiniLMv2-style general distillation (docs/recipes.md): the last student layer learns the Q-Q, K-K and V-V
self-attention relations of the teacher's last layer over 48 relation heads; no projection, so the student's
width and head count are free (default MiniLM L6 x H384).

python -m tinybert_jax.main --config=configs/minilm.py --workdir=DIR [--config.key=value ...]
--config.loss.preset=minilm_v1 switches to MiniLMv1 (attention distributions + value relations of the last layer;
equal head counts).
"""
import ml_collections

from configs import general


def get_config() -> ml_collections.ConfigDict:
    c = general.get_config()
    c.student.preset = "minilm-l6-h384"
    c.loss.preset = "minilm_v2"
    c.loss.weights = ml_collections.ConfigDict(dict(relations=1.0, attention=1.0, value_relation=1.0))
    c.loss.relation_heads = 48
    c.optimizer.learning_rate = 1e-4
    return c
