"""One Flax linen BERT for teacher and student.

Every per-layer parameter carries a leading 'layers' axis and the layers run under `lax.scan`: compile time
does not grow with depth, and selecting teacher layers (DistilBERT init, layer maps) is indexing.
Attention scores are returned *pre-softmax* with the additive key mask applied, the quantity TinyBERT distils.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# TinyBERT distils scores with this additive mask; the value is part of the loss semantics (docs/losses.md).
MASK_BIAS = -10000.0

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class TaskHead:
    """The linear layer on the encoder that a task kind trains (task/kinds.py), as transformers builds it."""
    reads_pooled: bool  # the pooled [CLS] (needs the pooler), else the last hidden state of every token
    dropout: bool  # dropout before the layer
    num_outputs: int = 0  # a fixed output count (> 0), else num_labels


TASK_HEADS = {
    "sequence": TaskHead(reads_pooled=True, dropout=True),  # BertForSequenceClassification: [batch, num_labels]
    "token": TaskHead(reads_pooled=False, dropout=True),  # BertForTokenClassification: [batch, T, num_labels]
    # BertForQuestionAnswering: [batch, T, 2], the start and end logits; no dropout before it
    "span": TaskHead(reads_pooled=False, dropout=False, num_outputs=2),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Sizes and heads of a BERT; field names follow Hugging Face's config.json where one exists."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    dtype: str = "float32"  # matmul input dtype; products accumulate in float32, everything else is float32
    # Storage dtype of the matrices (kernels, embedding tables); LayerNorm parameters and biases are float32 always.
    param_dtype: str = "float32"
    pooler: bool = True  # BertModel / classifiers have one, BertForMaskedLM has none
    mlm_head: bool = False
    num_labels: int = 0  # 0: no classifier; 1: regression
    # The classifier (with num_labels > 0): a key of TASK_HEADS
    task_head: str = "sequence"
    classifier_dropout: Optional[float] = None  # None: hidden_dropout_prob, as in Hugging Face
    # False: params['layers'] is a tuple of per-layer trees (see unstack_layers), for frozen models only.
    stacked_layers: bool = True

    def __post_init__(self):
        positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings", "type_vocab_size")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig.hidden_size={self.hidden_size} is not divisible by "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act={self.hidden_act!r} is not supported; "
                             f"use one of {sorted(ACTIVATIONS)}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"BertConfig.{name}={getattr(self, name)!r}; use one of {DTYPES}")
        if self.num_labels < 0:
            raise ValueError(f"BertConfig.num_labels must be >= 0, got {self.num_labels}")
        if self.num_labels and self.mlm_head:
            raise ValueError("BertConfig: choose one head, mlm_head=True or num_labels > 0, not both")
        if self.task_head not in TASK_HEADS:
            raise ValueError(f"BertConfig.task_head={self.task_head!r}; use one of {tuple(TASK_HEADS)}")
        head = TASK_HEADS[self.task_head]
        if self.num_labels and head.reads_pooled and not self.pooler:
            raise ValueError(f"BertConfig.num_labels > 0 needs pooler=True (the {self.task_head} classifier reads "
                             f"the pooled output)")
        if self.num_labels and head.num_outputs and self.num_labels != head.num_outputs:
            raise ValueError(f"BertConfig: a {self.task_head} head has {head.num_outputs} outputs, got "
                             f"num_labels={self.num_labels}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)


@flax.struct.dataclass
class BertOutput:
    hidden_states: tuple  # L+1 arrays [batch, T, hidden], the embedding output first
    attention_scores: tuple  # L arrays [batch, heads, T, T], pre-softmax, additive key mask applied, float32
    # L (query, key, value) triples of [batch, T, hidden] projections, all heads concatenated (MiniLM relations);
    # free when unused: under jit they are only intermediate values
    projections: tuple = ()
    pooled_output: Optional[jax.Array] = None
    logits: Optional[jax.Array] = None


# Matrix products take `cfg.dtype` inputs but accumulate and return float32: activations between products stay
# float32. (A bfloat16-output product also runs at half the speed of a float32-output one on XLA:CPU.)
_MATMUL = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)


class Dense(nn.Module):
    """x @ kernel + bias: the product as _MATMUL, the bias float32 (stored and added).

    Not nn.Dense: with a bfloat16 `dtype` it rounds the bias to bfloat16, and it stores the bias in the kernel's
    dtype, where a bfloat16 teacher must keep its biases float32.
    """

    cfg: BertConfig
    features: int
    axes: tuple[str, str]  # logical names of the kernel's (input, output) axes

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range),
                                                                   self.axes),
                            (x.shape[-1], self.features), jnp.dtype(cfg.param_dtype))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), self.axes[-1:]),
                          (self.features,), jnp.float32)
        compute = jnp.dtype(cfg.dtype)
        return _MATMUL(x.astype(compute), kernel.astype(compute), (((x.ndim - 1,), (0,)), ((), ()))) + bias


def _layer_norm(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=jnp.float32, param_dtype=jnp.float32, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


def _embed(cfg: BertConfig, rows: int, row_axis: str, name: str) -> nn.Embed:
    init = nn.with_logical_partitioning(nn.initializers.normal(cfg.initializer_range), (row_axis, "embed"))
    # Looks rows up in the stored dtype: casting the gathered rows beats casting the whole table.
    return nn.Embed(rows, cfg.hidden_size, dtype=jnp.dtype(cfg.param_dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype), embedding_init=init, name=name)


class Embeddings(nn.Module):
    cfg: BertConfig

    def setup(self):
        self.word_embeddings = _embed(self.cfg, self.cfg.vocab_size, "vocab", "word_embeddings")
        self.position_embeddings = _embed(self.cfg, self.cfg.max_position_embeddings, "positions",
                                          "position_embeddings")
        self.token_type_embeddings = _embed(self.cfg, self.cfg.type_vocab_size, "token_types",
                                            "token_type_embeddings")
        self.LayerNorm = _layer_norm(self.cfg, "LayerNorm")
        self.dropout = nn.Dropout(self.cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        positions = jnp.arange(input_ids.shape[1])[None, :]
        # Summed in float32: the sum is no matrix product, and bfloat16 would round it before the LayerNorm.
        rows = lambda table, ids: table(ids).astype(jnp.float32)
        x = (rows(self.word_embeddings, input_ids) + rows(self.position_embeddings, positions)
             + rows(self.token_type_embeddings, token_type_ids))
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)


class BertLayer(nn.Module):
    """One encoder layer, written as a scan body: (hidden, ...) -> (hidden, (hidden, scores, (q, k, v))).

    Hidden states are [batch * T, hidden]: dense layers and their gradients are plain 2-D GEMMs that way (a 3-D
    input makes the weight gradient contract two axes, ~25% slower on XLA:CPU).
    """

    cfg: BertConfig

    @nn.compact
    def __call__(self, hidden, mask_bias, deterministic: bool):
        cfg = self.cfg
        batch, length = mask_bias.shape
        # [batch, heads, T, head_dim]: with heads before T both attention matmuls are plain batched GEMMs; mixed
        # layouts (e.g. "bhqk,bkhd->bqhd") make XLA:CPU fall back to a slow loop, 3.5x slower per attention block.
        split = lambda x: x.reshape(batch, length, cfg.num_attention_heads, cfg.head_dim).transpose(0, 2, 1, 3)
        projections = tuple(Dense(cfg, cfg.hidden_size, ("embed", "heads"), name=name)(hidden)
                            for name in ("query", "key", "value"))
        q, k, v = map(split, projections)
        # Scale q, not the scores: T/head_dim times fewer multiplies, and a Python float stays a scalar in XLA
        # (a jnp constant was materialised as a full [B, heads, T, T] broadcast on every call).
        q = q * (1.0 / math.sqrt(cfg.head_dim))
        compute = jnp.dtype(cfg.dtype)
        scores = jnp.einsum("bhqd,bhkd->bhqk", q.astype(compute), k.astype(compute),
                            preferred_element_type=jnp.float32)
        scores = scores + mask_bias[:, None, None, :]
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(jax.nn.softmax(scores, axis=-1),
                                                              deterministic=deterministic)
        context = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(compute), v.astype(compute),
                             preferred_element_type=jnp.float32)
        context = context.transpose(0, 2, 1, 3).reshape(batch * length, cfg.hidden_size)
        attn = Dense(cfg, cfg.hidden_size, ("heads", "embed"), name="attention_output")(context)
        attn = nn.Dropout(cfg.hidden_dropout_prob)(attn, deterministic=deterministic)
        hidden = _layer_norm(cfg, "attention_norm")(hidden + attn)

        ffn = Dense(cfg, cfg.intermediate_size, ("embed", "mlp"), name="intermediate")(hidden)
        ffn = ACTIVATIONS[cfg.hidden_act](ffn)
        ffn = Dense(cfg, cfg.hidden_size, ("mlp", "embed"), name="output")(ffn)
        ffn = nn.Dropout(cfg.hidden_dropout_prob)(ffn, deterministic=deterministic)
        hidden = _layer_norm(cfg, "output_norm")(hidden + ffn)
        hidden = nn.with_logical_constraint(hidden, ("batch", "hidden"))
        return hidden, (hidden, scores, projections)


class MlmHead(nn.Module):
    """transform (dense + act + LayerNorm), then a decoder tied to the word embeddings plus its own bias."""

    cfg: BertConfig

    @nn.compact
    def __call__(self, hidden, word_embeddings: nn.Embed):
        cfg = self.cfg
        x = ACTIVATIONS[cfg.hidden_act](Dense(cfg, cfg.hidden_size, ("embed", "embed_out"), name="transform")(hidden))
        x = _layer_norm(cfg, "transform_norm")(x)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                          (cfg.vocab_size,), jnp.float32)
        compute = jnp.dtype(cfg.dtype)
        table = word_embeddings.embedding.astype(compute)
        return jnp.dot(x.astype(compute), table.T, preferred_element_type=jnp.float32) + bias


class Bert(nn.Module):
    """BERT encoder with optional pooler, masked-LM head and a task head: sequence classification/regression,
    token classification or answer-span (start/end) logits."""

    cfg: BertConfig

    def setup(self):
        cfg = self.cfg
        self.embeddings = Embeddings(cfg)
        self.layers = self.param("layers", self._init_layers)
        if cfg.pooler:
            self.pooler = Dense(cfg, cfg.hidden_size, ("embed", "embed_out"), name="pooler")
        if cfg.mlm_head:
            self.mlm_head = MlmHead(cfg)
        if cfg.num_labels:
            self.classifier = Dense(cfg, cfg.num_labels, ("embed", "labels"), name="classifier")
            rate = cfg.hidden_dropout_prob if cfg.classifier_dropout is None else cfg.classifier_dropout
            self.classifier_dropout = nn.Dropout(rate)

    def _init_layers(self, rng: jax.Array) -> Any:
        """Every layer's parameters stacked on a leading 'layers' axis: [L, ...] per leaf."""
        cfg = self.cfg
        tokens = jnp.zeros((1, cfg.hidden_size), jnp.float32)
        # parent=None: a free-standing module, initialised and applied with explicit parameters
        init_one = lambda key: BertLayer(cfg, parent=None).init(key, tokens, jnp.zeros((1, 1)), True)["params"]
        keys = jax.random.split(rng, cfg.num_hidden_layers)
        if not cfg.stacked_layers:
            return tuple(init_one(key) for key in keys)
        return nn.meta.add_axis(jax.vmap(init_one)(keys), 0, {nn.PARTITION_NAME: "layers"})

    def _encode(self, tokens, mask_bias, deterministic: bool, output_layers: tuple[int, ...]):
        """Runs every layer; returns (last hidden, {layer: (hidden, scores)} for the layers in output_layers).

        Layers whose outputs are wanted run one by one; runs of the others go through one `lax.scan` that keeps
        only its carry. So unused scores and hidden states are never written, and no stacked per-layer outputs
        exist: under autodiff those need zero-filled [L, ...] cotangent buffers, which cost a student's
        backward pass more than its attention matmuls on XLA:CPU.
        """
        layer = BertLayer(self.cfg, parent=None)
        count = self.cfg.num_hidden_layers
        if not self.cfg.stacked_layers:  # each layer has its own arrays: nothing to slice out, eval only
            collected = {}
            for index, params in enumerate(self.layers):
                tokens, outputs = layer.apply({"params": params}, tokens, mask_bias, True)
                if index + 1 in output_layers:
                    collected[index + 1] = outputs
            return tokens, collected
        keys = (jax.random.split(self.make_rng("dropout"), count) if not deterministic
                else jnp.zeros((count, 2), jnp.uint32))

        def run(hidden, index, key):
            # Index inside the loop: slicing the stacked weights outside it would copy them.
            params = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, index, keepdims=False), self.layers)
            rngs = {} if deterministic else {"dropout": key}
            return layer.apply({"params": params}, hidden, mask_bias, deterministic, rngs=rngs)

        collected = {}
        start = 0
        while start < count:
            if start + 1 in output_layers:
                tokens, collected[start + 1] = run(tokens, start, keys[start])
                start += 1
                continue
            end = start
            while end < count and end + 1 not in output_layers:
                end += 1
            tokens, _ = jax.lax.scan(lambda hidden, xs: (run(hidden, *xs)[0], None), tokens,
                                     (jnp.arange(start, end), keys[start:end]))
            start = end
        return tokens, collected

    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, deterministic: bool = True,
                 output_layers: Optional[tuple[int, ...]] = None) -> BertOutput:
        """`output_layers`: 1-based layers whose hidden state and attention scores are returned (None: all);
        the others' entries in the output are None. The embedding output and last hidden state are always there."""
        cfg = self.cfg
        if output_layers is None:
            output_layers = tuple(range(1, cfg.num_hidden_layers + 1))
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        mask_bias = (1.0 - attention_mask.astype(jnp.float32)) * MASK_BIAS
        batch, length = input_ids.shape
        hidden = self.embeddings(input_ids, token_type_ids, deterministic)
        hidden = nn.with_logical_constraint(hidden, ("batch", "length", "hidden"))
        last, collected = self._encode(hidden.reshape(batch * length, cfg.hidden_size), mask_bias, deterministic,
                                       tuple(output_layers))
        as_3d = lambda x: x.reshape(batch, length, cfg.hidden_size)
        hidden_states = (hidden,) + tuple(as_3d(collected[i][0]) if i in collected else None
                                          for i in range(1, cfg.num_hidden_layers)) + (as_3d(last),)
        scores = tuple(collected[i][1] if i in collected else None for i in range(1, cfg.num_hidden_layers + 1))
        projections = tuple(tuple(as_3d(x) for x in collected[i][2]) if i in collected else None
                            for i in range(1, cfg.num_hidden_layers + 1))

        pooled = logits = None
        if cfg.pooler:
            pooled = jnp.tanh(self.pooler(hidden_states[-1][:, 0]))
        if cfg.mlm_head:
            logits = self.mlm_head(hidden_states[-1], self.embeddings.word_embeddings)
        elif cfg.num_labels:
            head = TASK_HEADS[cfg.task_head]
            features = pooled if head.reads_pooled else hidden_states[-1]
            if head.dropout:
                features = self.classifier_dropout(features, deterministic=deterministic)
            logits = self.classifier(features)
        return BertOutput(hidden_states=hidden_states, attention_scores=scores, projections=projections,
                          pooled_output=pooled, logits=logits)


