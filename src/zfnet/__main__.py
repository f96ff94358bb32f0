"""`python -m zfnet ...` (and `torchrun ... -m zfnet ...`): the `zfnet` command."""

from zfnet.cli import main

if __name__ == "__main__":
    main()
