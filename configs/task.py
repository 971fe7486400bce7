"""TinyBERT task-specific distillation: fine-tuned teacher -> general-distilled student, on one GLUE task.

python -m tinybert_jax.main --config=configs/task.py --workdir=DIR --config.task=sst2 \
    --config.data.source=glue_data/SST-2 --config.teacher.path=TEACHER_EXPORT --config.student.init=GENERAL_WORKDIR
Stages: augmentation, stage 1 (intermediate layers), stage 2 (prediction layer), export, report (see README).
configs/task.py:smoke trains each stage a few short steps without augmentation (the paths still come from the
command line).
"""
import ml_collections

from configs import common


def get_config(arg=None) -> ml_collections.ConfigDict:
    smoke = common.variant(arg, "configs/task.py") == "smoke"
    c = common.base("task", keep=2)
    # cola | sst2 | mrpc | stsb | qqp | mnli | qnli | rte | wnli, custom (your own files), squad_v1 | squad_v2
    # (answer spans) or conll2003 (named entities)
    c.task = "sst2"
    c.data = common.task_data()
    # Fine-tuned BERT classifier (configs/finetune.py export, or any HF BertForSequenceClassification dir/hub id)
    # check_score: stop at start-up when the teacher's dev score is within chance_margin of chance (a teacher that
    # is not fine-tuned, or whose id2label is in another label order); False distils it anyway.
    c.teacher = ml_collections.ConfigDict(dict(path="", check_score=True, chance_margin=0.05))
    # A general-distillation workdir (uses its export/), a Hugging Face dir or a Flax checkpoint dir
    c.student = ml_collections.ConfigDict(dict(init=""))
    c.layer_map = "uniform"
    # Stage 1 terms: preset tinybert (embedding, attention, hidden; the prediction term is stage 2's), minilm_v1,
    # minilm_v2 or custom, as in configs/general.py.
    c.loss = ml_collections.ConfigDict(dict(
        preset="tinybert", mode="tinybert",
        weights=ml_collections.ConfigDict(dict(embedding=1.0, attention=1.0, hidden=1.0)),
        matches=ml_collections.FieldReference("", field_type=object),  # a list or a ';'-string, as in general.py
        relation_heads=12, relation_layer=0))

    c.augment = ml_collections.ConfigDict(dict(
        enabled=True,
        mlm_path="bert-base-uncased",  # a BERT with its masked-LM head proposes single-piece replacements
        glove_path="",  # GloVe text file for multi-piece words ("" = those words stay unchanged)
        k=15, p_t=0.4, n_a=20,  # candidates per word, replacement probability, variants per sentence
        batch_size=64,  # masked variants per MLM forward
        max_seq_len=128,  # MLM input [CLS] masked [SEP] original [SEP]; at most the MLM's max positions
        # examples per saved part: an interrupted augmentation resumes after the last saved part; every process
        # augments its share of the parts, each on all of its devices
        save_every=1024,
    ))
    # Stage lengths (README, "Stage lengths"): num_epochs passes over the (augmented) data, raised to min_steps
    # updates when the data set is small. Stage 1: intermediate layers at a constant LR (paper: 20 epochs; the
    # released scripts use 10). Stage 2: the prediction layer, 10% warm-up + linear decay, at a learning rate that
    # trains the new classifier of a small student (the paper's {1e-5, 2e-5, 3e-5} came with 20x augmented data),
    # with dev evaluation and early stopping (eval.*). Its loss: alpha * the soft cross-entropy to the teacher
    # (summed over classes, times T^2: loss_scale=hinton; tinybert: the original's mean over classes) + (1 - alpha)
    # * cross-entropy to the gold labels (docs/losses.md, "Task stage 2").
    c.stage1 = ml_collections.ConfigDict(dict(batch_size=32, num_epochs=10.0, num_steps=0, min_steps=0,
                                              optimizer=common.optimizer(5e-5, "constant", 0.0)))
    c.stage2 = ml_collections.ConfigDict(dict(batch_size=32, num_epochs=3.0, num_steps=0, min_steps=2000,
                                              temperature=1.0, loss_scale="hinton", alpha=1.0,
                                              optimizer=common.optimizer(1e-4, "linear", 0.1)))
    c.eval = common.task_eval()
    # baseline.finetune=True: the report compares the distilled student with its own initialisation fine-tuned
    # directly on the original data, the best of learning_rates x num_epochs (each with early stopping on dev)
    c.baseline = ml_collections.ConfigDict(dict(
        finetune=False, learning_rates=ml_collections.FieldReference("1e-4,3e-4,1e-3", field_type=object),
        num_epochs=ml_collections.FieldReference("20", field_type=object), batch_size=32,
        optimizer=common.optimizer(1e-4, "linear", 0.1)))
    # Stage 2 once per seed (a list, or one string such as "0,1,2"; "" = once, with `seed`), all from one stage 1;
    # the report gives each seed's dev score, mean +- std and the best, whose model is exported. With
    # seeds_whole_pipeline=True the whole pipeline (augmentation, both stages) runs per seed in WORKDIR/seed_N.
    c.seeds = ml_collections.FieldReference("", field_type=object)
    c.seeds_whole_pipeline = False
    if smoke:
        c.augment.enabled = False
        for stage in (c.stage1, c.stage2):
            stage.update(batch_size=16, num_steps=20)
            stage.optimizer.learning_rate = 1e-3
        c.eval.update(every_steps=10, batch_size=32)
        c.checkpoint.every_steps = 10
        c.log.every_steps = 5
    return c
