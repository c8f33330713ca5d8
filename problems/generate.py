"""Regenerate the shipped manifests: python problems/generate.py [--help]."""

from layerlens_opt.generate import main

if __name__ == "__main__":
    import sys
    from pathlib import Path

    main(sys.argv[1:] or [str(Path(__file__).parent)])
