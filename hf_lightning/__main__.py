"""``python -m hf_lightning``: the same as the ``hf-lightning`` command."""

from .cli import main

if __name__ == "__main__":
    main()
