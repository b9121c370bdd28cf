"""``python -m lsdet.data.synth [key=value ...]``: writes the synthetic benchmark."""

from lsdet.data.synth.generate import main

if __name__ == "__main__":
    main()
