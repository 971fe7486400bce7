"""What every experiment config shares: the optimizer, the mesh with its one logical-axis rules table, checkpoint
and log settings, the variant argument, and the tiny teacher the smoke variants pre-train offline."""
import ml_collections

VARIANTS = ("", "smoke")  # get_config(arg): "" the experiment as documented, "smoke" seconds on a CPU


def variant(arg, config_file: str) -> str:
    """The config argument (`--config=configs/NAME.py:ARG`), checked."""
    arg = arg or ""
    if arg not in VARIANTS:
        raise ValueError(f"{config_file}: unknown variant {arg!r}; use one of {[v for v in VARIANTS if v]} or none")
    return arg


def optimizer(learning_rate: float = 1e-4, schedule: str = "linear", warmup_ratio: float = 0.1,
              **overrides) -> ml_collections.ConfigDict:
    """name: "adamw" | "bert_adam" (original: no bias correction, per-tensor clip, decoupled decay);
    schedule: linear | constant | cosine; clip_norm: global-norm clip for adamw, per-tensor clip for bert_adam,
    0 disables."""
    settings = dict(name="adamw", learning_rate=learning_rate, schedule=schedule, warmup_ratio=warmup_ratio, b1=0.9,
                    b2=0.999, eps=1e-6, weight_decay=0.01, clip_norm=1.0)
    return ml_collections.ConfigDict({**settings, **overrides})


def mesh() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        data=-1,  # -1: all devices not used by fsdp
        fsdp=1,
        # logical axis -> mesh axes (the one rules table); parameters name their axes in models/bert.py
        rules=[("batch", ("data", "fsdp")), ("embed", "fsdp")],
    ))


def base(pipeline: str, keep: int = 3) -> ml_collections.ConfigDict:
    """The keys every experiment has."""
    c = ml_collections.ConfigDict()
    c.pipeline = pipeline
    c.seed = 0
    # Compute dtype of teacher and student matmuls ("float32" | "bfloat16"); they accumulate in float32, and
    # trainable parameters, optimizer state, the embedding sum, biases, LayerNorm, softmax and losses stay float32.
    c.dtype = "float32"
    c.mesh = mesh()
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=keep))
    c.log = ml_collections.ConfigDict(dict(every_steps=50))
    return c


def teacher_training(smoke: bool) -> ml_collections.ConfigDict:
    """The masked-LM teacher the demo (and every smoke variant of a general recipe) trains on the embedded corpus,
    since no teacher can be downloaded offline."""
    model = (dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64) if smoke else
             dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                  max_position_embeddings=128))
    return ml_collections.ConfigDict(dict(
        vocab_size=1024 if smoke else 4096,  # WordPiece vocabulary learned from the corpus
        model=ml_collections.ConfigDict(dict(**model, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)),
        batch_size=16 if smoke else 32, num_steps=20 if smoke else 600, mask_prob=0.15,
        checkpoint_every_steps=200,
        optimizer=optimizer(1e-3, warmup_ratio=0.05, b2=0.98),
    ))


def smoke_distillation(c: ml_collections.ConfigDict, **student) -> None:
    """Turns a general recipe into its smoke variant: the demo pipeline (a tiny teacher pre-trained in
    WORKDIR/teacher), a tiny student, a few short steps."""
    c.pipeline = "demo"
    c.teacher.path = ""  # set by the demo pipeline to WORKDIR/teacher/export
    c.teacher_training = teacher_training(smoke=True)
    c.student.update(preset="", **student)
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=20)
    c.optimizer.update(learning_rate=1e-3)
    c.checkpoint.every_steps = 10
    c.log.every_steps = 5


def task_eval() -> ml_collections.ConfigDict:
    """The eval.* keys of the task configs: dev evaluation, best-on-dev keeping and early stopping."""
    return ml_collections.ConfigDict(dict(
        every_steps=0,  # 0: once an epoch, at most 1000 steps apart
        patience=3,  # evaluations without a new best on dev before the run stops (0: never stop early)
        batch_size=64,
    ))


def task_data() -> ml_collections.ConfigDict:
    """The data.* keys of the task configs (fine-tuning and task distillation)."""
    return ml_collections.ConfigDict(dict(
        # GLUE: a TSV directory in the GLUE download layout, or "tfds" (glue/<task> prepared in tfds_data_dir);
        # task=custom: a directory with train.{csv,tsv,jsonl} and dev.{csv,tsv,jsonl}; squad_v1 / squad_v2: the
        # directory of train-v1.1.json, dev-v1.1.json (v2.0) or "tfds"; conll2003: train.txt, valid.txt or "tfds"
        source="",
        tfds_data_dir="",
        seq_len=0,  # 0: 64 for single-sentence tasks, 128 for pairs and CoNLL, 384 for SQuAD (docs/data.md)
        # padded lengths of batches (README, "Length buckets"): auto (multiples of 8, at most 16 lengths), a step
        # (16), the lengths ("16,32,64" or a list), or "" (every batch padded to seq_len)
        buckets=ml_collections.FieldReference("auto", field_type=object),
        # SQuAD: a long context is cut into windows of seq_len tokens that overlap by doc_stride tokens; questions
        # are cut to max_query_len tokens
        doc_stride=128,
        max_query_len=64,
        # task=custom only (docs/data.md, "Your own data"). Lists may also be one string with ',' between items:
        # ml_collections overrides no list from the command line.
        text_columns=ml_collections.FieldReference("text", field_type=object),  # one or two column names
        label_column="label",
        # the label strings in id order ("" = the distinct values of train, sorted); the export's id2label
        labels=ml_collections.FieldReference("", field_type=object),
        regression=False,  # the label column is a float score
        metric="accuracy",  # accuracy | f1 | matthews | pearson_spearman (regression); selects the best on dev
    ))
