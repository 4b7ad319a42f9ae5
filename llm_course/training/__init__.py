"""Stage 4: training a language model from scratch.

* :mod:`config`      -- TrainConfig, read from configs/train/*.yaml (unknown keys are errors)
* :mod:`schedule`    -- learning rate: linear warm-up, cosine decay to min_lr
* :mod:`checkpoint`  -- atomic checkpoints with everything needed for an exact resume
* :mod:`trainer`     -- the loop: grad accumulation, clipping, mixed precision, eval, logging
* :mod:`distributed` -- data parallelism (DDP) under torchrun
* :mod:`pretrain`    -- the ``llm-course pretrain`` command
"""

from llm_course.training.config import TrainConfig, load_train_config
from llm_course.training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_train_config", "train"]
