"""Hugging Face BERT <-> Flax conversion: import teachers, export students, and the conversion CLI.

The mapping and both checkpoint directory formats are in hf_bert.py (re-exported here, so callers write
`convert.load_hf_bert(...)`); the command line, `python -m tinybert_jax.convert`, is in __main__.py.
"""
from tinybert_jax.convert.hf_bert import (
                                          ARCHITECTURES,
                                          FLAX_CONFIG,
                                          HF_HEADS,
                                          MSGPACK,
                                          ORBAX,
                                          HfHead,
                                          WeightName,
                                          check_params,
                                          config_from_hf,
                                          config_to_hf,
                                          hf_state_dict,
                                          load_bert,
                                          load_flax_dir,
                                          load_hf_bert,
                                          save_flax_dir,
                                          save_hf_bert,
                                          weight_names,
)

__all__ = ["ARCHITECTURES", "FLAX_CONFIG", "HF_HEADS", "MSGPACK", "ORBAX", "HfHead", "WeightName", "check_params",
           "config_from_hf", "config_to_hf", "hf_state_dict", "load_bert", "load_flax_dir", "load_hf_bert",
           "save_flax_dir", "save_hf_bert", "weight_names"]
