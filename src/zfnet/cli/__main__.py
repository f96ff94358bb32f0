"""`python -m zfnet.cli ...` (and `torchrun ... -m zfnet.cli ...`): the `zfnet` command."""

from zfnet.cli import main

if __name__ == "__main__":
    main()
