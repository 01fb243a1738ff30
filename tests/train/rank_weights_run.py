"""torchrun entry point of test_multiprocess.py: train as `python -m refcustom.train train --config` does,
then write this process's trainable weights to `<prefix>-<rank>.safetensors`, so the test can check that
every process ended with the same weights. Test code: the trainer itself has no such hook.

    torchrun --nproc_per_node 2 tests/train/rank_weights_run.py CONFIG PREFIX
"""

import sys

from safetensors.torch import save_file

from refcustom.train.config import load_config
from refcustom.train.trainer import Trainer

if __name__ == "__main__":
    config_path, prefix = sys.argv[1], sys.argv[2]
    trainer = Trainer(load_config(config_path))
    trainer.train()
    save_file(trainer.method.trainable_state_dict(), f"{prefix}-{trainer.accelerator.process_index}.safetensors")