def unstack_layers(cfg: BertConfig, params: dict) -> tuple[BertConfig, dict]:
    """The same model with 'layers' as a tuple of per-layer trees, for frozen models (a teacher): each layer then
    runs from its own arrays, where the stacked form copies every layer's weights out on every call (XLA:CPU
    materialises those slices: ~10% of a TinyBERT step). Deterministic (eval) forward only."""
    count = cfg.num_hidden_layers
    layers = tuple(jax.tree.map(lambda x: x[i], params["layers"]) for i in range(count))
    return cfg.replace(stacked_layers=False), {**params, "layers": layers}


def bert_config_from(section: Any, where: str, **overrides) -> BertConfig:
    """A BertConfig from the BertConfig-named keys of a config section (other keys, e.g. `init`, are skipped)."""
    from tinybert_jax.errors import InputError

    names = {f.name for f in dataclasses.fields(BertConfig)}
    values = {key: value for key, value in dict(section).items() if key in names}
    try:
        return BertConfig(**{**values, **overrides})
    except (TypeError, ValueError) as e:
        raise InputError(f"config.{where}: {e}") from e


def init_params(cfg: BertConfig, rng: jax.Array, seq_len: int = 8) -> dict[str, Any]:
    """Random parameters (Normal(0, initializer_range) weights), unboxed: plain arrays, no axis metadata."""
    ids = jnp.zeros((1, seq_len), jnp.int32)
    # jit: running init op by op takes seconds even for tiny models
    return jax.jit(lambda key: nn.meta.unbox(Bert(cfg).init(key, ids, ids, jnp.ones_like(ids))["params"]))(rng)


