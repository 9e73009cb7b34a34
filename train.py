"""Train StyleGAN2 with adaptive discriminator augmentation: `python train.py --data=DIR`.

The same as `ada train`; see `python train.py --help`.
"""

import sys

from ada.cli import main, train_command

if __name__ == "__main__":
    main(sys.argv[1:], prog_name="train.py", command=train_command)
