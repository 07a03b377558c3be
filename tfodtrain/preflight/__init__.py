"""Pre-flight: before training, does one step fit in memory, and are the inputs sound?

Memory (`trainer.preflight`, default true). After the model, optimizer and input pipeline are built and
before `fit`, train.py hands them to `before_fit`, which runs ONE real training step and measures its
peak against each pool's limit:

    gpuN   the allocator's peak during the step (`tf.config.experimental.get_memory_info`, after
           `reset_memory_stats`), against `memory.gpu_limit_mb`, else what the card leaves this process
    host   the process's peak RSS during the step (Linux `VmHWM`, reset through /proc/self/clear_refs),
           against the cgroup limit, else physical memory

`memory.budget_mb` lowers every limit; `trainer.preflight_headroom` (10%) of each limit is kept free for
what grows after the first step. If the step does not fit, the run stops (exit 2) before any training
step counts, naming how much the step needs and the largest batch size that fits; with
`trainer.batch_size=auto` that batch size is used (like Lightning's BatchSizeFinder).

The step changes nothing: the optimizer's variables (step, hyperparameters, slots) are created first, as
its first update would (a resumed run's slots get their checkpointed values then), every model and
optimizer variable is saved, and all are put back after the step. The step reads a dataset of its own,
built like the run's, which stays unread (a second iterator of a seeded pipeline would reshuffle). Its
cost is one step: Keras keeps the traced training function (same input signature), so `fit` does not
trace it again.

The search for the batch size that fits takes at most `MAX_SEARCH_STEPS` more steps: a line through
the measured peaks (peak = fixed + per-example x batch size) proposes a batch size, a step checks it,
and the answer is the largest batch size a step was measured to fit (4% below the target, for noise).
On a GPU the steps run in this process (the allocator's peak is reset before each). Host RSS does not
shrink after a step (freed memory, a retraced function for the new batch shape stay with the process),
so on the CPU each search step runs in a fresh process (`python -m tfodtrain.preflight`, while this one
waits, so the host briefly holds both) that builds the same model and runs its first step, exactly as
this process measured its own: its RSS growth during the step, added to this process's RSS before its
step, is the trial's peak.

Inputs: `check_inputs(cfg)` is what the CLI runs before Hydra starts the job (nothing written yet):
the config checks and, for `data=tfrecord`, the record scan (`tfodtrain.data.validate`).

Example:
    python -m tfodtrain +experiment=smoke memory.budget_mb=1200     # exit 2: "... the largest batch size that fits is 1"
    python -m tfodtrain +experiment=ssd trainer.batch_size=auto
"""

from tfodtrain.preflight.check import before_fit, check_memory, take_auto_batch_size  # noqa: F401
from tfodtrain.preflight.search import Trial, largest_fitting  # noqa: F401
from tfodtrain.preflight.step import StepTrials, create_optimizer_variables  # noqa: F401