def boxed_params(cfg: BertConfig, rng: jax.Array) -> dict[str, Any]:
    """Random parameters boxed with their logical axis names, as sharded creation (engine.create_state) wants."""
    ids = jnp.zeros((1, 8), jnp.int32)
    return Bert(cfg).init(rng, ids, ids, ids)["params"]


def abstract_params(cfg: BertConfig) -> dict[str, Any]:
    """Shapes and dtypes of every parameter, boxed with their logical axis names; nothing is allocated."""
    return jax.tree.map(lambda leaf: leaf, _traced_abstract_params(cfg))  # a fresh tree: callers may edit theirs


@functools.lru_cache(maxsize=32)
def _traced_abstract_params(cfg: BertConfig) -> dict[str, Any]:
    # Traced once per config: it traces the model's whole initialisation, and loading, checking, exporting and
    # sharding parameters each ask for it, several times a run.
    return jax.eval_shape(lambda: boxed_params(cfg, jax.random.key(0)))


def cast_to_param_dtypes(cfg: BertConfig, params: dict[str, Any]) -> dict[str, Any]:
    """`params` as numpy arrays in the dtypes `abstract_params(cfg)` declares: the matrices in cfg.param_dtype,
    LayerNorm parameters and biases float32. (Leaves by position: `params` must have the model's structure.)"""
    declared = nn.meta.unbox(abstract_params(cfg))
    return jax.tree.map(lambda x, want: np.asarray(x).astype(want.dtype), params, declared)
