"""Train StyleGAN2 with adaptive discriminator augmentation: `python train.py --data=DIR`.

The same as `ada train`; see `python train.py --help`.
"""

import sys

from ada.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="train.py")
